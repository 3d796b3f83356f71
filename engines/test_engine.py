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
Misbehaviours for the reliability suite "engines" (markers checked after the ones above):
  exit1           exit with status 1 in the middle of the item
  segfault        die of a real SIGSEGV in the middle of the item (ctypes reads address 0;
                  os.kill with SIGSEGV if that does not end it)
  half-output     write only the first half of a valid output, then answer "done"
  stderr-flood    write params["flood_mb"] or TALKIE_TEST_ENGINE_FLOOD_MB (default 20) MB of
                  text to stderr, then render normally
  oom-killed      killed by the kernel's OOM killer: the worker moves itself into the memory
                  cgroup named by params["cgroup"] or TALKIE_TEST_ENGINE_CGROUP (a cgroup v1
                  memory or v2 folder with a limit; the caller makes it) and allocates until
                  the kernel kills it. Without a usable cgroup, or if the kernel has not acted
                  after four times the limit, it SIGKILLs itself after allocating (simulated:
                  it says which on stderr).
  grandchild      start a grandchild (`sleep`, in the worker's process group, holding its
                  stdout and stderr) that keeps running, then render normally
  orphan          start the same grandchild, then exit with status 1 in the middle of the item
Every render is appended to the file named by params["log"] or TALKIE_TEST_ENGINE_LOG ("render <item
key> <template name>"), so tests count renders from the engine's own log. When
TALKIE_TEST_ENGINE_START_LOG names a file, every worker start ("start <pid> <process group>")
and grandchild ("grandchild <pid> <worker pid>") is appended to it (a separate file, so the
render log keeps one line per render). params["delay"] or TALKIE_TEST_ENGINE_DELAY (seconds,
default 0) is spent per progress step, ten steps per item.
Standard library only.
"""
import json
import os
import signal
import subprocess
import sys
import time

MODES = ["fail-input", "fail-transient", "flaky", "crash", "hang", "garbage", "no-audio"]
# Looked for only when none of MODES is in the name, so names that chose a mode before keep it.
MISBEHAVIOURS = ["exit1", "segfault", "half-output", "stderr-flood", "oom-killed", "grandchild", "orphan"]


def send(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def mode_of(request):
    mode = (request.get("params") or {}).get("mode")
    if mode:
        return mode
    name = os.path.basename(request["video"])
    for candidate in MODES + MISBEHAVIOURS:
        if candidate in name:
            return candidate
    return None


def param(request, name, variable, default=None):
    return (request.get("params") or {}).get(name) or os.environ.get(variable) or default


def log_event(line):
    path = os.environ.get("TALKIE_TEST_ENGINE_START_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(line + "\n")
            log.flush()
            os.fsync(log.fileno())


def start_grandchild():
    """A process that outlives the item: same process group, holding stdout and stderr."""
    child = subprocess.Popen(["sleep", "597"], stdin=subprocess.DEVNULL)
    log_event(f"grandchild {child.pid} {os.getpid()}")
    print(f"test engine: started grandchild {child.pid}", file=sys.stderr, flush=True)


def segfault():
    print("test engine: reading address 0 (SIGSEGV)", file=sys.stderr, flush=True)
    import ctypes
    ctypes.string_at(0)
    signal.signal(signal.SIGSEGV, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGSEGV)


def memory_limit(cgroup):
    for name in ("memory.limit_in_bytes", "memory.max"):
        try:
            with open(os.path.join(cgroup, name)) as file:
                value = file.read().strip()
            return int(value) if value.isdigit() and int(value) < 1 << 50 else None
        except OSError:
            continue
    return None


def out_of_memory(request):
    """Grows until the OOM killer of its memory cgroup ends it (or simulates that)."""
    cgroup = param(request, "cgroup", "TALKIE_TEST_ENGINE_CGROUP")
    limit = None
    if cgroup:
        try:
            with open(os.path.join(cgroup, "cgroup.procs"), "w") as procs:
                procs.write(str(os.getpid()))
            limit = memory_limit(cgroup)
        except OSError as error:
            print(f"test engine: cannot join the memory cgroup {cgroup} ({error})", file=sys.stderr, flush=True)
    if limit:
        print(f"test engine: in {cgroup} (limit {limit >> 20} MB); allocating until the OOM killer acts",
              file=sys.stderr, flush=True)
    ceiling = 4 * limit if limit else 64 << 20
    hoard, chunk = [], 8 << 20
    while len(hoard) * chunk < ceiling:
        block = bytearray(chunk)
        block[::4096] = b"\x01" * (chunk // 4096)  # touch every page, so it is really charged
        hoard.append(block)
    print("test engine: no OOM killer acted; simulating it with SIGKILL", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def flood_stderr(request):
    megabytes = float(param(request, "flood_mb", "TALKIE_TEST_ENGINE_FLOOD_MB", 20))
    line = ("test engine: flooding stderr ".ljust(999, "x") + "\n").encode()
    for _ in range(int(megabytes * 1000)):
        sys.stderr.buffer.write(line)
    sys.stderr.buffer.write(b"and a last line without its end" * 100)
    sys.stderr.flush()


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
    if mode in ("grandchild", "orphan"):
        start_grandchild()
    if mode == "stderr-flood":
        flood_stderr(request)
    if mode == "oom-killed":
        out_of_memory(request)
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
        if mode in ("exit1", "orphan") and step == 5:
            print("test engine: exiting with status 1", file=sys.stderr, flush=True)
            sys.exit(1)
        if mode == "segfault" and step == 5:
            segfault()
    command = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-stream_loop", "-1", "-i", "file:" + request["video"]]
    if mode != "no-audio":
        command += ["-i", "file:" + request["audio"], "-map", "0:v:0", "-map", "1:a:0", "-c:a", "aac"]
    else:
        command += ["-map", "0:v:0"]
    target = request["output"] + ".whole.mp4" if mode == "half-output" else request["output"]
    command += ["-t", f"{duration:.3f}", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                "-r", "25", "-f", "mp4", "file:" + target]
    result = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if result.returncode != 0:
        return send({"type": "error", "id": rid, "kind": "transient",
                     "message": "test engine: ffmpeg failed: " + result.stderr.decode(errors="replace")[-300:]})
    if mode == "half-output":
        with open(target, "rb") as whole:
            data = whole.read()
        with open(request["output"], "wb") as half:
            half.write(data[:len(data) // 2])
        os.unlink(target)
        print(f"test engine: wrote {len(data) // 2} of {len(data)} bytes and says done", file=sys.stderr, flush=True)
    send({"type": "done", "id": rid, "frames": frames})


def main():
    log_event(f"start {os.getpid()} {os.getpgid(0)}")
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
