#!/usr/bin/env python3
"""Talkie's test engine: speaks the worker protocol (docs/engine-protocol.md) and makes a
valid output by copying the template's video and muxing the narration with ffmpeg.

Switches for tests, by a marker in the template's file name or by params["mode"]:
  fail-input      answer error kind "input"
  fail-transient  answer error kind "transient"
  flaky           fail transiently on the first attempt of each item, then succeed
  crash           exit abruptly in the middle of the item
  hang            stop answering (the runner's timeout must kill it)
  garbage         write a line that is not a protocol message
  no-audio        "succeed" with an output that has no audio stream (fails verification)
Every render is appended to the file named by params["log"] or TALKIE_TEST_ENGINE_LOG ("render <item
key> <template name>"), so tests count renders from the engine's own log. params["delay"] or
TALKIE_TEST_ENGINE_DELAY (seconds, default 0) is spent per progress step, ten steps per item.
Standard library only.
"""
import json
import os
import subprocess
import sys
import time

MODES = ["fail-input", "fail-transient", "flaky", "crash", "hang", "garbage", "no-audio"]


def send(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def mode_of(request):
    mode = (request.get("params") or {}).get("mode")
    if mode:
        return mode
    name = os.path.basename(request["video"])
    for candidate in MODES:
        if candidate in name:
            return candidate
    return None


def log_render(request):
    path = (request.get("params") or {}).get("log") or os.environ.get("TALKIE_TEST_ENGINE_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(f"render {request['item_key']} {os.path.basename(request['video'])}\n")
            log.flush()
            os.fsync(log.fileno())


def render(request):
    rid = request["id"]
    mode = mode_of(request)
    log_render(request)
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = f" with CUDA_VISIBLE_DEVICES={gpu}" if gpu is not None else ""
    print(f"test engine: rendering {request['video']} (mode {mode}){where}", file=sys.stderr, flush=True)
    if mode == "fail-input":
        return send({"type": "error", "id": rid, "kind": "input", "message": "test engine: no face found at 00:00:00.0"})
    if mode == "fail-transient":
        return send({"type": "error", "id": rid, "kind": "transient", "message": "test engine: simulated GPU out of memory"})
    if mode == "flaky":
        marker = os.path.join(request["cache_dir"], "flaky-" + request["item_key"])
        os.makedirs(request["cache_dir"], exist_ok=True)
        if not os.path.exists(marker):
            open(marker, "w").close()
            return send({"type": "error", "id": rid, "kind": "transient", "message": "test engine: flaky first attempt"})
    if mode == "garbage":
        sys.stdout.write("this is not a protocol message\n")
        sys.stdout.flush()
        time.sleep(30)
        return
    if mode == "hang":
        time.sleep(3600)
        return
    delay = float((request.get("params") or {}).get("delay") or os.environ.get("TALKIE_TEST_ENGINE_DELAY", "0"))
    duration = float(request["duration"])
    frames = max(1, int(round(duration * 25)))
    for step in range(1, 11):
        if delay:
            time.sleep(delay)
        send({"type": "progress", "id": rid, "frame": frames * step // 10, "frames": frames})
        if mode == "crash" and step == 5:
            print("test engine: simulated crash", file=sys.stderr, flush=True)
            os._exit(3)
    command = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-stream_loop", "-1", "-i", "file:" + request["video"]]
    if mode != "no-audio":
        command += ["-i", "file:" + request["audio"], "-map", "0:v:0", "-map", "1:a:0", "-c:a", "aac"]
    else:
        command += ["-map", "0:v:0"]
    command += ["-t", f"{duration:.3f}", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                "-r", "25", "-f", "mp4", "file:" + request["output"]]
    result = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if result.returncode != 0:
        return send({"type": "error", "id": rid, "kind": "transient",
                     "message": "test engine: ffmpeg failed: " + result.stderr.decode(errors="replace")[-300:]})
    send({"type": "done", "id": rid, "frames": frames})


def main():
    send({"type": "hello", "protocol": 1, "name": "test", "version": "1.0.0",
          "capabilities": {"audio_sample_rate": 16000, "audio_channels": 1, "progress": True, "device": "cpu"}})
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        request = json.loads(line)
        if request.get("type") == "shutdown":
            break
        if request.get("type") == "render":
            render(request)
    return 0


if __name__ == "__main__":
    sys.exit(main())
