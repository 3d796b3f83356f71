#!/usr/bin/env python3
"""Drive a real classic worker over the protocol and print fps and scores.

    .venv/bin/python engines/classic/bench.py --media DIR [--seconds 10] [--templates a,b] [--sheets]

Generates sample media into DIR (engines/media_samples.py) if missing, renders each
template twice with the English narration (face-track cache cold, then warm) and
prints one line per render: template, cache, frames, wall seconds, fps, score.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ENGINES = os.path.dirname(HERE)
sys.path.insert(0, ENGINES)


def start_worker(**popen_kwargs) -> subprocess.Popen:
    """Start a classic worker and read its hello; returns the process (text pipes)."""
    w = subprocess.Popen([sys.executable, os.path.join(HERE, "worker.py")], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, bufsize=1, **popen_kwargs)
    hello = json.loads(w.stdout.readline())
    assert hello["type"] == "hello", hello
    return w


def render(w: subprocess.Popen, video: str, audio: str, output: str, *, rid: str, video_key: str,
           cache_dir: str, duration: float, params: dict | None = None, on_log=None) -> dict:
    """One render request over the protocol; returns the final message ("done" or "error")
    with "seconds", the wall time from sending the request to its answer."""
    req = {"type": "render", "id": rid, "video": video, "audio": audio, "output": output,
           "item_key": rid, "video_key": video_key, "audio_key": "narr", "cache_dir": cache_dir,
           "duration": duration, "params": params or {}}
    t0 = time.monotonic()
    w.stdin.write(json.dumps(req) + "\n")
    w.stdin.flush()
    while True:
        line = w.stdout.readline()
        if not line:
            raise RuntimeError(f"the worker exited during {rid} (exit {w.wait()})")
        msg = json.loads(line)
        if msg["type"] in ("done", "error"):
            break
        if msg["type"] == "log" and on_log is not None:
            on_log(msg["message"])
    msg["seconds"] = time.monotonic() - t0
    return msg


def stop_worker(w: subprocess.Popen, timeout: float = 20) -> int:
    w.stdin.write(json.dumps({"type": "shutdown"}) + "\n")
    w.stdin.flush()
    return w.wait(timeout=timeout)


def main(argv=None) -> int:
    import media_samples

    ap = argparse.ArgumentParser()
    ap.add_argument("--media", required=True)
    ap.add_argument("--seconds", type=float, default=10.0, help="narration length")
    ap.add_argument("--template-seconds", type=float, default=None,
                    help="template length (default: the narration length, so a cold cache tracks every frame)")
    ap.add_argument("--templates", default="closeup-512,closeup-720,wide-512")
    ap.add_argument("--narration", default="en", choices=["en", "zh"])
    ap.add_argument("--sheets", action="store_true", help="write contact sheets next to the outputs")
    ap.add_argument("--out", default=None, help="output folder (default: a temp folder)")
    args = ap.parse_args(argv)
    names = tuple(args.templates.split(","))
    tsec = args.template_seconds or args.seconds
    media = os.path.join(args.media, f"t{tsec:g}s")
    media_samples.generate(media, seconds=tsec, templates=names, narrations=False)
    narr = os.path.join(args.media, f"narration-{args.narration}-{args.seconds:g}s.wav")
    if not os.path.exists(narr):
        voice, text = (("en-us", media_samples.ENGLISH_TEXT) if args.narration == "en"
                       else ("cmn-latn-pinyin", media_samples.MANDARIN_TEXT))
        media_samples.synth_speech(narr, voice, text, args.seconds)
    out = args.out or tempfile.mkdtemp(prefix="talkie-bench-")
    cache = tempfile.mkdtemp(prefix="talkie-bench-cache-")
    w = start_worker()
    print(f"narration {narr} ({args.seconds:g} s), templates {tsec:g} s")
    print(f"{'template':14} {'cache':5} {'frames':>6} {'secs':>6} {'fps':>6} {'score':>6}")
    for name in names:
        for run in ("cold", "warm"):
            rid = f"{name}-{run}"
            msg = render(w, os.path.join(media, "templates", f"{name}.mp4"), narr,
                         os.path.join(out, f"{name}-{run}.mp4"), rid=rid, video_key=f"bench-{name}",
                         cache_dir=cache, duration=args.seconds, params={"contact_sheet": bool(args.sheets)},
                         on_log=lambda m: print("   log:", m, file=sys.stderr))
            dt = msg["seconds"]
            if msg["type"] == "error":
                print(f"{name:14} {run:5} error {msg['kind']}: {msg['message']}")
                continue
            fr = msg["frames"]
            print(f"{name:14} {run:5} {fr:6d} {dt:6.2f} {fr / dt:6.1f} {msg.get('score', float('nan')):6.3f}",
                  flush=True)
    stop_worker(w)
    print(f"outputs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
