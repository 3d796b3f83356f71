"""Shared fixtures: sample media generated once per session, a live worker."""
from __future__ import annotations

import collections
import json
import os
import queue
import subprocess
import sys
import threading
import time

import pytest

ENGINES = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSIC = os.path.join(ENGINES, "classic")
for p in (ENGINES, CLASSIC):
    if p not in sys.path:
        sys.path.insert(0, p)

import media_samples  # noqa: E402

TEMPLATE_SECONDS = 3.0


@pytest.fixture(scope="session")
def media(tmp_path_factory):
    """Small sample media: 3 s templates (close-up 512, wide, no face, a 1.2 s close-up) and narrations."""
    d = str(tmp_path_factory.mktemp("media"))
    media_samples.generate(d, seconds=TEMPLATE_SECONDS, templates=("closeup-512", "wide-512", "noface-512"),
                           narrations=False)
    short = os.path.join(d, "templates", "closeup-512-short.mp4")
    media_samples.render_template(short, "closeup-512", 1.2)
    media_samples.synth_speech(os.path.join(d, "narration-en.wav"), "en-us", media_samples.ENGLISH_TEXT, 4.0)
    media_samples.synth_speech(os.path.join(d, "narration-zh.wav"), "cmn-latn-pinyin",
                               media_samples.MANDARIN_TEXT, 2.0)
    return {
        "dir": d,
        "closeup": os.path.join(d, "templates", "closeup-512.mp4"),
        "wide": os.path.join(d, "templates", "wide-512.mp4"),
        "noface": os.path.join(d, "templates", "noface-512.mp4"),
        "short": short,
        "en": os.path.join(d, "narration-en.wav"),
        "zh": os.path.join(d, "narration-zh.wav"),
    }


class Worker:
    """A real worker subprocess speaking the JSON-lines protocol: the classic engine's unless `script` names another.

    env: entries added to the environment, after the keys in `unset` are removed from it; python_args: options
    for the interpreter (e.g. "-u"); timeout: the default seconds recv and render wait for a message.
    The worker's stderr is drained in binary chunks and only a bounded tail kept, so that a worker flooding it
    cannot eat the tests' memory: `err_tail` (the last lines, each cut short), `err_bytes` (every byte read)
    and `stderr` (the tail as one str). render records the seconds it took in `last_seconds`.
    """

    TAIL_LINES = 300   # lines of stderr kept
    LINE_BYTES = 300   # bytes kept of each of them

    def __init__(self, script: str | None = None, env: dict | None = None, unset=(), python_args=(),
                 timeout: float = 180.0):
        environ = dict(os.environ)
        for key in unset:
            environ.pop(key, None)
        environ.update(env or {})
        self.timeout = timeout
        self.proc = subprocess.Popen([sys.executable, *python_args, script or os.path.join(CLASSIC, "worker.py")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=environ)
        self.lines: queue.Queue = queue.Queue()
        self.err_tail: collections.deque = collections.deque(maxlen=self.TAIL_LINES)
        self.err_bytes = 0
        self._err_lock = threading.Lock()
        self.last_seconds: float | None = None
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _pump_err(self):
        rest = b""
        while True:
            chunk = self.proc.stderr.read1(65536)
            if not chunk:
                break
            parts = (rest + chunk).split(b"\n")
            rest = parts.pop()[-4096:]
            with self._err_lock:
                self.err_bytes += len(chunk)
                self.err_tail.extend(self._cut(p) for p in parts[-self.TAIL_LINES:])
        if rest:
            with self._err_lock:
                self.err_tail.append(self._cut(rest))

    def _cut(self, line: bytes) -> str:
        return line[:self.LINE_BYTES].decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        with self._err_lock:
            return "\n".join(self.err_tail)

    def stderr_once_it_has(self, text: str, timeout: float = 10.0) -> str:
        """The stderr tail, once `text` is in it (or `timeout` has passed). stdout and stderr
        are separate pipes read by separate threads: a line the worker logged before its
        final message may still be on its way when that message arrives."""
        deadline = time.monotonic() + timeout
        while text not in self.stderr and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.stderr

    def recv(self, timeout: float | None = None):
        line = self.lines.get(timeout=self.timeout if timeout is None else timeout)
        if line is None:
            return None
        # every stdout line must be a protocol message
        msg = json.loads(line)
        assert isinstance(msg, dict) and "type" in msg, line
        return msg

    def send(self, msg: dict):
        self.proc.stdin.write((json.dumps(msg) + "\n").encode())
        self.proc.stdin.flush()

    def render(self, req: dict, timeout: float | None = None):
        """Send a render request; returns (final message, all messages for it); the seconds in last_seconds."""
        t0 = time.monotonic()
        self.send(dict(req, type="render"))
        seen = []
        while True:
            msg = self.recv(timeout)
            assert msg is not None, "worker exited: " + self.stderr[-3000:]
            seen.append(msg)
            if msg.get("type") in ("done", "error"):
                assert msg.get("id") == req["id"]
                self.last_seconds = time.monotonic() - t0
                return msg, seen

    def close(self, timeout: float = 15.0):
        if self.proc.poll() is None:
            try:
                self.send({"type": "shutdown"})
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def worker():
    w = Worker()
    hello = w.recv(timeout=90)
    assert hello is not None, w.stderr
    w.hello = hello
    yield w
    w.close()


def ffprobe_duration(path: str, stream: str | None = None) -> float:
    args = ["ffprobe", "-v", "error"]
    if stream:
        args += ["-select_streams", stream, "-show_entries", "stream=duration"]
    else:
        args += ["-show_entries", "format=duration"]
    out = subprocess.run(args + ["-of", "default=nw=1:nk=1", path], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[0])


def ffprobe_streams(path: str) -> list[dict]:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,codec_name,pix_fmt,"
                          "width,height,nb_frames", "-of", "json", path],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["streams"]
