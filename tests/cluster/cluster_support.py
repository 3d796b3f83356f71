"""What the cluster tests share: a fresh PostgreSQL database per test, small media made once
per session, and real `talkie` processes (workers, runs, status) with their output in files.

Deliberately not a conftest.py: engines/tests does `from conftest import …`, and
scripts/test.sh runs every folder in one pytest process, where a second conftest module
would shadow theirs. The fixtures live here and test_cluster.py and test_studio_cluster.py import them
(the latter also the studio helpers at the end: `talkie serve --store`, pages on /ws).

The database: $TALKIE_TEST_POSTGRES (scripts/test.sh starts the private instance of
scripts/postgres.sh and sets it); each test gets its own `CREATE DATABASE talkie_<random>`,
dropped after. The binary: $TALKIE_BINARY, else the repository's bin/talkie. Renders are
counted from the test engine's own log, one file per worker (TALKIE_TEST_ENGINE_LOG in that
worker's environment), so the tests also see which worker rendered what.
"""
from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from reliability import harness  # noqa: E402  (standard library only: media and render counts)

POSTGRES_URL = os.environ.get("TALKIE_TEST_POSTGRES", "")
TAG_VARIABLE = "TALKIE_CLUSTER_TEST_TAG"
TEMPLATES = 12


def talkie_binary() -> Path:
    """The talkie executable: $TALKIE_BINARY, or the repository's bin/talkie."""
    return Path(os.environ.get("TALKIE_BINARY") or REPO / "bin" / "talkie")


def psql_binary() -> str:
    found = shutil.which("psql")
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if candidates:
        return str(candidates[-1])
    raise AssertionError("psql was not found (Debian's postgresql package brings it: scripts/setup.sh --tests)")


def psql(url: str, sql: str) -> str:
    """Runs one SQL command with psql; its output (tuples only, unaligned)."""
    result = subprocess.run([psql_binary(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-tA", "-d", url, "-c", sql],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise AssertionError(f"psql {sql!r} on {url} exited {result.returncode}: {result.stderr.strip()}")
    return result.stdout.strip()


def database_url(base: str, name: str) -> str:
    """`base` with its database replaced by `name` (user, host, port and query kept)."""
    parts = urllib.parse.urlsplit(base)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def private_instance() -> bool:
    """True when $TALKIE_TEST_POSTGRES is the instance scripts/postgres.sh runs (so a test may
    restart it)."""
    try:
        url = subprocess.run([str(REPO / "scripts" / "postgres.sh"), "url"], capture_output=True, text=True, timeout=30)
        status = subprocess.run([str(REPO / "scripts" / "postgres.sh"), "status"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    strip = lambda u: urllib.parse.urlsplit(u.strip())._replace(query="", fragment="").geturl()  # noqa: E731
    return status.returncode == 0 and strip(url.stdout) == strip(POSTGRES_URL)


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(nothing)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


# ---------------------------------------------------------------------------------------
# Processes


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, grandchildren, ...), from /proc."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children[ppid].append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


class Talkie:
    """One talkie process started in the background (a worker, a following run), in its own
    session, its stdout and stderr in files."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], folder: Path):
        self.name = name
        self.args = args
        self.stdout_path = folder / f"{name}.stdout"
        self.stderr_path = folder / f"{name}.stderr"
        with open(self.stdout_path, "wb") as stdout, open(self.stderr_path, "wb") as stderr:
            self.popen = subprocess.Popen([str(talkie_binary()), *args], stdin=subprocess.DEVNULL, stdout=stdout,
                                          stderr=stderr, env=env, start_new_session=True)
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal_all(self, sig: int) -> None:
        """`sig` to the process, its process group and every descendant (an engine may run
        in a group of its own): what a machine losing power, or being frozen, does to it."""
        targets = [self.pid, *descendants(self.pid)]
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)
        for pid in targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def wait(self, timeout: float) -> int:
        """The exit status; fails the test (with the process's output) after `timeout`."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.describe()} did not exit within {timeout:.0f} s\n{self.output()}") from None

    def describe(self) -> str:
        return f"talkie {' '.join(self.args[:1])} {self.name!r} (pid {self.pid})"

    def output(self) -> str:
        return (f"--- {self.name} stderr:\n{tail(self.stderr_path)}\n"
                f"--- {self.name} stdout:\n{tail(self.stdout_path)}")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> None:
        """Teardown: whatever is left of it, SIGKILLed (and SIGCONTed, had it been stopped)."""
        if self.alive() or descendants(self.pid):
            self.signal_all(signal.SIGKILL)
            self.signal_all(signal.SIGCONT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)


# ---------------------------------------------------------------------------------------
# Media and the cluster under test


@dataclass
class Media:
    """A narration, TEMPLATES distinct one-second 160x120 templates, and one template the test
    engine fails with an input error (its name carries the marker "fail-input")."""

    folder: Path
    audio: Path
    templates: list[Path]
    failing: Path


def make_media(folder: Path) -> Media:
    folder.mkdir(parents=True, exist_ok=True)
    audio = harness.narration(folder)
    templates = [harness.template(folder / "templates" / f"template-{index + 1:02d}.mp4", variant=index)
                 for index in range(TEMPLATES)]
    failing = harness.template(folder / "failing" / "no-face-fail-input.mp4", variant=40)
    return Media(folder=folder, audio=audio, templates=templates, failing=failing)


def items_by_key(state: dict) -> dict[str, dict]:
    return {item["key"]: item for item in state.get("items", [])}


def status_of(item: dict) -> str:
    return (item.get("state") or {}).get("status", "?")


def attempts_of(item: dict) -> int:
    return int((item.get("state") or {}).get("attempts", -1))


def summary(state: dict | None) -> str:
    """One line per item: key, status, attempts, lease."""
    if state is None:
        return "(no status)"
    lines = []
    for item in state.get("items", []):
        lease = item.get("lease")
        owner = f" lease {lease.get('owner')}#{lease.get('token')} ({lease.get('expiresInSeconds')} s)" if lease else ""
        error = (item.get("state") or {}).get("lastError")
        lines.append(f"  {item['key'][:12]} {status_of(item)} attempts {attempts_of(item)}{owner}"
                     f"{' error ' + str(error) if error else ''}")
    return "\n".join(lines) or "  (no items)"


class Cluster:
    """One test's cluster: its own database, a shared output folder, and the talkie processes
    it started (all stopped at teardown)."""

    def __init__(self, folder: Path, media: Media, store: str):
        self.folder = folder
        self.media = media
        self.store = store
        self.out = folder / "outputs"
        self.logs = folder / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.tag = f"talkie-cluster-{uuid.uuid4().hex[:12]}"
        self.processes: list[Talkie] = []
        self.pages: list = []   # studio pages (Page) to close at teardown
        self.databases: list[str] = []
        self.last_state: dict | None = None

    # The environment of every talkie this test starts: tagged (leftovers are found and
    # killed at teardown), engines and web/ of this checkout, no inherited test-engine knobs.
    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        for name in ("TALKIE_TEST_ENGINE_LOG", "TALKIE_TEST_ENGINE_DELAY", "TALKIE_TEST_ENGINE_START_LOG"):
            env.pop(name, None)
        env[TAG_VARIABLE] = self.tag
        env.setdefault("TALKIE_HOME", str(REPO))
        env.update(extra)
        return env

    def new_database(self) -> str:
        """A fresh empty database on the test server; its URL. Dropped at teardown."""
        name = f"talkie_{uuid.uuid4().hex[:16]}"
        psql(POSTGRES_URL, f"CREATE DATABASE {name}")
        self.databases.append(name)
        return database_url(POSTGRES_URL, name)

    # -- talkie commands -----------------------------------------------------------------

    def talkie(self, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
        """Runs talkie to its end and captures its output."""
        return harness.run_talkie(list(args), env=self.env(**env), timeout=timeout, binary=str(talkie_binary()))

    def run_args(self, videos: list[Path] | None = None, *extra: str, store: str | None = None) -> list[str]:
        """`talkie run --store` for this cluster's batch with the test engine."""
        videos = self.media.templates if videos is None else videos
        return ["run", "--store", store or self.store, "--out", str(self.out), "--audio", str(self.media.audio),
                "--videos", *map(str, videos), "--engine", "test", "--retry-delay", "0.1", *extra]

    def queue(self, videos: list[Path] | None = None, *extra: str) -> subprocess.CompletedProcess:
        """`talkie run --store ... --detach`: the batch is queued; must exit 0."""
        result = self.talkie(*self.run_args(videos, *extra, "--detach"))
        assert result.returncode == 0, (f"`talkie run --store --detach` exited {result.returncode}\n"
                                        f"stderr: {result.stderr[-1500:]}\nstdout: {result.stdout[-500:]}")
        return result

    def start(self, name: str, args: list[str], **env: str) -> Talkie:
        process = Talkie(name, args, self.env(**env), self.logs)
        self.processes.append(process)
        return process

    def render_log(self, name: str) -> Path:
        return self.logs / f"render-{name}.log"

    def worker(self, name: str, *extra: str, delay: float = 0.05, exit_when_idle: bool = True,
               store: str | None = None) -> Talkie:
        """`talkie worker --store` named `name`; its engine logs renders to render-NAME.log and
        spends `delay` s per progress step (ten per item)."""
        args = ["worker", "--store", store or self.store, "--name", name, "--json", *extra]
        if exit_when_idle:
            args.append("--exit-when-idle")
        return self.start(name, args, TALKIE_TEST_ENGINE_LOG=str(self.render_log(name)),
                          TALKIE_TEST_ENGINE_DELAY=str(delay))

    def status(self, store: str | None = None) -> dict:
        """`talkie status --store URL --json`, parsed."""
        result = self.talkie("status", "--store", store or self.store, "--json", timeout=60)
        assert result.returncode == 0, f"`talkie status --store --json` exited {result.returncode}: {result.stderr[-1500:]}"
        try:
            state = json.loads(result.stdout)
        except json.JSONDecodeError as error:
            raise AssertionError(f"`talkie status --store --json` printed no JSON ({error}): {result.stdout[:500]}") from None
        if store is None or store == self.store:
            self.last_state = state
        return state

    def wait_status(self, predicate, seconds: float, what: str, store: str | None = None) -> dict:
        """Polls the status until `predicate(state)` holds; fails with the items and the
        processes' output after `seconds`. A status that fails to load (the database
        restarting) is polled again."""
        deadline = time.monotonic() + seconds
        state, problem = None, ""
        while True:
            try:
                state = self.status(store)
                problem = ""
                if predicate(state):
                    return state
            except AssertionError as error:
                problem = str(error)
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {seconds:.0f} s\n{problem}\nitems:\n{summary(state)}\n{self.outputs()}")
            time.sleep(0.25)

    # -- the studio ------------------------------------------------------------------------

    def studio(self, *extra: str, workspace: Path | None = None, seconds: float = 90) -> "Studio":
        """`talkie serve --store` on this cluster's database, on a free port, started (its
        banner printed); stopped at teardown."""
        studio = Studio(self, workspace or self.folder / "studio", self.store, list(extra))
        studio.wait_started(seconds)
        return studio

    def page(self, studio: "Studio", seconds: float = 60) -> "Page":
        """A page connected to the studio's /ws, once it has its first snapshot."""
        page = Page(studio.port)
        self.pages.append(page)
        page.wait(lambda page: bool(page.snapshots()), seconds, "the first snapshot on connecting")
        first = page.received()[0]
        assert first.get("type") == "snapshot", f"a page's first message is not a snapshot: {str(first)[:300]}"
        return page

    # -- renders ---------------------------------------------------------------------------

    def renders_by_worker(self) -> dict[str, collections.Counter]:
        """Worker name -> renders per item key, from each worker's engine log."""
        return {path.name[len("render-"):-len(".log")]: harness.render_counts(path)
                for path in sorted(self.logs.glob("render-*.log"))}

    def renders(self) -> collections.Counter:
        """Renders per item key, over every worker."""
        total: collections.Counter = collections.Counter()
        for counts in self.renders_by_worker().values():
            total.update(counts)
        return total

    def wait_renders(self, count: int, seconds: float, worker: str | None = None) -> collections.Counter:
        """Waits until `count` renders have started (of one worker, or of all)."""
        def counts() -> collections.Counter:
            return harness.render_counts(self.render_log(worker)) if worker else self.renders()
        if not harness.wait_for(lambda: sum(counts().values()) >= count, seconds=seconds, step=0.05):
            raise AssertionError(f"{count} render(s){' by ' + worker if worker else ''} did not start within "
                                 f"{seconds:.0f} s (renders: {dict(counts())})\n{self.outputs()}")
        return counts()

    def outputs(self) -> str:
        """Every started process's recent output, for failure messages."""
        return "\n".join(process.output() for process in self.processes)

    def teardown(self) -> None:
        for page in self.pages:
            page.close()
        for process in self.processes:
            process.stop()
        for pid in tagged_processes(self.tag):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        for name in self.databases:
            with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                psql(POSTGRES_URL, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def tagged_processes(tag: str) -> list[int]:
    """Processes whose environment carries this test's tag (an engine or ffmpeg a killed
    worker left behind): only ever processes this test started."""
    needle = f"{TAG_VARIABLE}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


# ---------------------------------------------------------------------------------------
# Fixtures (imported by test_cluster.py)


@pytest.fixture(scope="session")
def talkie_worker_binary() -> Path:
    """The binary, which must have the cluster commands (a binary being relinked right now
    gets a minute to appear)."""
    binary = talkie_binary()
    deadline = time.monotonic() + 60
    while not binary.exists() and time.monotonic() < deadline:
        time.sleep(2)
    assert binary.exists(), f"{binary} does not exist: build it (scripts/setup.sh --tests)"
    # (An unknown subcommand's --help prints the top-level help and exits 0: read the usage line.)
    result = subprocess.run([str(binary), "worker", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "talkie worker" in result.stdout, (
        f"`{binary} worker --help` shows no worker command: the binary has no cluster mode\n{result.stdout[-400:]}{result.stderr[-400:]}")
    return binary


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> Media:
    return make_media(tmp_path_factory.mktemp("cluster-media"))


@pytest.fixture
def cluster(talkie_worker_binary, media, tmp_path) -> Cluster:
    """A fresh database on $TALKIE_TEST_POSTGRES and an empty shared output folder."""
    instance = Cluster(tmp_path, media, store="")
    try:
        instance.store = instance.new_database()
        yield instance
    finally:
        instance.teardown()


# ---------------------------------------------------------------------------------------
# The studio in cluster mode (`talkie serve --store`) and pages on its WebSocket
# (test_studio_cluster.py)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (bound to port 0, then released)."""
    import socket
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class Answer:
    """One HTTP answer of the studio."""

    status: int
    body: bytes
    headers: dict

    def json(self):
        try:
            return json.loads(self.body)
        except json.JSONDecodeError:
            raise AssertionError(f"the studio answered {self.status} with something that is not JSON: {self.body[:300]!r}") from None


class Studio:
    """`talkie serve --workspace W --port P --store URL` started by a Cluster (so stopped at
    its teardown), with a small HTTP client (standard library only)."""

    def __init__(self, cluster: "Cluster", workspace: Path, store: str, extra: list[str], name: str = "studio"):
        self.cluster = cluster
        self.workspace = workspace
        self.outputs = workspace / "outputs"
        self.port = free_port()
        self.process = cluster.start(name, ["serve", "--workspace", str(workspace), "--host", "127.0.0.1",
                                            "--port", str(self.port), "--store", store, *extra])

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_started(self, seconds: float) -> None:
        """Until the banner (printed once the socket listens); fails if the studio exits."""
        started = harness.wait_for(lambda: "Talkie studio:" in self.process.stdout() or not self.process.alive(),
                                   seconds=seconds, step=0.1)
        if not self.process.alive():
            raise AssertionError(f"`talkie serve --store` exited {self.process.popen.returncode} at start\n{self.process.output()}")
        if not started:
            raise AssertionError(f"`talkie serve --store` printed no banner within {seconds:.0f} s\n{self.process.output()}")

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json",
                timeout: float = 60) -> Answer:
        import urllib.error
        import urllib.request
        request = urllib.request.Request(self.base + path, data=body, method=method,
                                         headers={"Content-Type": content_type} if body is not None else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return Answer(response.status, response.read(), dict(response.headers))
        except urllib.error.HTTPError as error:
            return Answer(error.code, error.read(), dict(error.headers))
        except OSError as error:
            raise AssertionError(f"{method} {path}: no answer from the studio ({error})\n{self.process.output()}") from None

    def api(self, method: str, path: str, payload: object | None = None, expect: tuple[int, ...] = (200, 202),
            timeout: float = 60):
        """A JSON call that must answer one of `expect`; its JSON (or {} for an empty body)."""
        body = json.dumps(payload).encode() if payload is not None else (b"" if method in ("POST", "PUT") else None)
        answer = self.request(method, path, body, timeout=timeout)
        assert answer.status in expect, (f"{method} {path} answered {answer.status} (expected {expect}): "
                                         f"{answer.body[:500]!r}\n{self.process.output()}")
        return answer.json() if answer.body else {}

    def upload(self, kind: str, file: Path, name: str) -> dict:
        """POST /api/inputs/{kind}?name=… with the file's bytes; must answer 201."""
        answer = self.request("POST", f"/api/inputs/{kind}?name={urllib.parse.quote(name)}", file.read_bytes(),
                              content_type="application/octet-stream")
        assert answer.status == 201, f"uploading {name} answered {answer.status}: {answer.body[:500]!r}"
        return answer.json()

    def state(self) -> dict:
        return self.api("GET", "/api/state", expect=(200,))

    def wait_state(self, predicate, seconds: float, what: str) -> dict:
        """Polls GET /api/state until `predicate(state)` holds."""
        deadline = time.monotonic() + seconds
        while True:
            state = self.state()
            if predicate(state):
                return state
            if time.monotonic() > deadline:
                rows = "\n".join(f"  {item['key'][:12]} {item['status']} attempts {item.get('attempts')} device {item.get('device')}"
                                 for item in state.get("items", []))
                raise AssertionError(f"{what}: not within {seconds:.0f} s (GET /api/state: running {state.get('running')}, "
                                     f"summary {state.get('summary')})\n{rows}\n{self.cluster.outputs()}")
            time.sleep(0.25)


class Page:
    """One page on the studio's /ws: every message, in order, collected by a thread
    (websocket-client, in .venv, answers the server's pings)."""

    def __init__(self, port: int, timeout: float = 60):
        import threading
        import websocket  # websocket-client
        self.ws = websocket.create_connection(f"ws://127.0.0.1:{port}/ws", timeout=timeout)
        self.ws.settimeout(None)
        self.messages: list[dict] = []
        self.error: str = ""
        self.ended = False
        self.condition = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            while True:
                text = self.ws.recv()
                if not text:
                    break
                message = json.loads(text)
                with self.condition:
                    self.messages.append(message)
                    self.condition.notify_all()
        except Exception as error:  # noqa: BLE001 - reported by wait()
            if not self.ended:
                self.error = f"{type(error).__name__}: {error}"
        finally:
            with self.condition:
                self.ended = True
                self.condition.notify_all()

    def received(self) -> list[dict]:
        with self.condition:
            return list(self.messages)

    def events(self, name: str | None = None) -> list[dict]:
        """The runner events received ({"type":"event"}'s "event"), of one name or all."""
        return [message["event"] for message in self.received()
                if message.get("type") == "event" and (name is None or message["event"].get("event") == name)]

    def snapshots(self) -> list[dict]:
        return [message["state"] for message in self.received() if message.get("type") == "snapshot"]

    def wait(self, predicate, seconds: float, what: str, context: str = "") -> None:
        """Until `predicate(self)` holds; fails with what the page received."""
        deadline = time.monotonic() + seconds
        with self.condition:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0 or self.ended:
                    break
                self.condition.wait(timeout=min(left, 0.5))
        if predicate(self):
            return
        events = [f"{event.get('event')} {str(event.get('key', ''))[:12]} {event.get('device') or ''}".rstrip()
                  for event in self.events() if event.get("event") != "item_progress"]
        last = (self.snapshots() or [{}])[-1]
        raise AssertionError(f"page: {what}: not within {seconds:.0f} s"
                             f"{' (its WebSocket ended: ' + (self.error or 'closed') + ')' if self.ended else ''}\n"
                             f"events received (progress left out): {events}\n"
                             f"last snapshot: running {last.get('running')}, summary {last.get('summary')}\n{context}")

    def close(self) -> None:
        self.ended = True
        with contextlib.suppress(Exception):
            self.ws.close(timeout=1)
