#!/usr/bin/env python3
"""The studio (`talkie serve`) beside its baselines, measured in one run on one machine.

  python3 Benchmarks/studio.py [--quick] --out DIR [--work SCRATCH]

Writes DIR/studio.md (a Markdown section of BENCHMARKS.md) and DIR/studio.json (the raw
figures); progress goes to stderr. Three measurements:

1. Upload: a file of random bytes (2 GiB; --quick 64 MiB) sent with `curl -T` to
   POST /api/inputs/videos (streamed to disk, hashed with XXH3-128 on the way, fsynced),
   against `cat FILE > COPY && sync COPY` on the same disk, page cache warm for both, 3 runs
   (--quick 1). curl sends `Expect: 100-continue` for bodies over 1 MiB; the upload is also
   timed with that header suppressed (`-H 'Expect:'`, as a browser sends it). The server's
   VmRSS is sampled every 50 ms: idle before the first upload, peak over all of them.
2. WebSocket event latency: a batch of small templates rendered by the test engine
   (engines/test_engine.py, a pause per progress step so progress events flow) with 50
   pages connected to /ws, against the same batch with 1 page. For every event each page
   receives: the time its frame reached the page's socket (the kernel's receive timestamp,
   SO_TIMESTAMPNS, CLOCK_REALTIME) minus the event's own "time" field (the server's wall
   clock, millisecond resolution). Every page must receive every event, in the same order,
   including every event of the run log (outputs/talkie.log).
3. The status API under load: `wrk` (Debian's 4.1.0) on GET /api/state while a batch of
   ~100 templates renders, paced near 200 requests/s (10 connections, each pausing 50 ms
   after every response: a Lua `delay()`), against the same load on GET / (the studio page,
   a static file of the same server). 30 s per run (--quick 3 s).

The binary is $TALKIE_BINARY (default .build/release/talkie); the server gets
TALKIE_HOME=<this checkout> so it finds engines/ and web/. Needs curl, wrk, ffmpeg,
espeak-ng, and websocket-client (in .venv: the script re-executes itself with
.venv/bin/python when the running Python lacks it). Exit status 1 when something could not
be measured (a server that fails, a wrong reply, a page that missed events), never because
a target is missed.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import selectors
import shlex
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"

try:
    import websocket  # websocket-client
except ImportError:
    if VENV_PYTHON.exists() and Path(sys.prefix).resolve() != (ROOT / ".venv").resolve() \
            and not os.environ.get("TALKIE_STUDIO_BENCH_REEXEC"):
        os.environ["TALKIE_STUDIO_BENCH_REEXEC"] = "1"
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), str(Path(__file__).resolve()), *sys.argv[1:]])
    sys.exit("Benchmarks/studio.py needs websocket-client: run scripts/setup.sh (it makes .venv), or pip install websocket-client")

sys.path.insert(0, str(ROOT))
from reliability import harness  # noqa: E402  (media helpers, wait_for)
from reliability.suites.studio_client import Server  # noqa: E402  (a `talkie serve` on a workspace)

PAGES = 50
ENGINE_DELAY = 0.1  # s per progress step of the test engine, ten steps per item (the runner passes 10 a second)
WRK_CONNECTIONS = 10
WRK_PAUSE_MS = 50  # per connection after each response: 10 × (50 ms + latency) ≈ 200 requests/s
FLAT_MIB = 32  # "memory flat": peak − idle below this
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)

STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[studio {time.monotonic() - STARTED:6.1f} s] {message}", file=sys.stderr, flush=True)


class Unmeasured(Exception):
    """Something could not be measured: a server that fails, a wrong reply."""


# ---------------------------------------------------------------------------------------
# Numbers


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def sig(value: float | None, digits: int = 4) -> str:
    """3-4 significant digits, never in exponent form."""
    if value is None:
        return "–"
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    if magnitude >= digits - 1:
        return f"{value:.0f}"
    return f"{value:.{max(0, digits - 1 - magnitude)}f}"


def ratio(value: float | None) -> str:
    return "–" if value is None else f"{sig(value, 3)}×"


def spread(values: list[float]) -> str:
    """median (min–max), or the value alone for one run."""
    if len(values) == 1:
        return sig(values[0])
    return f"{sig(statistics.median(values))} ({sig(min(values))}–{sig(max(values))})"


def met(condition: bool | None) -> str:
    return "–" if condition is None else ("yes" if condition else "no")


def latency_summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50_ms": percentile(values, 50), "p99_ms": percentile(values, 99), "max_ms": max(values),
            "min_ms": min(values), "mean_ms": statistics.fmean(values)}


# ---------------------------------------------------------------------------------------
# The server and its memory


def rss_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class RssSampler:
    """The server's VmRSS every 50 ms while the block runs: `idle` at entry, `peak`."""

    def __init__(self, pid: int, period: float = 0.05):
        self.pid = pid
        self.period = period
        self.idle = self.peak = self.last = 0
        self.samples = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.is_set():
            value = rss_kib(self.pid)
            self.peak = max(self.peak, value)
            self.samples += 1
            self._done.wait(self.period)

    def __enter__(self) -> "RssSampler":
        self.idle = self.peak = rss_kib(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._done.set()
        self._thread.join()
        self.last = rss_kib(self.pid)
        self.peak = max(self.peak, self.last)


def start_server(binary: str, workspace: Path, logs: Path, extra_args: list[str] | None = None) -> Server:
    os.environ["TALKIE_BIN"] = binary  # what reliability.harness.talkie_bin() starts
    env = dict(os.environ, TALKIE_HOME=str(ROOT))
    for name in ("TALKIE_TEST_ENGINE_LOG", "TALKIE_TEST_ENGINE_DELAY", "TALKIE_RELIABILITY_TAG"):
        env.pop(name, None)
    logs.mkdir(parents=True, exist_ok=True)
    server = Server(None, workspace, logs, env=env, extra_args=extra_args)
    try:
        server.start(seconds=60)
    except RuntimeError as error:
        raise Unmeasured(str(error)) from None
    return server


def shut(server: Server | None) -> None:
    if server is not None and server.process is not None:
        server.stop(seconds=20)
        server.kill()  # anything left in its process group (engine workers)


def call(server: Server, method: str, path: str, payload: object | None = None, expect: tuple[int, ...] = (200,)) -> dict:
    if not server.alive():
        raise Unmeasured(f"the server exited ({server.process.returncode}): {server.stderr_tail()}")
    reply = server.api(method, path, payload, timeout=60)
    if reply.status not in expect:
        raise Unmeasured(f"{method} {path} answered {reply.status or reply.error}: {reply.body[:300]!r}")
    try:
        return reply.json() if reply.body else {}
    except ValueError:
        raise Unmeasured(f"{method} {path} answered with something that is not JSON: {reply.body[:300]!r}") from None


def upload_file(server: Server, kind: str, path: Path) -> dict:
    reply = server.upload(kind, path, path.name)
    if reply.status != 201:
        raise Unmeasured(f"uploading {path.name} answered {reply.status or reply.error}: {reply.body[:300]!r}")
    return reply.json()


# ---------------------------------------------------------------------------------------
# 1. Upload against `cat`


def measure_upload(binary: str, folder: Path, size_mib: int, runs: int) -> dict:
    folder.mkdir(parents=True)
    source, copy, answer = folder / "big.bin", folder / "copy.bin", folder / "answer.json"
    size = size_mib << 20
    say(f"upload: writing {size_mib} MiB of random bytes")
    subprocess.run(["sh", "-c", f'head -c {size} /dev/urandom > "$1"', "sh", str(source)], check=True)
    server = start_server(binary, folder / "ws", folder / "logs", ["--max-upload-mb", str(max(4096, 2 * size_mib))])
    url = f"http://127.0.0.1:{server.port}/api/inputs/videos?name=big.mp4"
    result = {"size_mib": size_mib, "runs": runs, "cat_mib_s": [], "upload_mib_s": [], "upload_no_expect_mib_s": [],
              "curl_waited_for_100_continue": [], "server_answered_100_continue": []}
    try:
        idle = rss_kib(server.pid)
        peak = idle
        with open(source, "r+b") as handle:
            for run in range(runs):
                # New content for every run (the first bytes), so no upload is a duplicate;
                # the rest of the file stays in the page cache.
                os.pwrite(handle.fileno(), os.urandom(16), 0)
                handle.flush()
                subprocess.run(["cat", str(source)], stdout=subprocess.DEVNULL, check=True)  # warm for both
                os.sync()
                start = time.perf_counter()
                subprocess.run(["sh", "-c", 'cat "$1" > "$2" && sync "$2"', "sh", str(source), str(copy)], check=True)
                seconds = time.perf_counter() - start
                copy.unlink()
                result["cat_mib_s"].append(size_mib / seconds)
                say(f"upload run {run + 1}/{runs}: cat {size_mib / seconds:.1f} MiB/s")
                for expect in (True, False):
                    os.sync()
                    command = ["curl", "-sS", "-v", "--trace-time", "-X", "POST", "-T", str(source), "-H", "Content-Type: application/octet-stream",
                               *([] if expect else ["-H", "Expect:"]), "-o", str(answer), "-w", "%{http_code}", url]
                    with RssSampler(server.pid) as sampler:
                        start = time.perf_counter()
                        done = subprocess.run(command, capture_output=True, text=True, errors="replace")
                        seconds = time.perf_counter() - start
                    peak = max(peak, sampler.peak)
                    if done.returncode != 0 or done.stdout.strip() != "201":
                        raise Unmeasured(f"curl -T answered {done.stdout.strip() or '-'} (exit {done.returncode}): "
                                         f"{answer.read_text(errors='replace')[:300] if answer.exists() else ''} {done.stderr[-300:]}")
                    reply = json.loads(answer.read_text())
                    if reply.get("size") != size or reply.get("duplicate") is not False:
                        raise Unmeasured(f"the upload's reply does not match the file ({size} bytes, new): {reply}")
                    call(server, "DELETE", f"/api/inputs/videos/{reply['key']}", expect=(204,))  # frees the disk
                    key = "upload_mib_s" if expect else "upload_no_expect_mib_s"
                    result[key].append(size_mib / seconds)
                    if expect:
                        result["curl_waited_for_100_continue"].append(expect_wait(done.stderr))
                        result["server_answered_100_continue"].append("< HTTP/1.1 100" in done.stderr)
                    say(f"upload run {run + 1}/{runs}: curl -T{'' if expect else ' (no Expect)'} "
                        f"{size_mib / seconds:.1f} MiB/s, server RSS peak {sampler.peak / 1024:.1f} MiB")
        result["rss_idle_mib"] = idle / 1024
        result["rss_peak_mib"] = peak / 1024
    finally:
        shut(server)
        shutil.rmtree(folder, ignore_errors=True)  # gigabytes
    return result


def expect_wait(trace: str) -> float | None:
    """Seconds curl waited between sending `Expect: 100-continue` and giving up on the
    server's `100 Continue` (from `curl -v --trace-time`); None when it did not wait."""
    def clock(line: str) -> float:
        hours, minutes, seconds = line.split(" ", 1)[0].split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    sent = gave_up = None
    for line in trace.splitlines():
        with contextlib.suppress(ValueError, IndexError):
            if "> Expect: 100-continue" in line:
                sent = clock(line)
            elif "Done waiting for 100-continue" in line:
                gave_up = clock(line)
    if sent is None or gave_up is None:
        return None
    return (gave_up - sent) % 86400


# ---------------------------------------------------------------------------------------
# 2. WebSocket pages


class Page:
    """One /ws connection. Frames are read off the socket here, exactly one at a time, with
    recvmsg and the kernel's receive timestamp of the frame's last bytes, so the latency is
    when the frame reached this page, not when this (single-threaded) client got round to
    it. websocket-client makes the handshake (it reads the answer byte by byte, so nothing
    of the first frame is left in its buffers)."""

    def __init__(self, url: str):
        self.ws = websocket.create_connection(url, timeout=30)
        self.sock = self.ws.sock
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.stamp: float | None = None
        self.unstamped = 0  # frames without a kernel timestamp (the read time stands in)

    def _read(self, count: int) -> bytes:
        data = bytearray()
        while len(data) < count:
            chunk, ancillary, _, _ = self.sock.recvmsg(count - len(data), socket.CMSG_SPACE(16))
            if not chunk:
                raise ConnectionError("the server closed the WebSocket")
            data += chunk
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
                    seconds, nanoseconds = struct.unpack("qq", payload[:16])
                    self.stamp = seconds + nanoseconds / 1e9
        return bytes(data)

    def message(self) -> tuple[str, float, float]:
        """The next text message: (text, kernel receive time, time this client read it)."""
        parts = []
        while True:
            self.stamp = None
            first, second = self._read(2)
            length = second & 0x7F
            if length == 126:
                length = struct.unpack("!H", self._read(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self._read(8))[0]
            mask = self._read(4) if second & 0x80 else None
            payload = self._read(length) if length else b""
            if mask:
                payload = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
            opcode = first & 0x0F
            if opcode == 0x8:
                raise ConnectionError("the server closed the WebSocket")
            if opcode == 0x9:
                self.ws.pong(payload)
                continue
            if opcode in (0x1, 0x0, 0x2):
                parts.append(payload)
                if first & 0x80:
                    read = time.time()
                    self.unstamped += self.stamp is None
                    return b"".join(parts).decode("utf-8"), self.stamp if self.stamp is not None else read, read

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close(timeout=1)


EVENT_PREFIX = '{"type":"event","event":'


def render_with_pages(server: Server, workspace: Path, pages: int, items: int) -> dict:
    """History cleared, `pages` pages connected (each has its first snapshot), the batch
    started; every message each page receives until its batch_finished."""
    call(server, "POST", "/api/batch/reset", {"confirm": True})
    run_log = workspace / "outputs" / "talkie.log"
    log_offset = run_log.stat().st_size if run_log.exists() else 0
    url = f"ws://127.0.0.1:{server.port}/ws"
    connected = []
    try:
        for _ in range(pages):
            page = Page(url)
            connected.append(page)
            text, _, _ = page.message()
            if not text.startswith('{"type":"snapshot"'):
                raise Unmeasured(f"a page's first message is not a snapshot: {text[:200]}")
        received: list[list[tuple[str, float, float]]] = [[] for _ in connected]
        selector = selectors.DefaultSelector()
        for index, page in enumerate(connected):
            selector.register(page.sock, selectors.EVENT_READ, index)
        with RssSampler(server.pid) as sampler:
            started = time.monotonic()
            call(server, "POST", "/api/batch/start", expect=(202,))
            deadline = started + 60 + 20 * items
            finished = 0
            while finished < len(connected):
                if time.monotonic() > deadline:
                    raise Unmeasured(f"the batch of {items} items did not finish within {deadline - started:.0f} s "
                                     f"({finished} of {len(connected)} pages saw batch_finished)")
                for key, _ in selector.select(timeout=1.0):
                    try:
                        text, stamp, read = connected[key.data].message()
                    except (OSError, ConnectionError) as error:
                        raise Unmeasured(f"page {key.data} lost its WebSocket: {error}") from None
                    received[key.data].append((text, stamp, read))
                    if text.startswith(EVENT_PREFIX) and '"event":"batch_finished"' in text:
                        selector.unregister(key.fileobj)
                        finished += 1
            seconds = time.monotonic() - started
        selector.close()
        unstamped = sum(page.unstamped for page in connected)
    finally:
        for page in connected:
            page.close()

    # Every page must have received the same events, in the same order.
    streams = [[(text, stamp, read) for text, stamp, read in messages if text.startswith(EVENT_PREFIX)]
               for messages in received]
    reference = [text for text, _, _ in streams[0]]
    union = set()
    for stream in streams:
        union.update(text for text, _, _ in stream)
    problems = []
    for index, stream in enumerate(streams):
        texts = [text for text, _, _ in stream]
        if texts != reference:
            missing = len(union - set(texts))
            problems.append(f"page {index} received {len(texts)} events, page 0 {len(reference)} "
                            f"({missing} of all {len(union)} distinct events missing from page {index})")
    events = [json.loads(text[len(EVENT_PREFIX):-1]) for text in reference]
    names = [event["event"] for event in events]
    succeeded = names.count("item_succeeded")
    if succeeded != items:
        problems.append(f"{succeeded} of {items} items succeeded ({names.count('item_failed')} failed)")
    # The run log holds every event but progress: each of its lines of this batch must have
    # reached the pages, byte for byte.
    time.sleep(0.2)
    logged = []
    if run_log.exists():
        with open(run_log, "rb") as log:
            log.seek(log_offset)
            logged = [line.decode("utf-8", errors="replace").strip() for line in log if line.strip()]
    lines_seen = {text[len(EVENT_PREFIX):-1] for text in reference}
    unseen = [line for line in logged if line not in lines_seen]
    if unseen:
        problems.append(f"{len(unseen)} of the run log's {len(logged)} lines of this batch reached no page, e.g. {unseen[0][:160]}")
    not_logged = [name for name, text in zip(names, reference) if name != "item_progress" and text[len(EVENT_PREFIX):-1] not in set(logged)]

    socket_ms, client_ms, named = [], [], []
    for stream in streams:
        for (text, stamp, read), name in zip(stream, names):
            sent = datetime.fromisoformat(json.loads(text[len(EVENT_PREFIX):-1])["time"]).timestamp()
            socket_ms.append((stamp - sent) * 1000)
            client_ms.append((read - sent) * 1000)
            named.append((socket_ms[-1], name))
    over_p99 = [name for value, name in named if value > percentile(socket_ms, 99)] if socket_ms else []
    # Fan-out: how long after the first page the last page got each event (page-major order).
    count = len(reference)
    spreads, slowest = [], None
    for index in range(count):
        values = [socket_ms[page * count + index] for page in range(len(streams))]
        spreads.append(max(values) - min(values))
        if slowest is None or max(values) > slowest["latency_ms"]:
            slowest = {"event": names[index], "latency_ms": max(values), "spread_ms": spreads[-1]}
    return {
        "pages": len(connected), "items": items, "batch_seconds": seconds, "events_per_page": len(reference),
        "events_by_name": {name: names.count(name) for name in sorted(set(names))},
        "snapshots_per_page": sum(1 for text, _, _ in received[0] if not text.startswith(EVENT_PREFIX)),
        "deliveries": len(socket_ms), "frames_without_kernel_timestamp": unstamped, "run_log_lines": len(logged), "events_not_in_run_log": len(not_logged),
        "latency_at_socket": latency_summary(socket_ms), "latency_at_client_read": latency_summary(client_ms),
        "rss_idle_mib": sampler.idle / 1024, "rss_peak_mib": sampler.peak / 1024, "problems": problems,
        "slowest": [[name, round(value, 3)] for value, name in sorted(named, reverse=True)[:10]],
        "fanout_spread": latency_summary(spreads), "slowest_event": slowest,
        "over_p99_by_event": {name: over_p99.count(name) for name in sorted(set(over_p99))},
        "latencies_at_socket_ms": [round(value, 3) for value in socket_ms],
    }


# ---------------------------------------------------------------------------------------
# 3. wrk on the status API


WRK_SCRIPT = """-- Paced load for Benchmarks/studio.py: each connection pauses after every response.
local pause = %d
function delay() return pause end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%%.0f,"duration_us":%%.0f,"bytes":%%.0f,' ..
    '"p50_us":%%.0f,"p90_us":%%.0f,"p99_us":%%.0f,"max_us":%%.0f,"min_us":%%.0f,"mean_us":%%.1f,' ..
    '"errors":{"connect":%%.0f,"read":%%.0f,"write":%%.0f,"status":%%.0f,"timeout":%%.0f}}\\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.min, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def run_wrk(url: str, seconds: int, script: Path) -> dict:
    command = ["wrk", "-t1", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", "--timeout", "5s", "-s", str(script), url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    line = next((line for line in done.stdout.splitlines() if line.startswith("WRKJSON ")), None)
    if done.returncode != 0 or line is None:
        raise Unmeasured(f"wrk failed (exit {done.returncode}): {done.stdout[-400:]} {done.stderr[-400:]}")
    figures = json.loads(line[len("WRKJSON "):])
    figures["rate"] = figures["requests"] / (figures["duration_us"] / 1e6)
    if any(figures["errors"].values()):
        raise Unmeasured(f"wrk on {url} counted errors (status = answers not 2xx/3xx): {figures['errors']}")
    return figures


def keep_running(server: Server) -> tuple[dict, bool]:
    """The batch's state; starts it again (history cleared) when it has ended."""
    state = call(server, "GET", "/api/state")
    if state["running"]:
        return state, False
    call(server, "POST", "/api/batch/reset", {"confirm": True})
    call(server, "POST", "/api/batch/start", expect=(202,))
    harness.wait_for(lambda: call(server, "GET", "/api/state")["running"], 30, 0.1)
    return call(server, "GET", "/api/state"), True


def measure_api(server: Server, items: int, seconds: int, folder: Path) -> dict:
    script = folder / "paced.lua"
    script.write_text(WRK_SCRIPT % WRK_PAUSE_MS)
    call(server, "POST", "/api/batch/reset", {"confirm": True})
    call(server, "POST", "/api/batch/start", expect=(202,))
    if not harness.wait_for(lambda: call(server, "GET", "/api/state")["summary"]["running"] > 0, 60, 0.1):
        raise Unmeasured("the batch for the API load did not start rendering within 60 s")
    # The replies under test are right: the state of the whole batch, and the page.
    state = call(server, "GET", "/api/state")
    if len(state["items"]) != items or not state["running"]:
        raise Unmeasured(f"GET /api/state lists {len(state['items'])} items (expected {items}), running {state['running']}")
    page = server.request("GET", "/")
    if page.status != 200 or b"<html" not in page.body[:2000].lower():
        raise Unmeasured(f"GET / answered {page.status or page.error}: {page.body[:200]!r}")
    result = {"items": items, "seconds": seconds, "connections": WRK_CONNECTIONS, "pause_ms": WRK_PAUSE_MS,
              "state_bytes": len(call_raw(server, "/api/state")), "page_bytes": len(page.body), "runs": {},
              "one_at_a_time_ms": {"state": one_at_a_time(server, "/api/state"), "page": one_at_a_time(server, "/")}}
    say(f"api: one request at a time: GET /api/state median {result['one_at_a_time_ms']['state']['median']:.2f} ms, "
        f"GET / {result['one_at_a_time_ms']['page']['median']:.2f} ms")
    for name, path in (("state", "/api/state"), ("page", "/")):
        before, restarted = keep_running(server)
        say(f"api: wrk {seconds} s on GET {path} ({before['summary']['succeeded']} of {items} items done, batch running)")
        with RssSampler(server.pid) as sampler:
            figures = run_wrk(f"http://127.0.0.1:{server.port}{path}", seconds, script)
        after = call(server, "GET", "/api/state")
        figures.update(rss_before_mib=sampler.idle / 1024, rss_peak_mib=sampler.peak / 1024, rss_after_mib=sampler.last / 1024,
                       batch_restarted_before=restarted, running_after=after["running"],
                       succeeded_before=before["summary"]["succeeded"], succeeded_after=after["summary"]["succeeded"])
        result["runs"][name] = figures
        say(f"api: GET {path}: {figures['rate']:.1f} req/s, p50 {figures['p50_us'] / 1000:.2f} ms, "
            f"p99 {figures['p99_us'] / 1000:.2f} ms, max {figures['max_us'] / 1000:.2f} ms")
    call(server, "POST", "/api/batch/stop", expect=(202,))
    return result


def one_at_a_time(server: Server, path: str, count: int = 20) -> dict:
    """`count` GETs one after the other, each on a new connection: their latency in ms."""
    times = []
    for _ in range(count):
        start = time.perf_counter()
        call_raw(server, path)
        times.append((time.perf_counter() - start) * 1000)
    return {"median": statistics.median(times), "min": min(times), "max": max(times)}


def call_raw(server: Server, path: str) -> bytes:
    reply = server.request("GET", path)
    if reply.status != 200:
        raise Unmeasured(f"GET {path} answered {reply.status or reply.error}")
    return reply.body


# ---------------------------------------------------------------------------------------
# Media for the batches


def make_media(folder: Path, count: int) -> tuple[Path, list[Path]]:
    """A narration and `count` distinct one-second templates (kept between runs): one
    template made by ffmpeg, and copies that each end with a top-level MP4 `free` box
    holding their number (valid MP4, other content, so another item key)."""
    folder.mkdir(parents=True, exist_ok=True)
    audio = folder / "narration.wav"
    if not audio.exists():
        harness.narration(folder)
    base = folder / "template-base.mp4"
    if not base.exists():
        temporary = folder / f".template-base.tmp{os.getpid()}.mp4"
        harness.template(temporary)
        temporary.rename(base)
    data = base.read_bytes()
    (folder / "templates").mkdir(exist_ok=True)
    videos = []
    for index in range(count):
        path = folder / "templates" / f"template-{index:03d}.mp4"
        if not path.exists():
            temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
            temporary.write_bytes(data + struct.pack(">I4sQ", 16, b"free", index))
            temporary.rename(path)
        videos.append(path)
    return audio, videos


def measure_batches(binary: str, folder: Path, media: Path, ws_items: int, api_items: int, wrk_seconds: int) -> dict:
    say(f"batch: {api_items} templates and a narration (ffmpeg, espeak-ng; kept in {media})")
    audio, videos = make_media(media, api_items)
    folder.mkdir(parents=True)
    workspace = folder / "ws"
    server = start_server(binary, workspace, folder / "logs")
    result: dict = {}
    try:
        upload_file(server, "audio", audio)
        for video in videos[:ws_items]:
            upload_file(server, "videos", video)
        settings = call(server, "PUT", "/api/settings", {"engine": "test", "engineParams": {"delay": str(ENGINE_DELAY)}})
        if settings["settings"]["engine"] != "test":
            raise Unmeasured(f"the engine could not be set to test: {settings}")
        for pages in (1, PAGES):
            say(f"websocket: batch of {ws_items} items with {pages} page{'s' if pages > 1 else ''} connected")
            run = render_with_pages(server, workspace, pages, ws_items)
            result[f"ws_{pages}"] = run
            socket_ms = run["latency_at_socket"]
            say(f"websocket: {pages} pages: {run['deliveries']} deliveries in {run['batch_seconds']:.1f} s, "
                f"p50 {socket_ms['p50_ms']:.2f} ms, p99 {socket_ms['p99_ms']:.2f} ms, max {socket_ms['max_ms']:.2f} ms"
                + (f"; PROBLEMS: {run['problems']}" if run["problems"] else ""))
        say(f"api: uploading {api_items - ws_items} more templates ({api_items} in the batch)")
        for video in videos[ws_items:]:
            upload_file(server, "videos", video)
        result["api"] = measure_api(server, api_items, wrk_seconds, folder)
    finally:
        shut(server)
    return result


# ---------------------------------------------------------------------------------------
# The report


def size_label(mib: int) -> str:
    return f"{mib // 1024} GiB" if mib % 1024 == 0 else f"{mib} MiB"


def command_line() -> str:
    python = "python3"
    if Path(sys.prefix).resolve() == (ROOT / ".venv").resolve():
        python = ".venv/bin/python"
    prefix = ""
    binary = os.environ.get("TALKIE_BINARY")
    if binary:
        with contextlib.suppress(ValueError):
            binary = str(Path(binary).resolve().relative_to(ROOT))
        prefix = f"TALKIE_BINARY={shlex.quote(binary)} "
    return f"{prefix}{python} Benchmarks/studio.py {shlex.join(sys.argv[1:])}".rstrip()


def report(results: dict, problems: list[str], quick: bool) -> str:
    rows, notes = [], []
    upload = results.get("upload")
    if upload and upload.get("upload_mib_s"):
        size = size_label(upload["size_mib"])
        runs = upload["runs"]
        label = f"median of {runs}, min–max" if runs > 1 else "1 run"
        cat = statistics.median(upload["cat_mib_s"])
        baseline = f"`cat` to disk: {spread(upload['cat_mib_s'])}"
        for key, what in (("upload_mib_s", f"upload {size} (`curl -T`), MiB/s ({label})"),
                          ("upload_no_expect_mib_s", f"upload {size}, `curl -T -H 'Expect:'`, MiB/s ({label})")):
            value = statistics.median(upload[key]) / cat
            rows.append([what, spread(upload[key]), baseline, ratio(value), "≥ 0.5×", met(value >= 0.5)])
        growth = upload["rss_peak_mib"] - upload["rss_idle_mib"]
        rows.append(["server RSS during the uploads, MiB (idle → peak)",
                     f"{sig(upload['rss_idle_mib'])} → {sig(upload['rss_peak_mib'])}", "–", "–",
                     f"flat (< +{FLAT_MIB} MiB)", met(growth < FLAT_MIB)])
        waited = [value for value in upload["curl_waited_for_100_continue"] if value is not None]
        if waited:
            notes.append(f"The server never answers `Expect: 100-continue` (curl sends it for bodies over 1 MiB): in "
                         f"{len(waited)} of {len(upload['curl_waited_for_100_continue'])} `curl -T` uploads curl waited "
                         f"{min(waited):.2f}{'' if f'{min(waited):.2f}' == f'{max(waited):.2f}' else f'–{max(waited):.2f}'} s for a `100 Continue` before sending the body anyway "
                         f"(`curl -v --trace-time`: \"Done waiting for 100-continue\"); that wait is in the first row. "
                         f"Browsers do not send the header; the second row suppresses it.")
        notes.append(f"Upload server RSS: {sig(upload['rss_idle_mib'])} MiB idle → {sig(upload['rss_peak_mib'])} MiB peak "
                     f"(+{sig(growth, 3)} MiB) over {2 * runs} uploads of {size}, sampled every 50 ms; every reply "
                     f"had the file's size and a new key, and each upload was deleted (DELETE) before the next.")
    ws1, ws50 = results.get("ws_1"), results.get(f"ws_{PAGES}")
    if ws1 and ws50:
        one, many = ws1["latency_at_socket"], ws50["latency_at_socket"]
        for key, what, target, check in (("p50_ms", "p50", "–", None), ("p99_ms", "p99", "< 50 ms", lambda v: v < 50),
                                         ("max_ms", "max", "–", None)):
            rows.append([f"WebSocket event latency, {PAGES} pages, {what} ms", sig(many[key]), f"1 page: {sig(one[key])}",
                         ratio(many[key] / one[key] if one[key] > 0 else None), target,
                         met(check(many[key]) if check else None)])
        ok = not ws1["problems"] and not ws50["problems"]
        notes.append(f"WebSocket: the batch of {ws50['items']} one-second templates (test engine, {ENGINE_DELAY * 1000:.0f} ms "
                     f"per progress step) sent {ws50['events_per_page']} events ({', '.join(f'{v} {k}' for k, v in ws50['events_by_name'].items())}); "
                     f"{ws50['deliveries']} deliveries to {PAGES} pages, {ws1['deliveries']} to 1 page"
                     + ("; every page received every event, in the same order, and every line the run log got for the batch"
                        if ok else f"; NOT every page received every event: {ws1['problems'] + ws50['problems']}") + ".")
        client = ws50["latency_at_client_read"]
        slow = ", ".join(f"{count} {name}" for name, count in sorted(ws50["over_p99_by_event"].items(), key=lambda pair: -pair[1]))
        notes.append(f"Latency = the kernel's receive timestamp of the frame at the page's socket − the event's `time` "
                     f"(millisecond resolution, so ±1 ms; smallest value {sig(min(ws1['latency_at_socket']['min_ms'], many['min_ms']), 3)} ms). "
                     f"Read by this single-threaded Python client instead, the {PAGES}-page p99 is {sig(client['p99_ms'])} ms "
                     f"(max {sig(client['max_ms'])} ms): that includes decoding the 50 sockets one after the other. "
                     f"The {PAGES}-page deliveries above the p99: {slow or 'none'}; the slowest event "
                     f"({ws50['slowest_event']['event']}, {sig(ws50['slowest_event']['latency_ms'])} ms) reached all {PAGES} pages "
                     f"within {sig(ws50['slowest_event']['spread_ms'], 3)} ms of each other"
                     + (", so it was late before the fan-out (the runner stamps an event, writes the run log, then publishes it)"
                        if ws50['slowest_event']['spread_ms'] < 0.2 * ws50['slowest_event']['latency_ms'] else "")
                     + f"; fan-out from the first page to the "
                     f"last: median {sig(ws50['fanout_spread']['p50_ms'], 3)} ms, p99 {sig(ws50['fanout_spread']['p99_ms'], 3)} ms. "
                     f"Server RSS {sig(ws50['rss_idle_mib'])} → {sig(ws50['rss_peak_mib'])} MiB with {PAGES} pages; batch "
                     f"{sig(ws1['batch_seconds'], 3)} s with 1 page, {sig(ws50['batch_seconds'], 3)} s with {PAGES}.")
    api = results.get("api")
    if api and "state" in api["runs"] and "page" in api["runs"]:
        state, page = api["runs"]["state"], api["runs"]["page"]
        for key, what, target, check in (("p50_us", "p50", "–", None), ("p99_us", "p99", "< 20 ms", lambda v: v < 20),
                                         ("max_us", "max", "–", None)):
            value, base = state[key] / 1000, page[key] / 1000
            rows.append([f"`GET /api/state`, {api['items']}-item batch rendering, wrk paced ≤ 200 req/s, {what} ms", sig(value),
                         f"`GET /` (static page): {sig(base)}", ratio(value / base if base > 0 else None), target,
                         met(check(value) if check else None)])
        running = all(run["running_after"] and not run["batch_restarted_before"] for run in (state, page))
        single = api["one_at_a_time_ms"]
        notes.append(f"wrk: {api['connections']} connections, each pausing {api['pause_ms']} ms after every response (Lua `delay()`), "
                     f"{api['seconds']} s per run: {sig(state['rate'])} req/s achieved on `/api/state` ({state['requests']:.0f} requests, "
                     f"{api['state_bytes']} bytes each), {sig(page['rate'])} req/s on `/` ({api['page_bytes']} bytes); no errors. "
                     f"wrk 4.1 is closed-loop: a slow server gets fewer requests, latencies exclude the pause and are not "
                     f"corrected for coordinated omission. One request at a time (20, new connection each, same batch "
                     f"running): `GET /api/state` {sig(single['state']['median'])} ms median, `GET /` {sig(single['page']['median'])} ms.")
        notes.append(f"The batch ({api['items']} templates, test engine) was "
                     + ("rendering throughout both runs" if running else "not rendering throughout (restarted or ended; see studio.json)")
                     + f": items done {state['succeeded_before']} → {state['succeeded_after']} during `/api/state`, "
                     f"{page['succeeded_before']} → {page['succeeded_after']} during `/`. Server RSS "
                     f"{sig(state['rss_before_mib'])} MiB before, peak {sig(max(state['rss_peak_mib'], page['rss_peak_mib']))}, "
                     f"{sig(page['rss_after_mib'])} after.")
    notes.append(f"Load average at the start: {results['loadavg']} on {os.cpu_count()} cores (shared machine: figures are noisy).")
    for problem in problems:
        notes.append(f"**Not measured:** {problem}")

    what = "quick mode (tiny sizes, proves the benchmark runs; the figures mean little): " if quick else ""
    lines = ["## The studio (`talkie serve`)", "",
             f"`{command_line()}` — {what}uploads through the server against `cat` to the same disk; event latency to "
             f"{PAGES} WebSocket pages during a batch against 1 page; `GET /api/state` under a `wrk` load paced at ≤ 200 req/s "
             f"during a batch against the static page `GET /` of the same server.", "",
             "| measure | Talkie | baseline | ratio | target | met |",
             "|---|---:|---:|---:|---|:-:|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines.append("")
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (about a minute): proves the benchmark still runs")
    parser.add_argument("--out", type=Path, required=True, help="folder for studio.md and studio.json")
    parser.add_argument("--work", type=Path, default=Path("/tmp/talkie-studio-bench"), help="scratch folder (media kept for reruns)")
    args = parser.parse_args()
    binary = os.environ.get("TALKIE_BINARY", str(ROOT / ".build" / "release" / "talkie"))
    if not Path(binary).exists():
        parser.error(f"no talkie binary at {binary}: build it (swift build -c release) or set TALKIE_BINARY")
    for tool in ("curl", "wrk", "ffmpeg", "espeak-ng"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed (apt-get install {tool})")
    quick = args.quick
    size_mib, upload_runs = (64, 1) if quick else (2048, 3)
    ws_items, api_items, wrk_seconds = (3, 8, 3) if quick else (15, 100, 30)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    for name in ("upload", "batch"):
        shutil.rmtree(args.work / name, ignore_errors=True)

    results: dict = {"mode": "quick" if quick else "full", "binary": binary, "command": command_line(),
                     "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
                     "machine": {"cores": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
                     "started": datetime.now().astimezone().isoformat(timespec="seconds")}
    problems = []
    say(f"{results['mode']} mode, binary {binary}, scratch {args.work}")
    try:
        results["upload"] = measure_upload(binary, args.work / "upload", size_mib, upload_runs)
    except (Unmeasured, subprocess.CalledProcessError, OSError, ValueError, KeyError) as error:
        problems.append(f"upload: {error}")
        say(f"upload: NOT MEASURED: {error}")
    try:
        results.update(measure_batches(binary, args.work / "batch", args.work / "media", ws_items, api_items, wrk_seconds))
    except (Unmeasured, subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError, ValueError, KeyError,
            websocket.WebSocketException) as error:
        problems.append(f"batch (WebSocket, API): {error}")
        say(f"batch: NOT MEASURED: {error}")
    for name in ("ws_1", f"ws_{PAGES}"):
        if name in results and results[name]["problems"]:
            problems.append(f"WebSocket with {results[name]['pages']} page(s): " + "; ".join(results[name]["problems"]))
    results["problems"] = problems
    results["seconds"] = time.monotonic() - STARTED
    (args.out / "studio.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "studio.md").write_text(report(results, problems, quick))
    say(f"wrote {args.out / 'studio.md'} and studio.json in {results['seconds']:.0f} s"
        + (f"; {len(problems)} thing(s) not measured" if problems else ""))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
