"""What every reliability suite shares: the talkie binary, small media made on the spot, a
runner for real talkie processes, and the checks that say no work was lost.

A suite is a module in reliability/suites/ with a TITLE and a function `run(ctx)`; it tries
cases with `ctx.case(label)` and reports what went wrong with `case.fail(message)`.
Standard library only (plus ffmpeg, ffprobe and espeak-ng on PATH).
"""
from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_ENGINE = ROOT / "engines" / "test_engine.py"


def talkie_bin() -> str:
    """The binary under test: $TALKIE_BIN, else the repository's bin/talkie."""
    return os.environ.get("TALKIE_BIN") or str(ROOT / "bin" / "talkie")


# ---------------------------------------------------------------------------------------
# Cases and results


class CaseFailed(Exception):
    """Raised by `Case.require` to end a case early."""


@dataclass
class Case:
    """One tried case; collects its failures."""

    label: str
    failures: list[str] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.failures.append(message)

    def check(self, condition: bool, message: str) -> bool:
        if not condition:
            self.fail(message)
        return condition

    def require(self, condition: bool, message: str) -> None:
        """Like check, but ends the case when it fails."""
        if not condition:
            self.fail(message)
            raise CaseFailed(message)


class Context:
    """What a suite gets: quick or full, a seeded random source, a scratch folder, a
    deadline, and the tally of cases tried and failed."""

    def __init__(self, name: str, quick: bool, seed: int, workdir: Path, seconds: float):
        self.name = name
        self.quick = quick
        self.seed = seed
        self.rng = random.Random(seed)
        self.workdir = workdir
        self.deadline = time.monotonic() + seconds
        self.tried = 0
        self.failures: list[tuple[str, str]] = []
        self.notes: list[str] = []
        self.tag = f"talkie-reliability-{os.getpid()}-{name}"
        self._scratch = 0

    def out_of_time(self) -> bool:
        """True once the suite's time budget is spent: stop trying new cases."""
        return time.monotonic() > self.deadline

    def scratch(self, label: str = "case") -> Path:
        """A new empty folder for one case."""
        self._scratch += 1
        path = self.workdir / f"{self._scratch:04d}-{_safe(label)}"
        path.mkdir(parents=True)
        return path

    def note(self, message: str) -> None:
        """A line for the report that is not a failure (what was skipped, and why)."""
        self.notes.append(message)

    @contextlib.contextmanager
    def case(self, label: str):
        """Counts one case; an exception inside it is a failure of that case."""
        self.tried += 1
        case = Case(label)
        try:
            yield case
        except CaseFailed:
            pass
        except Exception as error:  # a crash of the check itself is a failure too
            case.fail(f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=4)}")
        for message in case.failures:
            self.failures.append((label, message))

    def env(self, **extra: str) -> dict[str, str]:
        """The environment for a talkie process of this suite: tagged, so that any process
        left behind can be found (`leftover_processes`)."""
        env = dict(os.environ)
        env["TALKIE_RELIABILITY_TAG"] = self.tag
        env.setdefault("TALKIE_HOME", str(ROOT))  # engines and web/ of this checkout, wherever the binary is
        env.pop("TALKIE_TEST_ENGINE_LOG", None)
        env.pop("TALKIE_TEST_ENGINE_DELAY", None)
        env.update(extra)
        return env


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[:40]


# ---------------------------------------------------------------------------------------
# Media


_CACHE = Path(os.environ.get("TALKIE_RELIABILITY_CACHE", "/tmp/talkie-reliability-cache"))


def tool(*command: str, timeout: float = 300) -> None:
    """Runs ffmpeg, espeak-ng, ...; raises with its stderr when it fails."""
    result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{command[0]} failed: {result.stderr.decode(errors='replace')[-500:]}")


def narration(folder: Path, text: str = "Talkie never loses finished work.", name: str = "narration.wav") -> Path:
    """A short espeak-ng narration (about 2 s), copied from a cache."""
    _CACHE.mkdir(parents=True, exist_ok=True)
    cached = _CACHE / f"narration-{abs(hash(text)) % 10**8}.wav"
    if not cached.exists():
        temp = cached.with_suffix(f".tmp{os.getpid()}")
        tool("espeak-ng", "-w", str(temp), text)
        temp.rename(cached)
    path = folder / name
    shutil.copyfile(cached, path)
    return path


def template(path: Path, seconds: float = 1.0, size: str = "160x120", variant: int = 0, audio: bool = False) -> Path:
    """A small H.264 template; each `variant` has different content (so a different key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    command = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi",
               "-i", f"testsrc2=size={size}:rate=25:duration={seconds}"]
    if audio:
        command += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}", "-c:a", "aac"]
    command += ["-vf", f"hue=h={(variant * 37) % 360}", "-c:v", "libx264", "-preset", "ultrafast",
                "-pix_fmt", "yuv420p", "-f", "mp4", str(path)]
    tool(*command)
    return path


@dataclass
class Batch:
    """A narration, a folder of templates and an output folder, rendered with the test
    engine, which logs every render to `engine_log`."""

    audio: Path
    videos: Path
    out: Path
    engine_log: Path

    def run_args(self, *extra: str) -> list[str]:
        """`talkie run` for this batch with the test engine and quick retries."""
        return ["run", "--audio", str(self.audio), "--videos", str(self.videos), "--out", str(self.out),
                "--engine", "test", "--retry-delay", "0.1", *extra]

    def env(self, ctx: Context, **extra: str) -> dict[str, str]:
        return ctx.env(TALKIE_TEST_ENGINE_LOG=str(self.engine_log), **extra)


@dataclass
class Start:
    """Where a case's run starts: `media`'s inputs, with a copy of `prepared` (a folder
    holding "outputs" and "engine.log") or nothing."""

    name: str
    media: Batch
    prepared: Path | None = None

    def batch(self, folder: Path) -> Batch:
        """The inputs with outputs and engine log under `folder`, copied from `prepared`."""
        batch = Batch(audio=self.media.audio, videos=self.media.videos, out=folder / "outputs",
                      engine_log=folder / "engine.log")
        if self.prepared is not None:
            shutil.copytree(self.prepared / "outputs", batch.out, symlinks=True)
            shutil.copyfile(self.prepared / "engine.log", batch.engine_log)
        return batch

    def begin(self, ctx: Context, case: Case, folder: Path) -> tuple[Batch, dict[str, str], "Ledger"]:
        """The batch under `folder`, its environment, and a Ledger that has already checked
        (and acknowledged) the copied state."""
        batch = self.batch(folder)
        env = batch.env(ctx)
        ledger = Ledger(batch)
        if self.prepared is not None:
            for problem in ledger.observe(killed=False, env=env):
                case.fail(f"before the run: {problem}")
        return batch, env, ledger


def small_batch(folder: Path, count: int = 3, seconds: float = 1.0) -> Batch:
    """`count` distinct one-second templates and a short narration under `folder`."""
    videos = folder / "templates"
    for index in range(count):
        template(videos / f"template-{index + 1}.mp4", seconds=seconds, variant=index)
    return Batch(audio=narration(folder), videos=videos, out=folder / "outputs", engine_log=folder / "engine.log")


# ---------------------------------------------------------------------------------------
# Running talkie


def run_talkie(args: list[str], env: dict[str, str] | None = None, timeout: float = 180,
               prefix: list[str] | None = None, cwd: Path | None = None,
               binary: str | None = None) -> subprocess.CompletedProcess:
    """Runs talkie (`binary`, else talkie_bin()) to the end, or kills it after `timeout`, and
    captures its output. `prefix` goes before the binary (strace ..., say)."""
    command = [*(prefix or []), binary or talkie_bin(), *args]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=env, cwd=cwd, start_new_session=True, text=True, errors="replace")
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise RuntimeError(f"talkie {' '.join(args[:1])} did not end within {timeout:.0f} s\n{stderr[-2000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


class StatusError(Exception):
    """`talkie status` could not load the state."""


def status(out: Path, env: dict[str, str] | None = None) -> dict:
    """The state as `talkie status --json` loads it (journal replayed)."""
    result = run_talkie(["status", "--out", str(out), "--json"], env=env, timeout=60)
    if result.returncode != 0:
        raise StatusError(f"talkie status exited {result.returncode}: {result.stderr.strip()[-800:]}")
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError as error:
        raise StatusError(f"talkie status printed no JSON ({error}): {result.stdout[:300]}")


def successes(state: dict) -> dict[str, str]:
    """Item key -> output file name, for every item that succeeded."""
    return {item["key"]: item["state"].get("output", "") for item in state.get("items", [])
            if item.get("state", {}).get("status") == "success"}


def statuses(state: dict) -> dict[str, str]:
    """Item key -> status."""
    return {item["key"]: item.get("state", {}).get("status", "?") for item in state.get("items", [])}


def probe(path: Path) -> dict:
    """ffprobe's streams and format of `path` (raises when it is not a readable media file)."""
    result = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_streams", "-show_format",
                             "file:" + str(path)], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise ValueError(result.stderr.strip()[-300:] or "ffprobe failed")
    return json.loads(result.stdout)


def output_problems(out: Path, state: dict) -> list[str]:
    """Every success must have its output: a media file with video and audio whose
    metadata names the item."""
    problems = []
    for key, name in successes(state).items():
        path = out / name
        if not name or not path.is_file():
            problems.append(f"success {key[:12]} has no output file ({name!r})")
            continue
        try:
            info = probe(path)
        except (ValueError, subprocess.TimeoutExpired) as error:
            problems.append(f"output {name} of {key[:12]} is not valid media: {error}")
            continue
        kinds = {stream.get("codec_type") for stream in info.get("streams", [])}
        if not {"video", "audio"} <= kinds:
            problems.append(f"output {name} lacks {sorted({'video', 'audio'} - kinds)}")
        tags = {k.lower(): v for k, v in (info.get("format", {}).get("tags") or {}).items()}
        if tags.get("talkie_key") != key:
            problems.append(f"output {name} carries key {tags.get('talkie_key')!r}, not {key}")
    return problems


def render_counts(engine_log: Path) -> collections.Counter:
    """Renders per item key, from the test engine's own log."""
    counts: collections.Counter = collections.Counter()
    if engine_log.exists():
        for line in engine_log.read_text(errors="replace").splitlines():
            parts = line.split(" ")
            if len(parts) >= 2 and parts[0] == "render":
                counts[parts[1]] += 1
    return counts


class Ledger:
    """Follows one batch across interrupted runs and checks, after each, that no
    acknowledged success was lost, every success has a valid output, and no item rendered
    more often than the kills that hit it plus one."""

    def __init__(self, batch: Batch):
        self.batch = batch
        self.acknowledged: dict[str, str] = {}
        self.hits: collections.Counter = collections.Counter()
        self.seen = collections.Counter()

    def observe(self, killed: bool, env: dict[str, str] | None = None) -> list[str]:
        """Checks the state after a run; `killed` says the run was interrupted."""
        try:
            state = status(self.batch.out, env=env)
        except StatusError as error:
            return [f"state does not load: {error}"]
        problems = []
        done = successes(state)
        for key in self.acknowledged.keys() - done.keys():
            problems.append(f"success {key[:12]} was lost (now {statuses(state).get(key, 'missing')})")
        counts = render_counts(self.batch.engine_log)
        for key, total in counts.items():
            if killed and total > self.seen[key] and key not in done:
                self.hits[key] += 1
            if total > self.hits[key] + 1:
                problems.append(f"item {key[:12]} rendered {total} times with {self.hits[key]} kills hitting it")
        self.seen = counts
        problems += output_problems(self.batch.out, state)
        self.acknowledged.update(done)
        return problems

    def all_done(self, env: dict[str, str] | None = None, expected: int | None = None) -> list[str]:
        """After a run to completion: every item succeeded."""
        try:
            state = status(self.batch.out, env=env)
        except StatusError as error:
            return [f"state does not load: {error}"]
        problems = [f"item {key[:12]} ended {value}" for key, value in statuses(state).items() if value != "success"]
        if expected is not None and len(state.get("items", [])) != expected:
            problems.append(f"{len(state.get('items', []))} items, expected {expected}")
        return problems


def prepared_start(ctx: Context, media: Batch, name: str, count: int) -> Start | None:
    """A Start named `name` whose outputs already hold the first `count` templates of
    `media`, rendered and committed by a clean run: the earlier successes every case must
    keep. The preparation is a case of its own; None when it failed."""
    folder = ctx.scratch(f"{name}-prepared")
    with ctx.case(f"{name}: prepare a finished batch of {count}") as case:
        batch = Batch(audio=media.audio, videos=media.videos, out=folder / "outputs", engine_log=folder / "engine.log")
        first = sorted(media.videos.glob("*.mp4"))[:count]
        args = ["run", "--audio", str(media.audio), "--videos", *map(str, first), "--out", str(batch.out),
                "--engine", "test", "--retry-delay", "0.1"]
        result = run_talkie(args, env=batch.env(ctx), timeout=180)
        case.require(result.returncode == 0, f"the preparing run exited {result.returncode}: {result.stderr[-500:]}")
        ledger = Ledger(batch)
        for problem in ledger.observe(killed=False, env=batch.env(ctx)) + ledger.all_done(env=batch.env(ctx), expected=count):
            case.fail(problem)
        if not case.failures:
            return Start(name, media, prepared=folder)
    return None


def leftover_processes(tag: str) -> list[str]:
    """Processes still alive whose environment carries this suite's tag: an engine worker,
    ffmpeg or talkie that outlived its run."""
    found = []
    needle = f"TALKIE_RELIABILITY_TAG={tag}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            if needle not in environ.split(b"\0"):
                continue
            stat = (entry / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                found.append(f"zombie {entry.name}")
                continue
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry.name}: {command[:120]}")
        except OSError:
            continue
    return found


def wait_for(condition, seconds: float = 30, step: float = 0.05) -> bool:
    """Polls `condition` every `step` seconds until it holds (True) or `seconds` pass; it
    is asked once more at the deadline."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return bool(condition())


def wait_for_no_leftovers(tag: str, seconds: float = 5.0) -> list[str]:
    """Leftover processes that are still there after `seconds` (exits take a moment)."""
    deadline = time.monotonic() + seconds
    while True:
        found = leftover_processes(tag)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)
