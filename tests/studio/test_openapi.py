"""The studio's OpenAPI conformance test.

Checks docs/openapi.yaml itself, then starts the real server (`talkie serve`), drives every
endpoint of docs/studio-api.md with real requests on media this test makes (espeak-ng and
ffmpeg), and validates every request and response against docs/openapi.yaml with
openapi-core, and every WebSocket message against its component schema (a minimal RFC 6455
client over a socket: standard library only).

The binary: $TALKIE_BINARY, else .build/debug/talkie. Skipped only when that binary has no
`serve` subcommand. Run: .venv/bin/python -m pytest -q tests/studio/test_openapi.py

The tests of this file share one server and run in file order: a batch is uploaded, run,
stopped, skipped, retried, re-rendered, downloaded, submitted through face2face and reset.
Each test collects every disagreement with the spec (and with docs/studio-api.md) and fails
at its end with the whole list, so one run reports every mismatch, not only the first.
"""

import base64
import hashlib
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import zipfile
from pathlib import Path

import pytest
import yaml
from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate as validate_spec
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from werkzeug.datastructures import Headers, ImmutableMultiDict

REPO = Path(__file__).resolve().parents[2]
SPEC_PATH = REPO / "docs" / "openapi.yaml"
CONTRACT_PATH = REPO / "docs" / "studio-api.md"
BINARY = Path(os.environ.get("TALKIE_BINARY") or REPO / ".build" / "debug" / "talkie")
UPLOAD_CAP_MB = 1  # --max-upload-mb for the server under test: the 413 check stays small
KEY_RE = re.compile(r"^[0-9a-f]{32}$")
ITEM_KEY_RE = re.compile(r"^[0-9a-f]{32}-[0-9a-f]{32}$")
SPEC_URN = "urn:talkie:openapi"


def _has_serve():
    if not BINARY.exists():
        return False
    try:
        out = subprocess.run([str(BINARY), "--help"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return re.search(r"^\s+serve\b", out.stdout + out.stderr, re.M) is not None


# Skipped only when the binary exists without `serve`; a binary that is not built at all
# fails (in the server fixture) with the command that builds it.
needs_server = pytest.mark.skipif(
    BINARY.exists() and not _has_serve(), reason=f"{BINARY} has no `serve` subcommand yet (the studio is not built into it)")


# ----------------------------------------------------------------------------------------
# openapi-core plumbing: raw request/response objects that follow its protocols.

class RawRequest:
    """openapi_core.protocols.Request for one request sent over the wire."""

    def __init__(self, host_url, method, path, query=None, headers=None, body=None, content_type=""):
        self.host_url = host_url
        self.method = method.lower()
        self.path = path
        self.body = body
        self.content_type = (content_type or "").lower()
        headers = dict(headers or {})
        cookies = {}
        for name, value in headers.items():
            if name.lower() == "cookie":
                for part in value.split(";"):
                    if "=" in part:
                        k, v = part.strip().split("=", 1)
                        cookies[k] = v
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(list((query or {}).items())),
            header=Headers(list(headers.items())),
            cookie=ImmutableMultiDict(list(cookies.items())),
            path={},
        )


class RawResponse:
    """openapi_core.protocols.Response for one response read from the wire."""

    def __init__(self, status, headers, data):
        self.status_code = status
        self.headers = Headers(list(headers))
        self.data = data
        self.content_type = (self.headers.get("Content-Type") or "").lower()


def describe(error):
    """An openapi-core or jsonschema error as one readable line, with its schema errors."""
    parts = []
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = str(error).strip()
        schema_errors = getattr(error, "schema_errors", None)
        if schema_errors:
            details = []
            for e in schema_errors:
                where = "/".join(str(p) for p in e.absolute_path) or "(root)"
                details.append(f"at {where}: {e.message}")
                for sub in (e.context or [])[:6]:
                    sub_where = "/".join(str(p) for p in sub.absolute_path) or "(root)"
                    details.append(f"  · at {sub_where}: {sub.message}")
            text = f"{type(error).__name__}: " + "; ".join(details)
        elif text:
            text = f"{type(error).__name__}: {text}"
        else:
            text = type(error).__name__
        if text not in parts:
            parts.append(text)
        error = error.__cause__ or error.__context__
    return " <- ".join(parts)[:1500]


class Reply:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # list of (name, value)
        self.body = body

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def json(self):
        return json.loads(self.body)

    def error_code(self):
        try:
            return self.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            return None


class Client:
    """Sends requests to the server under test, validates each exchange against the spec,
    and collects every problem (spec or contract) for the test to report at its end."""

    def __init__(self, spec, port, token=None):
        self.spec = spec
        self.port = port
        self.host_url = f"http://127.0.0.1:{port}"
        self.token = token
        self.problems = []
        self.exchanges = 0

    # -- problems
    def problem(self, text):
        self.problems.append(text)

    def expect(self, condition, text):
        if not condition:
            self.problem(text)
        return condition

    def require(self, condition, text):
        """A hard stop: what follows cannot run; reports what was collected so far too."""
        if not condition:
            pending = "".join(f"\n  - {p}" for p in self.problems)
            self.problems = []
            pytest.fail(text + (f"\nalso found before this:{pending}" if pending else ""), pytrace=False)

    def check(self):
        problems, self.problems = self.problems, []
        if problems:
            pytest.fail(f"{len(problems)} mismatch(es) with docs/openapi.yaml / docs/studio-api.md:\n"
                        + "\n".join(f"  - {p}" for p in problems), pytrace=False)

    # -- validation
    def validate(self, request, response, label, request_valid=True):
        self.exchanges += 1
        try:
            self.spec.validate_request(request)
            if not request_valid:
                self.problem(f"{label}: the spec accepts this request, which the contract says is invalid")
        except Exception as error:  # noqa: BLE001 - openapi-core raises many kinds
            if request_valid:
                self.problem(f"{label}: the request does not match the spec: {describe(error)}")
        try:
            self.spec.validate_response(request, response)
        except Exception as error:  # noqa: BLE001
            body = (response.data or b"")[:300]
            self.problem(f"{label} → {response.status_code}: the response does not match the spec: "
                         f"{describe(error)} (body: {body!r})")

    # -- requests
    def call(self, method, path, query=None, json_body=None, body=None, headers=None, content_type=None,
             request_valid=True, validate=True, timeout=60):
        headers = dict(headers or {})
        if self.token and "Authorization" not in headers and "Cookie" not in headers:
            headers["Authorization"] = f"Bearer {self.token}"
        if json_body is not None:
            body = json.dumps(json_body).encode()
            content_type = content_type or "application/json"
        if content_type:
            headers["Content-Type"] = content_type
        # Query values percent-encoded as the page does (encodeURIComponent: a space is %20).
        target = path + ("?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote) if query else "")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, target, body=body, headers=headers)
            raw = conn.getresponse()
            data = raw.read()
            reply = Reply(raw.status, raw.getheaders(), data)
        finally:
            conn.close()
        if validate:
            request = RawRequest(self.host_url, method, urllib.parse.unquote(path), query, headers, body,
                                 headers.get("Content-Type", ""))
            self.validate(request, RawResponse(reply.status, reply.headers, data),
                          f"{method} {target[:120]}", request_valid)
        return reply

    def expect_status(self, reply, status, label, code=None):
        ok = self.expect(reply.status == status, f"{label}: expected HTTP {status}, got {reply.status} "
                                                 f"(body: {reply.body[:300]!r})")
        if ok and code is not None:
            self.expect(reply.error_code() == code,
                        f"{label}: expected error code {code!r}, got {reply.error_code()!r}")
        return ok

    def state(self):
        reply = self.call("GET", "/api/state")
        self.require(reply.status == 200, f"GET /api/state: expected 200, got {reply.status}: {reply.body[:300]!r}")
        return reply.json()

    def wait(self, predicate, what, timeout=180, interval=0.2):
        deadline = time.monotonic() + timeout
        state = self.state()
        while not predicate(state):
            if time.monotonic() > deadline:
                self.require(False, f"timed out after {timeout}s waiting for {what}; last state: "
                                    f"{json.dumps(state)[:1500]}")
            time.sleep(interval)
            state = self.state()
        return state


# ----------------------------------------------------------------------------------------
# A minimal RFC 6455 client (text frames, fragmentation, ping/pong, close).

class WebSocket:
    GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, port, path="/ws", headers=None, timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.key = base64.b64encode(os.urandom(16)).decode()
        self.request_headers = {
            "Host": f"127.0.0.1:{port}", "Upgrade": "websocket", "Connection": "Upgrade",
            "Sec-WebSocket-Key": self.key, "Sec-WebSocket-Version": "13", **(headers or {})}
        self.sock.sendall((f"GET {path} HTTP/1.1\r\n"
                           + "".join(f"{k}: {v}\r\n" for k, v in self.request_headers.items())
                           + "\r\n").encode())
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            buffer += chunk
        head, _, self.buffer = buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else 0
        self.headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:] if ":" in line]
        self.body = b""
        if self.status != 101:
            length = int(dict((k.lower(), v) for k, v in self.headers).get("content-length", "0") or 0)
            while len(self.buffer) < length:
                chunk = self.sock.recv(4096)
                if not chunk:
                    break
                self.buffer += chunk
            self.body = self.buffer[:length]
        self.closed = False

    def accept_ok(self):
        expected = base64.b64encode(hashlib.sha1((self.key + self.GUID).encode()).digest()).decode()
        return dict((k.lower(), v) for k, v in self.headers).get("sec-websocket-accept") == expected

    def _read(self, count):
        while len(self.buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the socket")
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def _send(self, opcode, payload=b""):
        mask = os.urandom(4)
        header = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 65536:
            header += bytes([0x80 | 126]) + n.to_bytes(2, "big")
        else:
            header += bytes([0x80 | 127]) + n.to_bytes(8, "big")
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def receive(self):
        """The next text message, or None when the server closes. Raises on protocol errors."""
        message, kind = b"", None
        while True:
            b0, b1 = self._read(2)
            fin, opcode = b0 & 0x80, b0 & 0x0F
            if b1 & 0x80:
                raise ValueError("the server masked a frame (RFC 6455 5.1 forbids it)")
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(self._read(2), "big")
            elif n == 127:
                n = int.from_bytes(self._read(8), "big")
            payload = self._read(n)
            if opcode == 0x8:
                if not self.closed:
                    try:
                        self._send(0x8, payload[:2])
                    except OSError:
                        pass
                self.closed = True
                return None
            if opcode == 0x9:
                self._send(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            if opcode in (0x1, 0x2):
                kind, message = opcode, payload
            elif opcode == 0x0:
                message += payload
            if fin:
                if kind == 0x2:
                    raise ValueError("the server sent a binary message; /ws sends JSON text")
                return message.decode("utf-8")

    def close(self):
        try:
            if not self.closed:
                self._send(0x8, (1000).to_bytes(2, "big"))
                self.closed = True
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


class WebSocketListener:
    """Collects every message of one /ws connection in a background thread."""

    def __init__(self, port, headers=None):
        self.ws = WebSocket(port, headers=headers)
        self.messages = []
        self.error = None
        self.ended = False
        self.condition = threading.Condition()
        if self.ws.status != 101:
            self.ended = True
        else:
            self.ws.sock.settimeout(None)
            self.thread = threading.Thread(target=self._run, daemon=True)
            self.thread.start()

    def _run(self):
        try:
            while True:
                text = self.ws.receive()
                if text is None:
                    break
                with self.condition:
                    self.messages.append(text)
                    self.condition.notify_all()
        except Exception as error:  # noqa: BLE001 - reported by the test
            if not self.ended:
                self.error = error
        finally:
            with self.condition:
                self.ended = True
                self.condition.notify_all()

    def wait_for(self, predicate, timeout=30):
        deadline = time.monotonic() + timeout
        with self.condition:
            while True:
                for text in self.messages:
                    try:
                        if predicate(json.loads(text)):
                            return True
                    except ValueError:
                        pass
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.ended:
                    return False
                self.condition.wait(remaining)

    def mark(self):
        with self.condition:
            return len(self.messages)

    def since(self, mark):
        with self.condition:
            texts = self.messages[mark:]
        return [json.loads(text) for text in texts]

    def wait_index(self, predicate, start=0, timeout=60):
        """The index of the first message at or after `start` that satisfies `predicate`, or None."""
        deadline = time.monotonic() + timeout
        with self.condition:
            index = start
            while True:
                while index < len(self.messages):
                    try:
                        if predicate(json.loads(self.messages[index])):
                            return index
                    except ValueError:
                        pass
                    index += 1
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.ended:
                    return None
                self.condition.wait(remaining)

    def close(self):
        self.ended = True
        self.ws.close()


# ----------------------------------------------------------------------------------------
# Fixtures (all inside this file: tests/studio/conftest.py belongs to other tests).

@pytest.fixture(scope="module")
def spec_dict():
    with open(SPEC_PATH, encoding="utf-8") as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def openapi():
    return OpenAPI.from_file_path(str(SPEC_PATH))


@pytest.fixture(scope="module")
def schema_validator(spec_dict):
    """Validates a value against one of the spec's component schemas (OpenAPI 3.1 dialect)."""
    resource = Resource.from_contents(spec_dict, default_specification=DRAFT202012)
    registry = Registry().with_resource(SPEC_URN, resource)

    def errors(value, component):
        validator = OAS31Validator({"$ref": f"{SPEC_URN}#/components/schemas/{component}"}, registry=registry,
                                   format_checker=OAS31Validator.FORMAT_CHECKER)
        return [f"at {'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
                for e in validator.iter_errors(value)]
    return errors


def _run(command):
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{command[0]} failed: {result.stderr[-800:]}"


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """A narration and three tiny template videos, made here."""
    for tool in ("espeak-ng", "ffmpeg"):
        assert shutil.which(tool), f"{tool} is needed to make the test media (scripts/setup.sh installs it)"
    folder = tmp_path_factory.mktemp("media")
    narration = folder / "narration.wav"
    _run(["espeak-ng", "-w", str(narration), "Hello from Talkie. This is the studio test."])
    videos = {}
    for name, source in (("a.mp4", "testsrc"), ("b.mp4", "testsrc2"), ("c.mp4", "smptebars")):
        path = folder / name
        _run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi",
              "-i", f"{source}=size=160x120:rate=25:duration=2",
              "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)])
        videos[name] = path
    for path in [narration, *videos.values()]:
        assert 0 < path.stat().st_size < UPLOAD_CAP_MB << 20, f"{path} does not fit the test's upload cap"
    return {"audio": narration, "videos": videos}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, workspace, log_path, extra=()):
        self.workspace = Path(workspace)
        self.log_path = log_path
        self.extra = tuple(extra)
        self.log = open(log_path, "wb")
        self._launch()

    def _launch(self):
        self.port = _free_port()
        self.process = subprocess.Popen(
            [str(BINARY), "serve", "--workspace", str(self.workspace), "--port", str(self.port),
             "--max-upload-mb", str(UPLOAD_CAP_MB), *self.extra],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(self.workspace.parent))

    def log_tail(self):
        try:
            return Path(self.log_path).read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def wait_ready(self, token=None, timeout=90):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"talkie serve exited with {self.process.returncode}:\n{self.log_tail()}", pytrace=False)
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/api/state", headers={"Authorization": f"Bearer {token}"} if token else {})
                status = conn.getresponse().status
                conn.close()
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        pytest.fail(f"talkie serve did not answer GET /api/state within {timeout}s:\n{self.log_tail()}", pytrace=False)

    def _terminate(self):
        """SIGTERM (graceful shutdown), and the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode

    def restart(self):
        """Stops the server (SIGTERM) and starts it again on the same workspace; its exit status."""
        status = self._terminate()
        self._launch()
        self.wait_ready()
        return status

    def stop(self):
        self._terminate()
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    assert BINARY.exists(), f"{BINARY} is not built: run `swift build` (or set TALKIE_BINARY)"
    root = tmp_path_factory.mktemp("studio")
    srv = Server(root / "workspace", root / "server.log")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def api(openapi, server):
    return Client(openapi, server.port)


@pytest.fixture(scope="module")
def live(server):
    """One /ws connection opened before anything is uploaded, kept for the whole module."""
    listener = WebSocketListener(server.port)
    yield listener
    listener.close()


@pytest.fixture(scope="module")
def shared():
    return {}


def _items_by_name(state):
    return {item["names"][0]: item for item in state["items"]}


# ----------------------------------------------------------------------------------------
# 1. The spec itself.

def test_spec_is_valid_openapi_3_1(spec_dict):
    validate_spec(spec_dict)  # openapi-spec-validator: raises with the reason
    assert str(spec_dict["openapi"]).startswith("3.1"), "docs/openapi.yaml must be OpenAPI 3.1"
    OpenAPI.from_file_path(str(SPEC_PATH))


def test_spec_covers_every_endpoint_of_the_contract(spec_dict):
    """Every `METHOD /path` of docs/studio-api.md is in the spec, and the spec adds no endpoint."""
    text = CONTRACT_PATH.read_text(encoding="utf-8")
    found = set()
    for method, path in re.findall(r"`(GET|POST|PUT|DELETE|PATCH) (/[^`\s?]*)", text):
        found.add((method.lower(), re.sub(r"\{[^}]+\}", "{}", path)))
    found.add(("get", "/ws"))  # "## WebSocket `/ws`"
    found.add(("get", "/"))  # "serves the page (`web/`) at `/`"
    in_spec = set()
    for path, item in spec_dict["paths"].items():
        for method in item:
            if method in ("get", "put", "post", "delete", "patch"):
                in_spec.add((method, re.sub(r"\{[^}]+\}", "{}", path)))
    assert found - in_spec == set(), f"in docs/studio-api.md but not in docs/openapi.yaml: {sorted(found - in_spec)}"
    assert in_spec - found == set(), f"in docs/openapi.yaml but not in docs/studio-api.md: {sorted(in_spec - found)}"
    # Every WebSocket message kind has a component schema.
    for name in ("WsMessage", "SnapshotMessage", "EventMessage", "RunEvent", "State", "ErrorEnvelope"):
        assert name in spec_dict["components"]["schemas"], f"components/schemas/{name} is missing"
    schemes = spec_dict["components"]["securitySchemes"]
    assert {(s["type"], s.get("scheme"), s.get("in"), s.get("name")) for s in schemes.values()} == {
        ("http", "bearer", None, None), ("apiKey", None, "cookie", "talkie_token"), ("apiKey", None, "query", "token")}


# ----------------------------------------------------------------------------------------
# 2. The server: page, empty state, errors.

@needs_server
def test_page_empty_state_and_errors(api, live, schema_validator):
    page = api.call("GET", "/")
    api.expect_status(page, 200, "GET /")
    api.expect((page.header("Content-Type") or "").startswith("text/html"),
               f"GET /: expected text/html, got {page.header('Content-Type')!r}")

    state = api.state()
    api.expect(state["audio"] is None, f"GET /api/state before any upload: audio should be null, got {state['audio']!r}")
    api.expect(state["items"] == [] and state["videos"] == [], "GET /api/state before any upload: items and videos should be empty")
    api.expect("test" in state["engines"], f"the test engine is not listed in engines: {state['engines']}")
    api.expect(state["running"] is False, "a fresh studio should not be running")

    reply = api.call("POST", "/api/batch/start")
    api.expect_status(reply, 400, "POST /api/batch/start without a narration", "batch.no_audio")

    zero_key = "0" * 32
    for method, path, label in (
            ("GET", f"/api/inputs/audio/{zero_key}", "an unknown audio key"),
            ("GET", f"/api/inputs/videos/{zero_key}", "an unknown video key"),
            ("DELETE", f"/api/inputs/videos/{zero_key}", "deleting an unknown video key"),
            ("GET", "/api/outputs/nothing-here.mp4", "an unknown output"),
            ("POST", f"/api/items/{zero_key}-{zero_key}/skip", "skipping an unknown item"),
            ("POST", "/api/items/not-a-key/skip", "skipping a malformed item key")):
        reply = api.call(method, path, request_valid="not-a-key" not in path)
        api.expect_status(reply, 404, f"{method} {path} ({label})")

    # "Every error: HTTP status + {"error": {...}}" -- also for a path the API does not have
    # (not in the spec, so checked against the error envelope's schema directly).
    reply = api.call("GET", "/api/no-such-endpoint", validate=False)
    api.expect_status(reply, 404, "GET /api/no-such-endpoint")
    try:
        problems = schema_validator(reply.json(), "ErrorEnvelope")
    except ValueError:
        problems = [f"the body is not JSON: {reply.body[:200]!r}"]
    api.expect(not problems, f"GET /api/no-such-endpoint → {reply.status}: the body is not the error envelope "
                             f"(docs/studio-api.md: every error is HTTP status + {{\"error\": {{code, message}}}}): {problems}")

    # The WebSocket opened before this test: its first message is a snapshot of this state.
    api.expect(live.ws.status == 101, f"GET /ws upgrade: expected 101, got {live.ws.status} ({live.ws.body[:200]!r})")
    api.expect(live.ws.accept_ok(), "GET /ws: wrong or missing Sec-WebSocket-Accept")
    api.validate(RawRequest(api.host_url, "GET", "/ws", headers=live.ws.request_headers),
                 RawResponse(live.ws.status, live.ws.headers, live.ws.body or None), "GET /ws (upgrade)")
    api.expect(live.wait_for(lambda m: True, timeout=10), "GET /ws: no message within 10 s of connecting")
    if live.messages:
        first = json.loads(live.messages[0])
        api.expect(first.get("type") == "snapshot", f"GET /ws: the first message should be a snapshot, got {live.messages[0][:200]}")
    api.check()


# ----------------------------------------------------------------------------------------
# 3. Uploads.

def _upload(api, kind, path, name):
    return api.call("POST", f"/api/inputs/{kind}", query={"name": name}, body=Path(path).read_bytes(),
                    content_type="application/octet-stream")


@needs_server
def test_uploads(api, server, media, shared):
    ws_root = server.workspace
    audio_bytes = media["audio"].read_bytes()
    reply = _upload(api, "audio", media["audio"], "narration.wav")
    api.require(reply.status == 201, f"POST /api/inputs/audio: expected 201, got {reply.status}: {reply.body[:300]!r}")
    audio = reply.json()
    api.expect(audio.get("name") == "narration.wav", f"audio upload: name should be 'narration.wav', got {audio.get('name')!r}")
    api.expect(audio.get("size") == len(audio_bytes), f"audio upload: size should be {len(audio_bytes)}, got {audio.get('size')!r}")
    audio_key = audio["key"]
    api.expect(KEY_RE.match(audio_key or "") is not None, f"audio upload: key {audio_key!r} is not 32 hex digits")
    api.expect((ws_root / "inputs" / "audio" / f"{audio_key}.wav").is_file(),
               f"the narration is not stored as inputs/audio/{audio_key}.wav (docs/studio-api.md, Workspace)")
    api.expect((ws_root / "inputs" / "manifest.json").is_file(), "inputs/manifest.json is missing")

    reply = api.call("POST", "/api/batch/start")
    api.expect_status(reply, 400, "POST /api/batch/start without templates", "batch.no_videos")

    keys = {}
    for name in ("a.mp4", "b.mp4"):
        reply = _upload(api, "videos", media["videos"][name], name)
        api.require(reply.status == 201, f"POST /api/inputs/videos {name}: expected 201, got {reply.status}: {reply.body[:300]!r}")
        answer = reply.json()
        api.expect(answer.get("duplicate") is False, f"{name}: first upload should say duplicate false, got {answer.get('duplicate')!r}")
        api.expect(answer.get("size") == media["videos"][name].stat().st_size, f"{name}: wrong size {answer.get('size')!r}")
        keys[name] = answer["key"]
        api.expect((ws_root / "inputs" / "videos" / f"{answer['key']}.mp4").is_file(),
                   f"{name} is not stored as inputs/videos/{answer['key']}.mp4")
    api.expect(not (ws_root / "inputs" / "videos" / "a.mp4").exists(), "an upload was stored under the client's file name")

    # The same content again, under another name: a duplicate, its name added.
    reply = _upload(api, "videos", media["videos"]["a.mp4"], "a copy.mp4")
    api.expect_status(reply, 201, "POST /api/inputs/videos (duplicate content)")
    if reply.status == 201:
        api.expect(reply.json().get("duplicate") is True, f"a duplicate upload should say duplicate true: {reply.json()}")
        api.expect(reply.json().get("key") == keys["a.mp4"], "a duplicate upload should answer the first upload's key")

    # An unsafe name is only a label: reduced to a safe base name.
    reply = _upload(api, "videos", media["videos"]["c.mp4"], "../../etc/.c.mp4")
    api.expect_status(reply, 201, "POST /api/inputs/videos (unsafe name)")
    c_key = reply.json().get("key") if reply.status == 201 else None
    if reply.status == 201:
        label = reply.json().get("name", "")
        api.expect("/" not in label and "\0" not in label and not label.startswith("."),
                   f"the name '../../etc/.c.mp4' should be reduced to a safe base name, got {label!r}")

    state = api.state()
    api.expect(state["audio"] and state["audio"]["key"] == audio_key, "state.audio does not show the uploaded narration")
    videos = {v["key"]: v for v in state["videos"]}
    api.expect(set(videos) == {keys["a.mp4"], keys["b.mp4"], c_key}, f"state.videos: expected the three uploads, got {list(videos)}")
    if keys["a.mp4"] in videos:
        api.expect(videos[keys["a.mp4"]]["names"] == ["a.mp4", "a copy.mp4"],
                   f"the duplicate's name should be added to its names: {videos[keys['a.mp4']]['names']}")
    api.expect(len(state["items"]) == 3, f"three templates × one narration should make 3 items, got {len(state['items'])}")
    for item in state["items"]:
        api.expect(item["key"].endswith("-" + audio_key) and ITEM_KEY_RE.match(item["key"]),
                   f"item key {item['key']!r} is not <video key>-<audio key>")
        api.expect(item["status"] == "pending", f"a new item should be pending: {item}")

    # Remove the third template: 204, then 404.
    reply = api.call("DELETE", f"/api/inputs/videos/{c_key}")
    api.expect_status(reply, 204, "DELETE /api/inputs/videos/{key}")
    reply = api.call("DELETE", f"/api/inputs/videos/{c_key}")
    api.expect_status(reply, 404, "DELETE /api/inputs/videos/{key} a second time")
    state = api.state()
    api.expect(len(state["items"]) == 2 and all(c_key not in i["key"] for i in state["items"]),
               "after DELETE the removed template's item should leave the batch")

    # Downloads of the inputs, whole and by range.
    for kind, key, original in (("audio", audio_key, audio_bytes),
                                ("videos", keys["b.mp4"], media["videos"]["b.mp4"].read_bytes())):
        path = f"/api/inputs/{kind}/{key}"
        reply = api.call("GET", path)
        if api.expect_status(reply, 200, f"GET {path}"):
            api.expect(reply.body == original, f"GET {path}: the bytes differ from the upload")
            api.expect(reply.header("Accept-Ranges") == "bytes", f"GET {path}: no Accept-Ranges: bytes")
        reply = api.call("GET", path, headers={"Range": "bytes=10-49"})
        if api.expect_status(reply, 206, f"GET {path} with Range: bytes=10-49"):
            api.expect(reply.body == original[10:50], f"GET {path} (Range): wrong bytes")
            api.expect(reply.header("Content-Range") == f"bytes 10-49/{len(original)}",
                       f"GET {path} (Range): Content-Range {reply.header('Content-Range')!r}")

    # Larger than --max-upload-mb: 413 with the error envelope, the body not read.
    _check_too_large(api, server)

    shared.update(audio_key=audio_key, keys=keys)
    api.check()


def _raw_exchange(port, head, body_chunks):
    """Sends a request by hand (the body may be cut off by the server) and reads the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head)
        try:
            for chunk in body_chunks:
                s.sendall(chunk)
        except OSError:
            pass  # the server may answer and close before the body is sent
        data = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
                if b"\r\n\r\n" in data:
                    head_part, _, rest = data.partition(b"\r\n\r\n")
                    m = re.search(rb"(?i)content-length:\s*(\d+)", head_part)
                    if m and len(rest) >= int(m.group(1)):
                        break
        except (socket.timeout, ConnectionResetError):
            pass
    head_part, _, rest = data.partition(b"\r\n\r\n")
    lines = head_part.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else 0
    headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:] if ":" in line]
    m = re.search(rb"(?i)content-length:\s*(\d+)", head_part)
    body = rest[: int(m.group(1))] if m else rest
    return status, headers, body


def _check_too_large(api, server):
    size = (UPLOAD_CAP_MB << 20) + 1
    block = b"\0" * (256 << 10)
    chunks = [block] * (size // len(block)) + [b"\0" * (size % len(block))]
    # With Content-Length (refused up front) and chunked (refused while streaming).
    for label, head, body in (
            ("Content-Length", f"POST /api/inputs/videos?name=big.mp4 HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                               f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n", chunks),
            ("chunked", f"POST /api/inputs/videos?name=big.mp4 HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                        "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
             [b"%x\r\n" % len(c) + c + b"\r\n" for c in chunks if c] + [b"0\r\n\r\n"])):
        status, headers, data = _raw_exchange(server.port, head.encode(), body)
        request = RawRequest(api.host_url, "POST", "/api/inputs/videos", {"name": "big.mp4"},
                             {"Content-Type": "application/octet-stream"}, b"\0", "application/octet-stream")
        api.validate(request, RawResponse(status, headers, data), f"POST /api/inputs/videos ({label}, {size} bytes)")
        if api.expect(status == 413, f"an upload over --max-upload-mb ({label}): expected 413, got {status} ({data[:200]!r})"):
            api.expect(Reply(status, headers, data).error_code() == "upload.too_large",
                       f"413 ({label}): expected code upload.too_large, got {data[:200]!r}")
    state = api.state()
    api.expect(not any("big.mp4" in v["names"] for v in state["videos"]), "a refused upload shows up in state.videos")


# ----------------------------------------------------------------------------------------
# 4. Settings.

@needs_server
def test_settings(api, shared):
    before = api.state()
    # The test engine, slowed to ~2 s an item (ten progress steps) so running is observable.
    reply = api.call("PUT", "/api/settings", json_body={"engine": "test", "engineParams": {"delay": 0.2}})
    api.require(reply.status == 200, f"PUT /api/settings (valid): expected 200, got {reply.status}: {reply.body[:300]!r}")
    answer = reply.json()
    api.expect(answer["settings"]["engine"] == "test" and answer["settings"]["engineParams"] == {"delay": 0.2},
               f"PUT /api/settings: the answer does not show what was set: {answer}")
    api.expect(answer["settings"]["denoise"] == before["settings"]["denoise"]
               and answer["settings"]["tempo"] == before["settings"]["tempo"],
               "PUT /api/settings: what is absent should be kept")
    state = api.state()
    api.expect(state["settings"] == answer["settings"] and state["fingerprint"] == answer["fingerprint"],
               "GET /api/state does not show the settings just set")
    reply = api.call("PUT", "/api/settings", json_body={"denoise": 0, "tempo": 1})
    api.expect_status(reply, 200, "PUT /api/settings {denoise: 0, tempo: 1}")
    fingerprint = reply.json()["fingerprint"] if reply.status == 200 else state["fingerprint"]

    for body, request_valid in (({"tempo": 5}, False), ({"denoise": -1}, False), ({"engine": "no-such-engine"}, True)):
        reply = api.call("PUT", "/api/settings", json_body=body, request_valid=request_valid)
        api.expect_status(reply, 400, f"PUT /api/settings {body}", "settings.invalid")
        if reply.status == 400:
            api.expect(len(reply.json()["error"]["message"]) > 0, "settings.invalid should carry the reason")
    reply = api.call("PUT", "/api/settings", body=b"this is not json", content_type="application/json", request_valid=False)
    api.expect_status(reply, 400, "PUT /api/settings with a body that is not JSON", "settings.invalid")
    after = api.state()
    api.expect(after["fingerprint"] == fingerprint and after["settings"]["engine"] == "test",
               "invalid settings changed the settings")
    shared["fingerprint"] = fingerprint
    api.check()


# ----------------------------------------------------------------------------------------
# 5. The batch: skip, start, 409s, stop, pause, retry-failed, rerender-other-settings.

def _idle(state):
    return not state["running"]


def _all_success(state):
    return not state["running"] and state["items"] and all(i["status"] == "success" for i in state["items"])


def _snapshot(running):
    return lambda m: m.get("type") == "snapshot" and m["state"]["running"] is running


def _event(name):
    return lambda m: m.get("type") == "event" and m["event"].get("event") == name


def _run_ended(api, live, mark, what, timeout=180):
    """Waits for the run started after message `mark` to end: the snapshots at run start and
    end (docs/studio-api.md: a snapshot after run start/end), then GET /api/state idle."""
    started = live.wait_index(_snapshot(True), mark, timeout=60)
    api.require(started is not None, f"/ws: no snapshot with running: true after {what}")
    ended = live.wait_index(_snapshot(False), started + 1, timeout=timeout)
    api.require(ended is not None, f"/ws: no snapshot with running: false within {timeout}s after {what}")
    messages = live.since(mark)[: ended - mark + 1]
    for message in messages:
        if _event("warning")(message):
            api.problem(f"{what}: the run sent a warning: {message['event'].get('message')!r}")
    api.expect(any(_event("batch_finished")(m) for m in messages), f"{what}: the run ended without a batch_finished event")
    return api.wait(_idle, f"GET /api/state running: false after {what}", timeout=60)


def _command(api, live, path, what):
    mark = live.mark()
    reply = api.call("POST", path)
    api.require(reply.status == 202 and reply.json() == {"accepted": True},
                f"POST {path} ({what}): expected 202 {{accepted: true}}, got {reply.status} {reply.body[:300]!r}")
    return _run_ended(api, live, mark, f"POST {path} ({what})")


@needs_server
def test_batch_commands(api, live, shared):
    api.require(live.ws.status == 101, "this test follows runs through /ws, which did not open")
    state = api.state()
    api.require(len(state["items"]) == 2, f"expected the two uploaded items, got {state['items']}")
    by_name = _items_by_name(state)
    b_key = by_name["b.mp4"]["key"]

    # Skip a pending item before any run: it is set aside (failed, kind input).
    reply = api.call("POST", f"/api/items/{b_key}/skip")
    if api.expect_status(reply, 202, "POST /api/items/{key}/skip on a pending item (listed by GET /api/state, before any run)"):
        b = _items_by_name(api.state())["b.mp4"]
        api.expect(b["status"] == "failed" and b["error"] == {"kind": "input", "message": "skipped by the user"},
                   f"a skipped item should be failed with {{kind: input, message: 'skipped by the user'}}, got {b}")

    # Start; once an item renders, start/settings/reset/retry answer 409; then stop.
    mark = live.mark()
    reply = api.call("POST", "/api/batch/start")
    api.require(reply.status == 202 and reply.json() == {"accepted": True},
                f"POST /api/batch/start: expected 202 {{accepted: true}}, got {reply.status} {reply.body[:300]!r}")
    progress = live.wait_index(lambda m: _event("item_progress")(m) or _snapshot(False)(m), mark, timeout=120)
    state = api.state()
    if progress is not None and _event("item_progress")(live.since(progress)[0]) and state["running"]:
        rendering = [i for i in state["items"] if i["status"] == "running"]
        api.expect(len(rendering) == 1 and rendering[0]["progress"] is not None,
                   f"while an item renders, GET /api/state shows it running with progress: {state['items']}")
        reply = api.call("POST", "/api/batch/start")
        api.expect_status(reply, 409, "POST /api/batch/start while running", "batch.running")
        reply = api.call("PUT", "/api/settings", json_body={"tempo": 1.2})
        api.expect_status(reply, 409, "PUT /api/settings while running", "batch.running")
        reply = api.call("POST", "/api/batch/reset", json_body={"confirm": True})
        api.expect_status(reply, 409, "POST /api/batch/reset while running", "batch.running")
        reply = api.call("POST", "/api/batch/retry-failed")
        api.expect_status(reply, 409, "POST /api/batch/retry-failed while running", "batch.running")
        reply = api.call("POST", "/api/batch/rerender-other-settings")
        api.expect_status(reply, 409, "POST /api/batch/rerender-other-settings while running", "batch.running")
        running = [i for i in state["items"] if i["status"] == "running"]
        api.expect(state["summary"]["running"] == len(running), f"summary.running disagrees with the items: {state['summary']}")
        # Stop: the current item stops now and returns to pending.
        reply = api.call("POST", "/api/batch/stop")
        api.expect(reply.status == 202 and reply.json() == {"accepted": True}, f"POST /api/batch/stop: {reply.status} {reply.body[:200]!r}")
        state = _run_ended(api, live, mark, "POST /api/batch/start, then stop")
        api.expect(all(i["status"] != "running" for i in state["items"]) and state["summary"]["running"] == 0,
                   f"after stop no item should be running: {state['items']}")
        a = _items_by_name(state)["a.mp4"]
        api.expect(a["status"] in ("pending", "success"), f"a stopped item should be back to pending: {a}")
    else:
        api.problem("the run ended before an item_progress event and GET /api/state running: true (409 and stop checks skipped)")
        state = _run_ended(api, live, mark, "POST /api/batch/start")

    # Start again and let it finish.
    state = _command(api, live, "/api/batch/start", "again")
    a = _items_by_name(state)["a.mp4"]
    api.require(a["status"] == "success", f"item a did not render: {a}")
    api.expect(a["output"] and a["outputUrl"] == "/api/outputs/" + urllib.parse.quote(a["output"]),
               f"a success should have output and outputUrl /api/outputs/<output>: {a}")
    api.expect(a["error"] is None and a["progress"] is None, f"a success has no error and no progress: {a}")
    api.expect(a["renderSeconds"] is not None and a["attempts"] >= 1, f"a success should have renderSeconds and attempts: {a}")
    api.expect(a["otherSettings"] is False, f"a fresh success is not made with other settings: {a}")

    # Retry failed: a skipped b back to pending, then the run; both succeed.
    state = _command(api, live, "/api/batch/retry-failed", "retry failed")
    api.expect(_all_success(state), f"after retry-failed every item should be done: {state['items']}")
    api.expect(state["summary"] == {"total": 2, "succeeded": 2, "failed": 0, "pending": 0, "running": 0},
               f"summary after the batch: {state['summary']}")

    # New settings: both successes are now "made with other settings"; re-render them, pausing
    # on the way (the current item finishes, then the run ends), then resume.
    reply = api.call("PUT", "/api/settings", json_body={"tempo": 1.1})
    api.expect_status(reply, 200, "PUT /api/settings {tempo: 1.1}")
    state = api.state()
    api.expect(all(i["otherSettings"] for i in state["items"]),
               f"after a settings change successes should say otherSettings: true: {state['items']}")
    mark = live.mark()
    reply = api.call("POST", "/api/batch/rerender-other-settings")
    api.expect_status(reply, 202, "POST /api/batch/rerender-other-settings")
    live.wait_index(lambda m: _event("item_progress")(m) or _snapshot(False)(m), mark, timeout=120)
    reply = api.call("POST", "/api/batch/pause")
    api.expect(reply.status == 202 and reply.json() == {"accepted": True}, f"POST /api/batch/pause: {reply.status} {reply.body[:200]!r}")
    state = _run_ended(api, live, mark, "POST /api/batch/rerender-other-settings, then pause")
    api.expect(all(i["status"] in ("success", "pending") for i in state["items"]),
               f"after pause every item is done or pending: {state['items']}")
    api.expect(state["pausing"] is False, "pausing should be false once the run ended")
    if not _all_success(state) or any(i["otherSettings"] for i in state["items"]):
        state = _command(api, live, "/api/batch/rerender-other-settings", "after the pause")
    api.expect(_all_success(state) and not any(i["otherSettings"] for i in state["items"]),
               f"after re-rendering, every item is a success made with the current settings: {state['items']}")
    shared["outputs"] = {i["key"]: i["output"] for i in state["items"]}
    api.check()


# ----------------------------------------------------------------------------------------
# 6. Outputs, zip, log, backup.

@needs_server
def test_outputs_zip_log_backup(api, server, schema_validator, shared):
    state = api.state()
    api.require(_all_success(state), f"the batch should be done: {state['items']}")
    outputs_dir = server.workspace / "outputs"
    names = []
    zero = "0" * 32
    api.expect(api.call("POST", f"/api/items/{zero}-{zero}/skip").status == 404,
               "POST /api/items/{key}/skip for an unknown key: expected 404")
    for item in state["items"]:
        name = item["output"]
        names.append(name)
        on_disk = (outputs_dir / name).read_bytes() if (outputs_dir / name).is_file() else None
        api.expect(on_disk is not None, f"output {name} is not in the workspace's outputs/")
        reply = api.call("GET", item["outputUrl"])
        if api.expect_status(reply, 200, f"GET {item['outputUrl']}"):
            api.expect((reply.header("Content-Type") or "").startswith("video/mp4"), f"an output should be video/mp4, got {reply.header('Content-Type')}")
            api.expect(reply.body == on_disk, f"GET {item['outputUrl']}: the bytes differ from outputs/{name}")
            api.expect(reply.header("Accept-Ranges") == "bytes", f"GET {item['outputUrl']}: no Accept-Ranges: bytes")
        size = len(on_disk or b"")
        for range_header, start, end in (("bytes=0-99", 0, 99), (f"bytes={size - 10}-", size - 10, size - 1),
                                         ("bytes=-20", size - 20, size - 1)):
            reply = api.call("GET", item["outputUrl"], headers={"Range": range_header})
            if api.expect_status(reply, 206, f"GET {item['outputUrl']} Range: {range_header}"):
                api.expect(reply.header("Content-Range") == f"bytes {start}-{end}/{size}",
                           f"Range {range_header}: Content-Range should be 'bytes {start}-{end}/{size}', got {reply.header('Content-Range')!r}")
                api.expect(reply.body == (on_disk or b"")[start:end + 1], f"Range {range_header}: wrong bytes")
        reply = api.call("GET", item["outputUrl"], headers={"Range": f"bytes={size + 100}-"})
        api.expect_status(reply, 416, f"GET {item['outputUrl']} Range past the end")

    # Path tricks never reach outside outputs/.
    for tricky in ("..%2Ftask_status.json", "%2e%2e%2Finputs%2Fmanifest.json", "%2Fetc%2Fpasswd"):
        reply = api.call("GET", "/api/outputs/" + tricky, validate=False)
        api.expect(reply.status in (400, 404), f"GET /api/outputs/{tricky}: expected 404, got {reply.status}")

    # Every finished output in one zip: stored, each member the output file.
    reply = api.call("GET", "/api/outputs.zip")
    if api.expect_status(reply, 200, "GET /api/outputs.zip"):
        api.expect((reply.header("Content-Type") or "").startswith("application/zip"), f"outputs.zip: Content-Type {reply.header('Content-Type')!r}")
        try:
            archive = zipfile.ZipFile(io.BytesIO(reply.body))
            api.expect(archive.testzip() is None, "outputs.zip: a member's CRC is wrong")
            api.expect(sorted(archive.namelist()) == sorted(names), f"outputs.zip members {archive.namelist()} != outputs {names}")
            for info in archive.infolist():
                api.expect(info.compress_type == zipfile.ZIP_STORED, f"outputs.zip: {info.filename} is compressed (should be stored)")
                if (outputs_dir / info.filename).is_file():
                    api.expect(archive.read(info) == (outputs_dir / info.filename).read_bytes(),
                               f"outputs.zip: {info.filename} differs from the output file")
        except zipfile.BadZipFile as error:
            api.problem(f"GET /api/outputs.zip: not a zip file: {error}")

    # The run log's last lines, each a RunEvent as JSON text.
    log_file = (outputs_dir / "talkie.log").read_text(encoding="utf-8").splitlines()
    for query, count in (({"lines": 5}, 5), (None, 200)):
        reply = api.call("GET", "/api/log", query=query)
        if api.expect_status(reply, 200, f"GET /api/log {query or ''}"):
            lines = reply.json()["lines"]
            expected = [line for line in log_file if line.strip()][-count:]
            api.expect(lines == expected, f"GET /api/log {query or ''}: not the last {count} lines of outputs/talkie.log "
                                          f"({len(lines)} lines vs {len(expected)})")
            for line in lines:
                try:
                    problems = schema_validator(json.loads(line), "RunEvent")
                except ValueError:
                    problems = ["not JSON"]
                api.expect(not problems, f"GET /api/log: a line is not a RunEvent: {line[:200]} {problems}")

    # The state backup: task_status.json as an attachment.
    reply = api.call("GET", "/api/backup")
    if api.expect_status(reply, 200, "GET /api/backup"):
        disposition = reply.header("Content-Disposition") or ""
        api.expect(disposition.startswith("attachment") and "task_status.json" in disposition,
                   f"GET /api/backup: Content-Disposition should be an attachment named task_status.json, got {disposition!r}")
        api.expect(reply.body == (outputs_dir / "task_status.json").read_bytes(), "GET /api/backup: not outputs/task_status.json")
    api.check()


# ----------------------------------------------------------------------------------------
# 7. HeyGem face2face.

@needs_server
def test_face2face(api, server, live, shared):
    # Make the studio busy first: a submit while busy is queued, never refused (no 10001).
    mark = live.mark()
    reply = api.call("PUT", "/api/settings", json_body={"tempo": 1.0})
    api.expect_status(reply, 200, "PUT /api/settings {tempo: 1.0}")
    reply = api.call("POST", "/api/batch/rerender-other-settings")
    api.expect_status(reply, 202, "POST /api/batch/rerender-other-settings")
    busy = live.wait_index(_snapshot(True), mark, timeout=60) is not None
    inputs = server.workspace / "inputs"
    audio = next((inputs / "audio").glob(f"{shared['audio_key']}.*"))
    videos = [next((inputs / "videos").glob(f"{shared['keys'][n]}.*")) for n in ("a.mp4", "b.mp4")]
    codes = [f"talkie-test-{os.getpid()}-{i}" for i in range(2)]
    for code, video in zip(codes, videos):
        body = {"audio_url": str(audio), "video_url": str(video), "code": code,
                "chaofen": 0, "watermark_switch": 0, "digital_auth": 0, "pn": 1}
        reply = api.call("POST", "/easy/submit", json_body=body)
        api.require(reply.status == 200, f"POST /easy/submit: expected HTTP 200, got {reply.status}: {reply.body[:300]!r}")
        api.expect(reply.json() == {"code": 10000, "success": True, "msg": "", "data": {}},
                   f"POST /easy/submit ({code}){' while the batch runs' if busy else ''}: expected "
                   f"{{code: 10000, success: true, msg: '', data: {{}}}}, got {reply.json()}")
    if busy and api.state()["running"]:
        for code in codes:
            answer = api.call("GET", "/easy/query", query={"code": code}).json()
            api.expect(answer.get("code") == 10000 and answer["data"].get("status") == 1,
                       f"GET /easy/query?code={code} while the batch runs: expected status 1 (queued), got {answer}")

    results = {}
    deadline = time.monotonic() + 240
    while len(results) < len(codes):
        api.require(time.monotonic() < deadline, f"face2face tasks did not finish in 240 s: {results}")
        for code in codes:
            if code in results:
                continue
            reply = api.call("GET", "/easy/query", query={"code": code})
            answer = reply.json()
            api.require(answer.get("code") == 10000, f"GET /easy/query?code={code}: expected code 10000, got {answer}")
            data = answer["data"]
            api.require(data["status"] in (1, 2), f"face2face task {code} failed: {answer}")
            api.expect(0 <= data["progress"] <= 100, f"progress out of 0–100: {data}")
            if data["status"] == 2:
                results[code] = data
        time.sleep(0.3)
    workspace = str(server.workspace.resolve())
    for code, data in results.items():
        api.expect(data["code"] == code and data["progress"] == 100, f"a finished task: code {code}, progress 100: {data}")
        api.expect(os.path.isfile(data["result"]), f"face2face result {data['result']!r} is not a file on the server")
        api.expect(os.path.realpath(data["result"]).startswith(workspace + "/"), f"face2face result {data['result']!r} is outside the workspace")
        api.expect(data["result"].endswith(".mp4"), f"face2face result {data['result']!r} is not an mp4")
        # Still answered after it was seen finished (HeyGem forgets it; Talkie must not).
        for _ in range(2):
            again = api.call("GET", "/easy/query", query={"code": code}).json()
            api.expect(again.get("code") == 10000 and again["data"] == data,
                       f"GET /easy/query?code={code} after it finished: expected the same answer again, got {again}")

    shared["face2face"] = codes
    reply = api.call("GET", "/easy/query", query={"code": "no-such-task-code"})
    api.expect(reply.status == 200 and reply.json().get("code") == 10004 and reply.json().get("success") is False,
               f"GET /easy/query (unknown code): expected {{code: 10004, success: false}}, got {reply.status} {reply.body[:200]!r}")
    for label, body, request_valid in (
            ("an http URL", {"audio_url": "http://127.0.0.1:1/a.wav", "video_url": str(videos[0]), "code": "t-url"}, True),
            ("an https URL", {"audio_url": str(audio), "video_url": "https://127.0.0.1:1/v.mp4", "code": "t-url2"}, True),
            ("a path outside the allowed folders", {"audio_url": "/etc/hostname", "video_url": str(videos[0]), "code": "t-out"}, True),
            ("a missing code", {"audio_url": str(audio), "video_url": str(videos[0])}, False)):
        reply = api.call("POST", "/easy/submit", json_body=body, request_valid=request_valid)
        api.expect(reply.status == 200 and reply.json().get("code") == 10002 and reply.json().get("success") is False,
                   f"POST /easy/submit with {label}: expected {{code: 10002, success: false}}, got {reply.status} {reply.body[:200]!r}")
    reply = api.call("GET", "/easy/query", query={"code": "t-url"})
    api.expect(reply.json().get("code") == 10004, f"a refused submit should leave no task: {reply.body[:200]!r}")
    api.check()


# ----------------------------------------------------------------------------------------
# 8. Reset.

@needs_server
def test_reset(api, server, shared):
    api.wait(_idle, "the studio to be idle")
    outputs_dir = server.workspace / "outputs"
    before = sorted(p.name for p in outputs_dir.glob("*.mp4"))
    reply = api.call("POST", "/api/batch/reset", json_body={}, request_valid=False)
    api.expect_status(reply, 400, "POST /api/batch/reset {} (no confirm)")
    reply = api.call("POST", "/api/batch/reset", json_body={"confirm": False})
    api.expect_status(reply, 400, "POST /api/batch/reset {confirm: false}")
    api.expect(_all_success(api.state()), "a refused reset changed the batch")
    reply = api.call("POST", "/api/batch/reset", json_body={"confirm": True})
    if api.expect_status(reply, 200, "POST /api/batch/reset {confirm: true}"):
        api.expect(reply.json() == {"forgotten": 2}, f"reset should forget the 2 items, got {reply.json()}")
    state = api.state()
    api.expect(all(i["status"] == "pending" and i["attempts"] == 0 and i["output"] is None for i in state["items"]),
               f"after reset every item is pending again: {state['items']}")
    api.expect(sorted(p.name for p in outputs_dir.glob("*.mp4")) == before, "reset must keep the output files")
    api.check()


# ----------------------------------------------------------------------------------------
# 9. The WebSocket's messages.

@needs_server
def test_websocket_messages(api, live, server, schema_validator):
    api.expect(live.wait_for(lambda m: m.get("type") == "snapshot" and m["state"]["summary"]["pending"] == 2, timeout=10),
               "/ws: no snapshot after the reset")
    messages = [json.loads(text) for text in list(live.messages)]
    api.expect(live.error is None, f"/ws: the connection failed: {live.error!r}")
    api.expect(messages and messages[0].get("type") == "snapshot", "/ws: the first message is not a snapshot")
    for text in list(live.messages):
        problems = schema_validator(json.loads(text), "WsMessage")
        api.expect(not problems, f"/ws message does not match components/schemas/WsMessage: {text[:300]} {problems[:4]}")
    events = [m["event"]["event"] for m in messages if m.get("type") == "event"]
    for name in ("batch_started", "item_started", "item_progress", "item_succeeded", "batch_finished"):
        api.expect(name in events, f"/ws: no {name} event during the batch (events seen: {sorted(set(events))})")
    snapshots = [m for m in messages if m.get("type") == "snapshot"]
    api.expect(any(s["state"]["audio"] for s in snapshots), "/ws: no snapshot after the narration's upload")
    api.expect(any(s["state"]["running"] for s in snapshots), "/ws: no snapshot at the run's start")
    api.expect(len(snapshots) >= 8, f"/ws: a snapshot is due after every upload, delete, settings change, reset and "
                                    f"run start/end; only {len(snapshots)} arrived")

    # A new connection gets a fresh snapshot equal to GET /api/state.
    fresh = WebSocketListener(server.port)
    try:
        api.expect(fresh.ws.status == 101, f"a second /ws connection: expected 101, got {fresh.ws.status}")
        api.expect(fresh.wait_for(lambda m: True, timeout=10), "a second /ws connection got no snapshot")
        if fresh.messages:
            first = json.loads(fresh.messages[0])
            api.expect(first.get("type") == "snapshot" and first.get("state") == api.state(),
                       "a new /ws connection's first message should be a snapshot equal to GET /api/state")
    finally:
        fresh.close()
    api.check()


# ----------------------------------------------------------------------------------------
# 10. A restart keeps the batch and the face2face tasks.

@needs_server
def test_restart_keeps_state_and_face2face_tasks(api, server, shared):
    before = api.state()
    answers = {code: api.call("GET", "/easy/query", query={"code": code}).json() for code in shared.get("face2face", [])}
    status = server.restart()
    api.expect(status == 0, f"talkie serve should exit 0 on SIGTERM, exited {status}")
    api.port, api.host_url = server.port, f"http://127.0.0.1:{server.port}"
    after = api.state()
    api.expect(after == before, "GET /api/state after a restart differs from before it:\n"
                                f"    before: {json.dumps(before)[:800]}\n    after:  {json.dumps(after)[:800]}")
    for code, answer in answers.items():
        again = api.call("GET", "/easy/query", query={"code": code}).json()
        api.expect(again == answer, f"GET /easy/query?code={code} after a restart: expected {answer}, got {again}")
    api.check()


# ----------------------------------------------------------------------------------------
# 11. Auth and Host (a second server with a token).

@needs_server
def test_token_and_host_rules(openapi, tmp_path):
    token = "conformance-" + os.urandom(8).hex()
    srv = Server(tmp_path / "workspace", tmp_path / "server.log", extra=("--token", token))
    try:
        srv.wait_ready(token=token)
        api = Client(openapi, srv.port)
        reply = api.call("GET", "/api/state")
        api.expect_status(reply, 401, "GET /api/state without the token")
        reply = api.call("GET", "/api/state", headers={"Authorization": "Bearer wrong-token-123"})
        api.expect_status(reply, 401, "GET /api/state with a wrong token")
        reply = api.call("GET", "/api/state", headers={"Authorization": f"Bearer {token}"})
        api.expect_status(reply, 200, "GET /api/state with Authorization: Bearer")
        reply = api.call("GET", "/api/state", headers={"Cookie": f"talkie_token={token}"})
        api.expect_status(reply, 200, "GET /api/state with the talkie_token cookie")
        reply = api.call("GET", "/api/state", query={"token": token})
        api.expect_status(reply, 200, "GET /api/state?token=")
        reply = api.call("GET", "/", query={"token": token})
        if api.expect_status(reply, 200, "GET /?token= (the page's first load)"):
            cookie = reply.header("Set-Cookie") or ""
            api.expect(cookie.startswith(f"talkie_token={token}"), f"GET /?token=: should set the talkie_token cookie, got {cookie!r}")
        reply = api.call("POST", "/api/batch/start")
        api.expect_status(reply, 401, "POST /api/batch/start without the token")

        # A foreign Host header: 403, even with the token.
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        conn.putrequest("GET", "/api/state", skip_host=True)
        conn.putheader("Host", "evil.example:80")
        conn.putheader("Authorization", f"Bearer {token}")
        conn.endheaders()
        raw = conn.getresponse()
        data = raw.read()
        conn.close()
        api.validate(RawRequest(api.host_url, "GET", "/api/state", headers={"Host": "evil.example:80", "Authorization": f"Bearer {token}"}),
                     RawResponse(raw.status, raw.getheaders(), data), "GET /api/state (Host: evil.example)")
        api.expect(raw.status == 403, f"a foreign Host header: expected 403, got {raw.status}")

        # The WebSocket upgrade needs the token too.
        ws = WebSocket(srv.port)
        try:
            # Refused; Hummingbird answers every refused upgrade with 400 (docs/studio-api.md).
            api.expect(ws.status == 400, f"GET /ws without the token: expected 400, got {ws.status}")
            api.validate(RawRequest(api.host_url, "GET", "/ws", headers=ws.request_headers),
                         RawResponse(ws.status, ws.headers, ws.body or None), "GET /ws without the token")
        finally:
            ws.close()
        ws = WebSocket(srv.port, headers={"Authorization": f"Bearer {token}"})
        try:
            api.expect(ws.status == 101, f"GET /ws with the token: expected 101, got {ws.status}")
        finally:
            ws.close()
        api.check()
    finally:
        srv.stop()
