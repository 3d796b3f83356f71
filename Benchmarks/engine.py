#!/usr/bin/env python3
"""The built-in "classic" engine beside the ffmpeg floor of the same video, in one run.

  .venv/bin/python Benchmarks/engine.py [--quick] --out DIR [--work SCRATCH]

1. Speed: close-up 512x512 and 1280x720 templates with an English narration of the same
   length (10 s; --quick: 2 s), rendered by a real classic worker over the protocol
   (engines/classic/bench.py), face-track cache cold (a fresh cache folder per run) and warm,
   3 runs each (--quick: 1). Floor, same run, same files, timed with hyperfine: ffmpeg decode
   only (`-f null`), and ffmpeg decode + x264/AAC encode + mux with the engine writer's own
   settings (engines/classic/video_io.py Encoder, preset chosen as engines/classic/pipeline.py
   does).
2. Memory: peak RSS (VmHWM) of a fresh worker, read just before it is asked to shut down,
   and of its ffmpeg children (sampled), rendering a 1-minute and a 10-minute 512x512
   template with a narration of the same length (--quick: 3 s and 12 s).

Writes DIR/engine.md (a Markdown section for BENCHMARKS.md) and DIR/engine.json (raw
figures); progress on stderr. Media is made by engines/media_samples.py into SCRATCH and
reused. Exit status 1 only if something could not be measured (a missed target is a "no"
in the table, not a failure)."""
from __future__ import annotations

import argparse
import collections
import json
import linecache
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import timing  # Benchmarks/timing.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINES = os.path.join(ROOT, "engines")
CLASSIC = os.path.join(ENGINES, "classic")
sys.path.insert(0, ENGINES)
sys.path.insert(0, CLASSIC)

CLK_TCK = os.sysconf("SC_CLK_TCK")
T0 = time.monotonic()

# What the engine's writer does (engines/classic/video_io.py Encoder; the preset and crf
# defaults of engines/classic/pipeline.py render_item).
CRF = 20
AUDIO_CODEC, AUDIO_BITRATE = "aac", "128k"


def engine_preset(width: int, height: int) -> str:
    return "veryfast" if width * height <= 400_000 else "superfast"


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- helpers
def proc_cpu(pid: int) -> dict:
    """utime+stime of the process and of its waited-for children, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()
    ut, st, cut, cst = (int(x) for x in fields[11:15])
    return {"self": (ut + st) / CLK_TCK, "children": (cut + cst) / CLK_TCK}


def status_kib(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def ffprobe_video(path: str) -> dict:
    p = subprocess.run(["ffprobe", "-v", "error", "-count_packets", "-show_entries",
                        "stream=codec_type,codec_name,width,height,nb_read_packets,pix_fmt,bit_rate,"
                        "sample_rate:format=duration", "-of", "json", path],
                       capture_output=True, text=True, check=True)
    j = json.loads(p.stdout)
    out = {"duration": float(j["format"]["duration"])}
    for s in j["streams"]:
        if s["codec_type"] == "video":
            out.update(video_codec=s["codec_name"], width=s["width"], height=s["height"],
                       pix_fmt=s.get("pix_fmt"), frames=int(s["nb_read_packets"]))
        elif s["codec_type"] == "audio":
            out.update(audio_codec=s["codec_name"], audio_bit_rate=int(s.get("bit_rate") or 0),
                       audio_sample_rate=int(s.get("sample_rate") or 0))
    return out


def x264_options(path: str) -> str | None:
    """The option string x264 writes into its SEI ('options: cabac=1 ref=...')."""
    with open(path, "rb") as f:
        data = f.read(8 << 20)
    i = data.find(b"x264 - core")
    if i < 0:
        return None
    j = data.find(b"options: ", i)
    end = data.find(b"\x00", j)
    return data[j + 9:end].decode("ascii", "replace") if j > 0 and end > j else None


def fmt(x: float | None) -> str:
    """3-4 significant digits."""
    if x is None:
        return "–"
    ax = abs(x)
    if ax >= 1000:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def fmt_ratio(r: float | None) -> str:
    return "–" if r is None else f"{r:#.3g}".rstrip(".") + "×"


def spread(values: list[float]) -> str:
    if len(values) < 2:
        return fmt(values[0]) if values else "–"
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}–{fmt(max(values))})"


# ---------------------------------------------------------------------------- media
def make_media(work: str, seconds: float, names: tuple[str, ...]) -> tuple[dict, str]:
    import media_samples

    media = os.path.join(work, "media")
    d = os.path.join(media, f"t{seconds:g}s")
    todo = [n for n in names if not os.path.exists(os.path.join(d, "templates", f"{n}.mp4"))]
    if todo:
        log(f"making {seconds:g} s templates {', '.join(todo)} (media_samples)")
    made = media_samples.generate(d, seconds=seconds, templates=names, narrations=False)
    narr = os.path.join(media, f"narration-en-{seconds:g}s.wav")
    if not os.path.exists(narr):
        log(f"making a {seconds:g} s English narration (espeak-ng)")
        media_samples.synth_speech(narr, "en-us", media_samples.ENGLISH_TEXT, seconds)
    return {n: made[n] for n in names}, narr


def make_looped(work: str, short_path: str, short_seconds: float, times: int) -> str:
    """`times` copies of a template back to back, by stream copy (the sample templates'
    camera motion is periodic over their length, so the loop has no jump)."""
    seconds = short_seconds * times
    d = os.path.join(work, "media", f"t{seconds:g}s-loop", "templates")
    out = os.path.join(d, "closeup-512.mp4")
    if os.path.exists(out):
        return out
    log(f"making a {seconds:g} s template: the {short_seconds:g} s one looped {times}× (stream copy)")
    os.makedirs(d, exist_ok=True)
    lst = os.path.join(d, "list.txt")
    with open(lst, "w") as f:
        f.write(f"file '{os.path.abspath(short_path)}'\n" * times)
    tmp = out + ".part.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "concat",
                    "-safe", "0", "-i", lst, "-c", "copy", "-movflags", "+faststart", tmp], check=True)
    os.replace(tmp, out)
    return out


# ---------------------------------------------------------------------------- the floor
def floor_time(name: str, command: list[str], runs: int, export: str) -> dict:
    """hyperfine's figures for one floor command, with the command line that was timed."""
    result = timing.hyperfine({name: command}, export, runs)[name]
    return {key: result[key] for key in ("median", "min", "max", "mean", "times", "cpu")} | {"command": shlex.join(command)}


def floor_commands(template: str, narration: str, duration: float, width: int, height: int, out: str):
    base = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error"]
    decode = base + ["-i", template, "-f", "null", "-"]
    encode = base + ["-y", "-i", template, "-i", narration, "-map", "0:v:0", "-map", "1:a:0",
                     "-c:v", "libx264", "-preset", engine_preset(width, height), "-crf", str(CRF),
                     "-pix_fmt", "yuv420p", "-c:a", AUDIO_CODEC, "-b:a", AUDIO_BITRATE,
                     "-t", f"{duration:.6f}", "-movflags", "+faststart", "-f", "mp4", out]
    return decode, encode


# ---------------------------------------------------------------------------- the engine
class ChildSampler(threading.Thread):
    """Samples the worker's children (ffmpeg, ffprobe) every `interval` s: peak VmHWM per role
    and the peak of worker + children RSS together."""

    def __init__(self, pid: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.stop = threading.Event()
        self.roles: dict[str, int] = {}  # role -> max VmHWM KiB
        self.peak_total = 0
        self.seen = 0
        self._pids: set[int] = set()

    def children(self):
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    s = f.read()
            except OSError:
                continue
            if int(s[s.rindex(")") + 2:].split()[1]) == self.pid:
                yield int(d)

    @staticmethod
    def role(pid: int) -> str:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            return "other"
        name = os.path.basename(argv[0]).decode()
        if b"libx264" in argv:
            return "the x264 + AAC encoder"
        if b"rawvideo" in argv:
            return "the video decoder"
        if name == "ffmpeg":
            return "the audio decoder"
        return name or "other"

    def run(self):
        while not self.stop.wait(self.interval):
            total = status_kib(self.pid, "VmRSS") or 0
            for c in self.children():
                hwm = status_kib(c, "VmHWM")
                if hwm is None:
                    continue
                if c not in self._pids:
                    self._pids.add(c)
                    self.seen += 1
                r = self.role(c)
                self.roles[r] = max(self.roles.get(r, 0), hwm)
                total += status_kib(c, "VmRSS") or 0
            self.peak_total = max(self.peak_total, total)


def engine_runs(bench, w, template: str, narration: str, duration: float, name: str, runs: int,
                work: str, warmup: bool) -> dict:
    """Cold (fresh cache folder) then warm (that cache), `runs` times, after one untimed render
    (`warmup`, as hyperfine's --warmup 1 for the floor)."""
    out_dir = os.path.join(work, "out")
    os.makedirs(out_dir, exist_ok=True)
    res = {"cold": [], "warm": []}

    def one(kind: str, cache: str, i: int) -> dict:
        c0 = proc_cpu(w.pid)
        msg = bench.render(w, template, narration, os.path.join(out_dir, f"engine-{name}.mp4"),
                           rid=f"{name}-{kind}-{i}", video_key=f"bench-{name}", cache_dir=cache,
                           duration=duration)
        c1 = proc_cpu(w.pid)
        if msg["type"] != "done":
            raise RuntimeError(f"the engine failed on {name}: {msg.get('kind')}: {msg.get('message')}")
        r = {"seconds": msg["seconds"], "frames": msg["frames"], "fps": msg["frames"] / msg["seconds"],
             "score": msg.get("score"), "cpu_worker": c1["self"] - c0["self"],
             "cpu_children": c1["children"] - c0["children"]}
        log(f"  {name} {kind} {i}: {r['frames']} frames in {r['seconds']:.2f} s ({r['fps']:.1f} fps), "
            f"CPU worker {r['cpu_worker']:.2f} s + ffmpeg {r['cpu_children']:.2f} s")
        return r

    caches = os.path.join(work, "caches")
    os.makedirs(caches, exist_ok=True)
    if warmup:
        one("warmup", tempfile.mkdtemp(prefix=f"{name}-warmup-", dir=caches), 0)
    for i in range(1, runs + 1):
        cache = tempfile.mkdtemp(prefix=f"{name}-cold{i}-", dir=caches)
        res["cold"].append(one("cold", cache, i))
        res["warm"].append(one("warm", cache, i))
    return res


def memory_run(bench, template: str, narration: str, duration: float, label: str, work: str) -> dict:
    logs = os.path.join(work, "logs")
    os.makedirs(logs, exist_ok=True)
    with open(os.path.join(logs, f"worker-memory-{label}.log"), "w") as err:
        w = bench.start_worker(stderr=err)
        sampler = ChildSampler(w.pid)
        sampler.start()
        try:
            after_start = status_kib(w.pid, "VmHWM")
            cache = tempfile.mkdtemp(prefix=f"mem-{label}-", dir=work)
            msg = bench.render(w, template, narration, os.path.join(work, "out", f"memory-{label}.mp4"),
                               rid=f"memory-{label}", video_key=f"memory-{label}", cache_dir=cache,
                               duration=duration)
            hwm = status_kib(w.pid, "VmHWM")  # just before it is asked to shut down
        finally:
            sampler.stop.set()
            sampler.join()
            try:
                bench.stop_worker(w)
            except Exception:  # noqa: BLE001
                w.kill()
                w.wait()
    if msg["type"] != "done":
        raise RuntimeError(f"the engine failed on the {label} memory render: {msg.get('message')}")
    r = {"seconds": msg["seconds"], "frames": msg["frames"], "fps": msg["frames"] / msg["seconds"],
         "worker_vmhwm_kib": hwm, "worker_vmhwm_after_start_kib": after_start,
         "children_vmhwm_kib": sampler.roles, "children_seen": sampler.seen,
         "peak_total_rss_kib": sampler.peak_total}
    log(f"  memory {label}: {r['frames']} frames in {r['seconds']:.1f} s; worker VmHWM {hwm / 1024:.1f} MiB "
        f"(after start {after_start / 1024:.1f}); children {', '.join(f'{k} {v / 1024:.1f} MiB' for k, v in sampler.roles.items())}")
    return r


# ---------------------------------------------------------------------------- sampled profile
def profile_child(req_path: str, result_path: str) -> int:
    """Run one render in this process with a sampling profiler over its threads."""
    from protocol import claim_stdout

    claim_stdout()  # native libraries print on fd 1
    from pipeline import Models, render_item

    with open(req_path) as f:
        req = json.load(f)

    class Quiet:
        def log(self, *a, **k):
            pass

        def progress(self, *a, **k):
            pass

    models = Models()
    interval = 0.005
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    stop = threading.Event()
    me = []

    def where(frame) -> str:
        f = frame
        while f is not None:
            fn = f.f_code.co_filename
            if fn.startswith(CLASSIC):
                func = f.f_code.co_name
                if os.path.basename(fn) == "pipeline.py" and func in ("get", "put"):
                    return ("waiting for the previous stage (queue empty)" if func == "get"
                            else "waiting for the next stage (queue full)")
                src = linecache.getline(fn, f.f_lineno).strip()
                src = src if len(src) <= 34 else src[:33] + "…"
                return f"{os.path.basename(fn)}:{f.f_lineno} {func} `{src}`"
            f = f.f_back
        return "outside the engine"

    def sampler():
        me.append(threading.get_ident())
        while not stop.wait(interval):
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                name = names.get(ident, "?")
                if ident == me[0] or name not in ("MainThread", "classic-reader", "classic-writer"):
                    continue
                counts[{"MainThread": "main (track + render)", "classic-reader": "reader (decode)",
                        "classic-writer": "writer (score + encode)"}[name]][where(frame)] += 1

    t = threading.Thread(target=sampler, daemon=True)
    t.start()
    t0 = time.monotonic()
    res = render_item(req, models, Quiet())
    dt = time.monotonic() - t0
    stop.set()
    t.join()
    out = {"seconds": dt, "frames": res["frames"], "threads": {}}
    for name, c in counts.items():
        n = sum(c.values())
        out["threads"][name] = {"samples": n, "top": [[k, v / n] for k, v in c.most_common(6)]}
    with open(result_path, "w") as f:
        json.dump(out, f, indent=1)
    return 0


def profile(template: str, narration: str, duration: float, name: str, work: str) -> dict:
    d = tempfile.mkdtemp(prefix=f"profile-{name}-", dir=work)
    req = {"type": "render", "id": f"profile-{name}", "video": template, "audio": narration,
           "output": os.path.join(d, "out.mp4"), "item_key": "p", "video_key": f"profile-{name}",
           "audio_key": "narr", "cache_dir": os.path.join(d, "cache"), "duration": duration, "params": {}}
    with open(os.path.join(d, "req.json"), "w") as f:
        json.dump(req, f)
    with open(os.path.join(work, "logs", f"profile-{name}.log"), "w") as err:
        subprocess.run([sys.executable, os.path.abspath(__file__), "--profile-request", os.path.join(d, "req.json"),
                        "--profile-result", os.path.join(d, "result.json")], check=True,
                       stdout=subprocess.DEVNULL, stderr=err)
    with open(os.path.join(d, "result.json")) as f:
        return json.load(f)


# ---------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 1 run (CI)")
    ap.add_argument("--out", help="folder for engine.md and engine.json")
    ap.add_argument("--work", default="/tmp/talkie-engine-bench", help="scratch folder (media is reused)")
    ap.add_argument("--profile-request", help=argparse.SUPPRESS)
    ap.add_argument("--profile-result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.profile_request:
        return profile_child(args.profile_request, args.profile_result)
    if not args.out:
        ap.error("--out is required")

    import bench  # engines/classic/bench.py

    quick = args.quick
    seconds = 2.0 if quick else 10.0
    runs = 1 if quick else 3
    mem_short, mem_long = (3.0, 12.0) if quick else (60.0, 600.0)
    budget = 75.0 if quick else 720.0  # the long memory render shrinks only past this
    work = os.path.abspath(args.work)
    os.makedirs(os.path.join(work, "logs"), exist_ok=True)
    os.makedirs(os.path.join(work, "out"), exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    rerun = shlex.join([".venv/bin/python", "Benchmarks/engine.py", *sys.argv[1:]])
    failures: list[str] = []
    result = {"mode": "quick" if quick else "full", "command": rerun, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "nproc": os.cpu_count(), "loadavg_start": os.getloadavg(),
              "ffmpeg": subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split("\n")[0],
              "seconds": seconds, "runs": runs, "templates": {}, "memory": {}, "profiles": {}}

    names = ("closeup-512", "closeup-720")
    labels = {"closeup-512": "close-up 512×512", "closeup-720": "close-up 1280×720"}
    targets = {"closeup-512": 50.0, "closeup-720": 25.0}
    try:
        templates, narration = make_media(work, seconds, names)
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        failures.append(f"media: {e}")
        templates, narration = {}, None

    # 1. speed ---------------------------------------------------------------------
    if templates:
        err = open(os.path.join(work, "logs", "worker-speed.log"), "w")
        w = bench.start_worker(stderr=err)
        try:
            for name in names:
                t = {"template": templates[name]}
                result["templates"][name] = t
                try:
                    t["input"] = ffprobe_video(templates[name])
                    log(f"{labels[name]}: engine, {runs} cold + {runs} warm renders")
                    t["engine"] = engine_runs(bench, w, templates[name], narration, seconds, name, runs, work,
                                                 warmup=not quick)
                    t["engine_output"] = ffprobe_video(os.path.join(work, "out", f"engine-{name}.mp4"))
                    floor_out = os.path.join(work, "out", f"floor-{name}.mp4")
                    dec, enc = floor_commands(templates[name], narration, seconds, t["input"]["width"],
                                              t["input"]["height"], floor_out)
                    log(f"{labels[name]}: ffmpeg floor (hyperfine, warmup 1, {runs} runs)")
                    t["floor_decode"] = floor_time(f"decode {name}", dec, runs, os.path.join(work, f"hf-decode-{name}.json"))
                    t["floor_encode"] = floor_time(f"encode {name}", enc, runs, os.path.join(work, f"hf-encode-{name}.json"))
                    t["floor_output"] = ffprobe_video(floor_out)
                    eo, fo = x264_options(os.path.join(work, "out", f"engine-{name}.mp4")), x264_options(floor_out)
                    t["x264_options_engine"], t["x264_options_floor"] = eo, fo
                    t["x264_options_identical"] = eo is not None and eo == fo
                    t["preset"] = engine_preset(t["input"]["width"], t["input"]["height"])
                    for k in ("floor_decode", "floor_encode"):
                        log(f"  {k}: median {t[k]['median']:.3f} s ({t['input']['frames'] / t[k]['median']:.1f} fps), "
                            f"CPU {t[k]['cpu']:.2f} s")
                except Exception as e:  # noqa: BLE001
                    traceback.print_exc()
                    failures.append(f"{name}: {e}")
        finally:
            try:
                bench.stop_worker(w)
            except Exception:  # noqa: BLE001
                w.kill()
                w.wait()
            err.close()

    # 2. memory ----------------------------------------------------------------------
    mem = result["memory"]
    try:
        short_t, short_n = make_media(work, mem_short, ("closeup-512",))
        log(f"memory: {mem_short:g} s render in a fresh worker")
        mem["short"] = memory_run(bench, short_t["closeup-512"], short_n, mem_short, f"{mem_short:g}s", work)
        mem["short"]["seconds_media"] = mem_short
        # the longest multiple of the short length that fits the budget, up to mem_long
        times = int(round(mem_long / mem_short))
        left = budget - (time.monotonic() - T0) - (35.0 if not quick else 5.0)
        per_frame = mem["short"]["seconds"] / mem["short"]["frames"]
        frames_short = mem["short"]["frames"]
        while times > 2 and times * frames_short * per_frame * 1.15 + 10 > left:
            times -= 1
        long_s = mem_short * times
        mem["long_wanted_seconds"] = mem_long
        import media_samples
        long_t = make_looped(work, short_t["closeup-512"], mem_short, times)
        long_n = os.path.join(work, "media", f"narration-en-{long_s:g}s.wav")
        if not os.path.exists(long_n):
            media_samples.synth_speech(long_n, "en-us", media_samples.ENGLISH_TEXT, long_s)
        frames = ffprobe_video(long_t)["frames"]
        if frames != times * ffprobe_video(short_t["closeup-512"])["frames"]:
            raise RuntimeError(f"the looped template has {frames} frames")
        log(f"memory: {long_s:g} s render in a fresh worker"
            + ("" if long_s == mem_long else f" ({mem_long:g} s would not fit the budget)"))
        mem["long"] = memory_run(bench, long_t, long_n, long_s, f"{long_s:g}s", work)
        mem["long"]["seconds_media"] = long_s
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        failures.append(f"memory: {e}")

    # verdicts, and a sampled profile where a target is missed ------------------------
    rows, notes = [], []
    missed = []
    for name in names:
        t = result["templates"].get(name, {})
        lab = labels[name]
        if "floor_encode" not in t:
            rows.append(f"| {lab}, fps | not measured | – | – | ≥ {targets[name]:g} fps; ≤ 3× | – |")
            continue
        frames = t["input"]["frames"]
        fe, fd = t["floor_encode"], t["floor_decode"]
        enc_fps = [frames / x for x in fe["times"]]
        dec_fps = [frames / x for x in fd["times"]]
        t["verdict"] = {}
        for kind in ("cold", "warm"):
            rs = t["engine"][kind]
            fps = [r["fps"] for r in rs]
            med_s = statistics.median(r["seconds"] for r in rs)
            ratio = med_s / fe["median"]
            ok_ratio = ratio <= 3.0
            n = f" (median of {runs}, min–max)" if runs > 1 else " (1 run)"
            if kind == "cold":
                ok_fps = statistics.median(fps) >= targets[name]
                target, met = f"≥ {targets[name]:g} fps; ≤ 3×", f"{'yes' if ok_fps else 'no'}; {'yes' if ok_ratio else 'no'}"
                if not ok_fps or not ok_ratio:
                    missed.append(name)
            else:
                ok_fps = None
                target, met = "≤ 3×", "yes" if ok_ratio else "no"
                if not ok_ratio and name not in missed:
                    missed.append(name)
            t["verdict"][kind] = {"fps_median": statistics.median(fps), "seconds_median": med_s,
                                  "ratio_to_encode_floor": ratio, "fps_target_met": ok_fps, "ratio_target_met": ok_ratio}
            rows.append(f"| {lab}, {kind} cache, fps{n} | {spread(fps)} | ffmpeg decode+encode: {spread(enc_fps)} "
                        f"| {fmt_ratio(ratio)} the floor's time | {target} | {met} |")
        cold_s = t["verdict"]["cold"]["seconds_median"]
        rows.append(f"| {lab}, fps against decoding alone | {fmt(t['verdict']['cold']['fps_median'])} (cold) "
                    f"| ffmpeg decode only: {spread(dec_fps)} | {fmt_ratio(cold_s / fd['median'])} the decode's time | – | – |")

    if "short" in mem and "long" in mem:
        s, l = mem["short"], mem["long"]
        ls, ss = l["seconds_media"], s["seconds_media"]

        def dur(x):
            return f"{x / 60:g}-minute" if x >= 60 else f"{x:g} s"
        short_fix = "" if ls == mem_long else f" ({dur(mem_long)} would not fit the budget)"
        ratio = l["worker_vmhwm_kib"] / s["worker_vmhwm_kib"]
        mem["ratio_worker"] = ratio
        rows.append(f"| peak RSS of the worker (VmHWM), {dur(ls)} 512×512 render{short_fix}, MiB "
                    f"| {fmt(l['worker_vmhwm_kib'] / 1024)} | {dur(ss)} render: {fmt(s['worker_vmhwm_kib'] / 1024)} "
                    f"| {fmt_ratio(ratio)} | ≤ 1.2× (flat) | {'yes' if ratio <= 1.2 else 'no'} |")
        sc, lc = s["children_vmhwm_kib"], l["children_vmhwm_kib"]
        if sc and lc:
            lmax, smax = max(lc.values()), max(sc.values())
            role = max(lc, key=lc.get)
            mem["ratio_children"] = lmax / smax
            rows.append(f"| peak RSS of its largest ffmpeg child ({role}, sampled), {dur(ls)} render, MiB "
                        f"| {fmt(lmax / 1024)} | {dur(ss)} render: {fmt(smax / 1024)} | {fmt_ratio(lmax / smax)} "
                        f"| ≤ 1.2× (flat) | {'yes' if lmax / smax <= 1.2 else 'no'} |")
        rt = l["peak_total_rss_kib"] / max(1, s["peak_total_rss_kib"])
        rows.append(f"| peak RSS of worker + children together (sampled), {dur(ls)} render, MiB "
                    f"| {fmt(l['peak_total_rss_kib'] / 1024)} | {dur(ss)} render: {fmt(s['peak_total_rss_kib'] / 1024)} "
                    f"| {fmt_ratio(rt)} | – | – |")
    else:
        rows.append("| peak RSS of the worker (VmHWM), long against short render | not measured | – | – | ≤ 1.2× (flat) | – |")

    for name in missed:
        if quick and name != "closeup-512":
            continue  # keep --quick short: one profile exercises the code
        try:
            log(f"profiling a cold {labels[name]} render (sampled every 5 ms)")
            result["profiles"][name] = profile(templates[name], narration, seconds, name, work)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            failures.append(f"profile {name}: {e}")

    # notes ---------------------------------------------------------------------------
    t512 = result["templates"].get("closeup-512", {})
    t720 = result["templates"].get("closeup-720", {})
    if "floor_encode" in t512 or "floor_encode" in t720:
        same = [labels[n] for n in names if result["templates"].get(n, {}).get("x264_options_identical")]
        notes.append(
            f"Floor, timed by hyperfine (`--warmup 1 --runs {runs}`): `ffmpeg -i TEMPLATE -f null -` and "
            f"`ffmpeg -i TEMPLATE -i NARRATION -map 0:v:0 -map 1:a:0 -c:v libx264 -preset P -crf {CRF} "
            f"-pix_fmt yuv420p -c:a {AUDIO_CODEC} -b:a {AUDIO_BITRATE} -t DURATION -movflags +faststart OUT.mp4`, "
            f"the engine writer's settings (video_io.py `Encoder`; pipeline.py picks P = veryfast up to 0.4 MP, "
            f"superfast above, so veryfast at 512×512 and superfast at 1280×720). The x264 option strings in the "
            f"engine's and the floor's outputs are identical for: {', '.join(same) or 'none'}.")
    fr = []
    for n in names:
        t = result["templates"].get(n, {})
        if "floor_output" in t:
            fr.append(f"{labels[n]}: template {t['input']['frames']} frames, engine output "
                      f"{t['engine_output']['frames']}, floor output {t['floor_output']['frames']}")
    if fr:
        notes.append(f"{seconds:g} s templates at 25 fps with a {seconds:g} s espeak-ng narration (16 kHz mono); frames: "
                     + "; ".join(fr) + ". Engine time is the protocol round trip (request to `done`) of a "
                     "long-lived worker" + ("" if quick else " after one untimed render") + "; a cold run gets a fresh cache folder, the warm "
                     "run after it reuses it.")
        notes.append("Beyond the floor, the engine pipes raw yuv420p frames out of ffmpeg and back in, converts each "
                     "to RGB and back, runs the mediapipe face mesh on every template frame (cold cache only), "
                     "renders the mouth, and measures the mouth opening on every 2nd output frame for the lip-sync "
                     "score (a second face-mesh pass, cold or warm; every frame when a render has under 250 "
                     "frames), besides probing and analysing the audio.")
    cpu = []
    ratios = []
    missed = []
    for n in names:
        t = result["templates"].get(n, {})
        if "verdict" in t:
            for kind in ("cold", "warm"):
                rs = t["engine"][kind]
                cw = statistics.median(r["cpu_worker"] for r in rs)
                cc = statistics.median(r["cpu_children"] for r in rs)
                cpu.append(f"{labels[n]} {kind}: {fmt(cw)} s in the worker's Python/native code + {fmt(cc)} s in "
                           f"its ffmpeg children")
                ratios.append(f"{labels[n]} {kind} {fmt_ratio((cw + cc) / t['floor_encode']['cpu'])}")
                wall = t["floor_encode"]["median"] and statistics.median(r["seconds"] for r in rs) / t["floor_encode"]["median"]
                if wall and wall > 3:
                    missed.append(f"{labels[n]} {kind} ({fmt_ratio(wall)} the floor's time, "
                                  f"{fmt_ratio((cw + cc) / t['floor_encode']['cpu'])} its CPU)")
            cpu.append(f"{labels[n]} floor: {fmt(t['floor_encode']['cpu'])} s")
    if cpu:
        notes.append("CPU seconds per render (medians; the machine has " f"{os.cpu_count()} cores): " + "; ".join(cpu)
                     + ". The engine's CPU against the floor's: " + ", ".join(ratios) + "; its three threads and its "
                     "ffmpeg children overlap, so its wall-time ratio is lower than its CPU ratio.")
    if missed:
        notes.append("Missed, ≤ 3× the floor's time: " + "; ".join(missed) + ". With every core busy, the wall "
                     "time follows the CPU. Beyond the floor's decode and encode, the engine's CPU goes to two "
                     "face-mesh passes (tracking every template frame, which a cold cache cannot skip, and the "
                     "score's every 2nd output frame), the mouth render and moving raw frames through pipes; less "
                     "of that work per frame would close it, e.g. tracking a sparser set of frames and "
                     "interpolating, at some cost in how closely the mouth follows a moving head.")
    for n, p in result["profiles"].items():
        parts = []
        for th, d in sorted(p["threads"].items()):
            top = ", ".join(f"{v * 100:.0f}% {k}" for k, v in d["top"][:3])
            parts.append(f"*{th}*: {top}")
        notes.append(f"Where the time goes (in-process sampled profile of one cold {labels[n]} render, "
                     f"{p['frames']} frames in {p['seconds']:.2f} s, share of each thread's wall time): "
                     + "; ".join(parts) + ".")
    if "long" in mem:
        l, s = mem["long"], mem["short"]
        per_frame = (l["worker_vmhwm_kib"] - s["worker_vmhwm_kib"]) * 1024 / max(1, l["frames"] - s["frames"])
        from facetrack import SUBSET
        track_bytes = len(SUBSET) * 2 * 4  # float32 x, y per landmark
        mem["worker_growth_bytes_per_frame"] = per_frame
        notes.append(f"Memory: a fresh worker per render, VmHWM read from /proc after `done` and before "
                     f"`shutdown` (after the handshake alone: {fmt(s['worker_vmhwm_after_start_kib'] / 1024)} MiB); "
                     f"its children ({', '.join(sorted(l['children_vmhwm_kib']))}) sampled every 0.1 s. "
                     f"The worker's VmHWM grew by {fmt(per_frame)} B per extra template frame (at that rate a "
                     f"1-hour template would need ≈ {fmt(per_frame * 90000 / 2**20)} MiB more than a short one); the face track it holds in "
                     f"memory (facetrack.py `TrackCache`) is {len(SUBSET)} landmarks × 2 float32 = {track_bytes} B "
                     f"per template frame, in an array that doubles as it grows; frames themselves stream. "
                     f"The long template is the short one looped by stream copy (its camera motion is periodic "
                     f"over its length, so the loop has no jump); face-track cache cold, so every frame is tracked. "
                     f"Render speeds: {fmt(s['fps'])} and {fmt(l['fps'])} fps.")
    la0, la1 = result["loadavg_start"], os.getloadavg()
    result["loadavg_end"] = la1
    notes.append(f"Load average {la0[0]:.2f} at the start and {la1[0]:.2f} at the end on {os.cpu_count()} cores "
                 f"(a shared machine: other jobs ran beside it); {result['ffmpeg']}.")
    if failures:
        notes.append("Not measured: " + "; ".join(failures))
    result["failures"] = failures
    result["wall_seconds"] = time.monotonic() - T0

    head = ("`" + rerun + "` — " +
            f"fps of the built-in engine rendering {seconds:g} s close-up templates through a real worker over the "
            f"protocol (face-track cache cold and warm), against ffmpeg decoding and re-encoding the same template "
            f"with the same narration and the engine writer's encoder settings, in the same run; and the worker's "
            f"peak memory on a short and a long render.")
    md = ["## The built-in engine (classic)", "", head, "",
          "| measure | Talkie | baseline | ratio | target | met |", "|---|---:|---:|---:|---|:-:|", *rows, ""]
    md += [f"- {n}" for n in notes]
    with open(os.path.join(args.out, "engine.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    with open(os.path.join(args.out, "engine.json"), "w") as f:
        json.dump(result, f, indent=1, default=str)
    log(f"wrote {os.path.join(args.out, 'engine.md')} and engine.json in {time.monotonic() - T0:.0f} s"
        + (f"; NOT MEASURED: {'; '.join(failures)}" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
