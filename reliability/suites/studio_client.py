"""A `talkie serve` process under test and a small HTTP client for it, shared by the
security and server_kills suites.

The client speaks HTTP/1.1 over a raw socket so a suite controls every byte of a request
(the path is sent exactly as given: `../`, `%2e%2e`, NUL, overlong UTF-8 ...). It is not a
general HTTP client: it reads a `Content-Length` or chunked body, or until the server
closes, and caps what it keeps in memory.
"""
from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import harness

# Responses are kept up to this size; more is read and counted, not kept.
KEEP_BYTES = 4 << 20


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class Reply:
    """A parsed HTTP response (or `status` 0 when the server closed without one)."""

    status: int
    reason: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    raw: bytes = b""  # everything received (capped): head and body as sent
    received: int = 0  # bytes received in all
    error: str = ""  # why no complete response came (reset, timeout ...)

    def json(self) -> dict:
        return json.loads(self.body.decode("utf-8", errors="replace"))

    def error_code(self) -> str:
        with contextlib.suppress(Exception):
            return self.json()["error"]["code"]
        return ""


class Server:
    """One `talkie serve` on a workspace, in its own session, output to files."""

    def __init__(self, ctx: harness.Context, workspace: Path, log_folder: Path, host: str = "127.0.0.1",
                 port: int | None = None, extra_args: list[str] | None = None, env: dict[str, str] | None = None,
                 cwd: Path | None = None):
        self.ctx = ctx
        self.workspace = workspace
        self.host = host
        self.port = port or free_port("127.0.0.1")
        self.args = ["serve", "--workspace", str(workspace), "--host", host, "--port", str(self.port), *(extra_args or [])]
        self.env = env or ctx.env()
        self.log_folder = log_folder
        self.cwd = cwd
        self.process: subprocess.Popen | None = None
        self.starts = 0

    @property
    def connect_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "localhost") else self.host

    def start(self, seconds: float = 30) -> None:
        """Starts the server and waits until it accepts connections; raises when it does not."""
        self.starts += 1
        self.stdout_path = self.log_folder / f"serve-{self.starts}.out"
        self.stderr_path = self.log_folder / f"serve-{self.starts}.err"
        with open(self.stdout_path, "wb") as stdout, open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen([harness.talkie_bin(), *self.args], stdin=subprocess.DEVNULL, stdout=stdout,
                                            stderr=stderr, env=self.env, cwd=self.cwd,
                                            start_new_session=True)
        # The banner is printed once the socket listens.
        if not harness.wait_for(lambda: b"Talkie studio:" in self.stdout_path.read_bytes() or self.process.poll() is not None, seconds):
            self.kill()
            raise RuntimeError(f"talkie serve did not start within {seconds:.0f} s: {self.stderr_tail()}")
        if self.process.poll() is not None:
            raise RuntimeError(f"talkie serve exited {self.process.returncode} at start: {self.stderr_tail()}")

    def stderr_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.stderr_path.read_text(errors="replace")[-800:]
        return ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def rss_kib(self) -> int:
        """The server's resident memory (VmRSS) in KiB; 0 when it is gone."""
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def kill(self) -> None:
        """SIGKILL to the server's process group (the server and anything in its group)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)

    def stop(self, seconds: float = 20) -> bool:
        """SIGTERM and wait; SIGKILL after `seconds`. True when it stopped on SIGTERM."""
        if not self.alive():
            return True
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=seconds)
            return True
        except subprocess.TimeoutExpired:
            self.kill()
            return False

    # -- requests -------------------------------------------------------------------------

    def request(self, method: str, target: bytes | str, body: bytes | None = None, headers: dict[str, str] | None = None,
                host_header: str | None = None, timeout: float = 20) -> Reply:
        """One request on a fresh connection; `target` is sent byte for byte."""
        return raw_request(self.connect_host, self.port, method, target, body=body, headers=headers,
                           host_header=host_header if host_header is not None else f"{self.connect_host}:{self.port}",
                           timeout=timeout)

    def api(self, method: str, path: str, payload: object | None = None, token: str | None = None,
            timeout: float = 20) -> Reply:
        """A JSON API call."""
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        body = json.dumps(payload).encode() if payload is not None else (b"" if method in ("POST", "PUT") else None)
        return self.request(method, path, body=body, headers=headers, timeout=timeout)

    def upload(self, kind: str, file: Path, name: str, token: str | None = None, timeout: float = 60) -> Reply:
        """POST /api/inputs/{kind}?name=... with the file's bytes."""
        from urllib.parse import quote
        headers = {"Content-Type": "application/octet-stream"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return self.request("POST", f"/api/inputs/{kind}?name={quote(name)}", body=file.read_bytes(), headers=headers,
                            timeout=timeout)


def raw_request(host: str, port: int, method: str, target: bytes | str, body: bytes | None = None,
                headers: dict[str, str] | None = None, host_header: str | None = None, timeout: float = 20) -> Reply:
    """Sends one HTTP/1.1 request exactly as given and reads the response."""
    if isinstance(target, str):
        target = target.encode("utf-8", errors="surrogateescape")
    lines = [method.encode() + b" " + target + b" HTTP/1.1"]
    if host_header is not None:
        lines.append(b"Host: " + host_header.encode("latin-1"))
    headers = dict(headers or {})
    names = {name.lower() for name in headers}
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        headers["Content-Length"] = str(len(body))
    if "connection" not in names:
        headers["Connection"] = "close"
    for name, value in headers.items():
        lines.append(f"{name}: {value}".encode("latin-1"))
    data = b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as error:
        return Reply(0, error=f"connect: {error}")
    with sock:
        try:
            sock.sendall(data)
        except OSError as error:
            # The server may answer (413) and close before reading everything.
            reply = read_reply(sock, timeout)
            reply.error = reply.error or f"send: {error}"
            return reply
        return read_reply(sock, timeout)


def read_reply(sock: socket.socket, timeout: float) -> Reply:
    """Reads a response until its body ends, the peer closes, or `timeout` passes."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    raw = bytearray()
    received = 0
    error = ""
    head_end = -1
    expected = None
    chunked = False
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            error = "timeout"
            break
        except OSError as failure:
            error = f"recv: {failure}"
            break
        if not chunk:
            break
        received += len(chunk)
        if len(raw) < KEEP_BYTES:
            raw += chunk[: KEEP_BYTES - len(raw)]
        if head_end < 0:
            head_end = raw.find(b"\r\n\r\n")
            if head_end >= 0:
                head = raw[:head_end].decode("latin-1").lower()
                for line in head.split("\r\n")[1:]:
                    if line.startswith("content-length:"):
                        expected = int(line.split(":", 1)[1])
                    if line.startswith("transfer-encoding:") and "chunked" in line:
                        chunked = True
        if head_end >= 0:
            if expected is not None and received - head_end - 4 >= expected:
                break
            if chunked and raw.endswith(b"0\r\n\r\n"):
                break
            if expected is None and not chunked and raw[:head_end].split(b" ")[1:2] in ([b"204"], [b"304"], [b"101"]):
                break
    else:
        error = error or "timeout"
    reply = Reply(0, raw=bytes(raw), received=received, error=error)
    if head_end < 0:
        return reply
    head = raw[:head_end].decode("latin-1").split("\r\n")
    parts = head[0].split(" ", 2)
    with contextlib.suppress(ValueError, IndexError):
        reply.status = int(parts[1])
        reply.reason = parts[2] if len(parts) > 2 else ""
    for line in head[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            reply.headers[name.strip().lower()] = value.strip()
    body = bytes(raw[head_end + 4:])
    if chunked:
        body = dechunk(body)
    reply.body = body
    return reply


def dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        line, _, rest = data.partition(b"\r\n")
        try:
            size = int(line.split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return bytes(out)


def stream_upload(host: str, port: int, target: str, total: int, host_header: str, chunked: bool = True,
                  content_length: str | None = None, headers: dict[str, str] | None = None,
                  timeout: float = 60, stall: float = 5, method: str = "POST") -> tuple[Reply, int]:
    """Streams `total` bytes (1 MiB blocks) as a request body, chunked or with the given
    Content-Length, stopping early when the server answers, closes, or stops reading for
    `stall` seconds. Returns the reply and how many body bytes were sent."""
    block = os.urandom(1 << 20)
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host_header}", "Content-Type: application/octet-stream", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {content_length if content_length is not None else total}")
    sent = 0
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((host, port), timeout=stall)
    except OSError as error:
        return Reply(0, error=f"connect: {error}"), 0
    with sock:
        try:
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            while sent < total and time.monotonic() < deadline:
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:  # the server answered (or closed) before the body ended
                    break
                size = min(len(block), total - sent)
                piece = block[:size]
                sock.sendall(b"%x\r\n%s\r\n" % (size, piece) if chunked else piece)
                sent += size
            else:
                if chunked and sent >= total:
                    sock.sendall(b"0\r\n\r\n")
        except OSError as error:  # a stalled send (the server stopped reading), a reset
            reply = read_reply(sock, 10)
            reply.error = reply.error or f"send: {error}"
            return reply, sent
        return read_reply(sock, max(1.0, deadline - time.monotonic())), sent
