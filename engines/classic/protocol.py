"""The worker side of Talkie's engine protocol (docs/engine-protocol.md).

stdout carries protocol lines only.  Native libraries (mediapipe, absl, TFLite)
print to fd 1 and 2 on their own, so :func:`claim_stdout` moves the real stdout
to a private descriptor and points fd 1 at stderr before they are imported.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import traceback

PROTOCOL = 1


class Channel:
    """Thread-safe writer of protocol messages (one JSON object per line)."""

    def __init__(self, fd: int):
        self._f = os.fdopen(fd, "w", encoding="utf-8", buffering=1, newline="\n")
        self._lock = threading.Lock()

    def send(self, msg: dict) -> None:
        line = json.dumps(msg, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        with self._lock:
            self._f.write(line + "\n")
            self._f.flush()

    # helpers ---------------------------------------------------------------
    def hello(self, name: str, version: str, capabilities: dict) -> None:
        self.send({"type": "hello", "protocol": PROTOCOL, "name": name, "version": version,
                   "capabilities": capabilities})

    def fatal(self, message: str) -> None:
        self.send({"type": "fatal", "message": message})

    def progress(self, rid: str, frame: int, frames: int) -> None:
        self.send({"type": "progress", "id": rid, "frame": int(frame), "frames": int(frames)})

    def done(self, rid: str, frames: int, score: float | None) -> None:
        msg = {"type": "done", "id": rid, "frames": int(frames)}
        if score is not None:
            msg["score"] = round(float(score), 4)
        self.send(msg)

    def error(self, rid: str, kind: str, message: str) -> None:
        self.send({"type": "error", "id": rid, "kind": kind, "message": message})

    def log(self, rid: str | None, message: str, level: str = "info") -> None:
        msg = {"type": "log", "level": level, "message": message}
        if rid is not None:
            msg["id"] = rid
        self.send(msg)


def claim_stdout() -> Channel:
    """Keep the real stdout for protocol messages; send everything else to stderr."""
    sys.stdout.flush()
    proto_fd = os.dup(1)
    os.dup2(2, 1)  # anything a library prints on fd 1 now lands on stderr
    sys.stdout = sys.stderr
    os.set_inheritable(proto_fd, False)  # ffmpeg children never see the protocol pipe
    return Channel(proto_fd)


def read_messages(stream):
    """Yield decoded JSON objects from `stream`; bad lines are reported on stderr."""
    for raw in stream:
        line = raw.strip()
        if not line:
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            print(f"classic: ignoring a line that is not JSON: {line[:200]!r}", file=sys.stderr, flush=True)
            continue
        if not isinstance(msg, dict):
            print(f"classic: ignoring a message that is not an object: {line[:200]!r}", file=sys.stderr,
                  flush=True)
            continue
        yield msg


def serve(chan: Channel, name: str, render, input_error: type, transient_error: type | None = None) -> int:
    """Answer render requests from stdin until `shutdown` or end of input.

    `render(msg)` returns (frames, score or None); an `input_error` it raises is the
    item's fault (kind "input"), anything else is "transient". A `transient_error` is
    reported with its message alone (it was written for the user); any other exception
    with its type name, since it was not. The worker lives on.
    """
    for msg in read_messages(sys.stdin):
        typ = msg.get("type")
        if typ == "shutdown":
            break
        if typ != "render":
            print(f"{name}: ignoring message type {typ!r}", file=sys.stderr, flush=True)
            continue
        rid = msg.get("id")
        try:
            frames, score = render(msg)
            chan.done(rid, frames, score)
        except input_error as e:
            print(f"{name}[{rid}]: input error: {e}", file=sys.stderr, flush=True)
            chan.error(rid, "input", str(e))
        except MemoryError:
            chan.error(rid, "transient", "out of memory")
        except Exception as e:  # noqa: BLE001
            if transient_error is None or not isinstance(e, transient_error):
                traceback.print_exc()
                chan.error(rid, "transient", f"{type(e).__name__}: {e}")
                continue
            print(f"{name}[{rid}]: transient error: {e}", file=sys.stderr, flush=True)
            chan.error(rid, "transient", str(e))
    return 0
