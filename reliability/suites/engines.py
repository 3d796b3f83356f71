"""Misbehaving engines: a worker that exits 1, segfaults, hangs past the item timeout, writes
half an output and says done, writes garbage on stdout, floods stderr, is killed by the OOM
killer, or leaves a grandchild running. The item fails (or succeeds) as the retry policy
says, the worker is restarted for the next item, and no process of the run is left: no
zombie while it runs, no orphaned process group after it.

How: each case is a real `talkie run --engine test --max-attempts 2` over three templates,
the misbehaving one (engines/test_engine.py picks the misbehaviour from a marker in its
name) between two good ones, so the second good item needs a new worker. While it runs, a
watcher samples /proc every 0.1 s: descendants of talkie that stay zombies, the test
engine's workers and grandchildren (from TALKIE_TEST_ENGINE_START_LOG) and talkie's own
memory. Then it checks: the exit code (1, or 0 when the misbehaviour is harmless); the bad
item failed with kind "transient", after exactly the policy's attempts, with a short plain
message that says what happened; the good items succeeded with valid outputs, each rendered
once; the engine's last words are in the item's log (all of a stderr flood, while talkie's
memory stays flat); the worker was restarted (a second "start" in the engine's start log);
every worker and grandchild is gone (a grandchild whose worker died is gone within seconds,
while the run goes on); no zombie lasted more than 3 s; `harness.wait_for_no_leftovers`
finds nothing.
The OOM case makes a memory cgroup (v1 or v2) with a small limit when /sys/fs/cgroup lets
it, so the kernel's OOM killer really kills the worker; elsewhere the engine SIGKILLs itself
after allocating, and the report says so. The full run repeats every case with two workers
(`--gpus 0,1`, five templates) and three attempts, and floods 100 MB instead of 20.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import harness

TITLE = "misbehaving engines fail their item only, and leave no process behind"
BUDGET = (120, 600)

ZOMBIE_GRACE = 3.0        # seconds a child may stay unreaped (talkie reaps after reading its pipes)
GRANDCHILD_GRACE = 5.0    # seconds a grandchild may outlive its dead worker (1 s pipe grace + the kill)
OOM_LIMIT = 96 << 20      # the memory cgroup's limit: room for Python, not for the hoard


@dataclass
class Misbehaviour:
    label: str
    marker: str               # in the bad template's name; engines/test_engine.py acts on it
    words: tuple[str, ...]    # the failure message must contain one of these
    fails: bool = True        # False: harmless, every item succeeds
    worker_dies: bool = True  # the worker ends (or is killed) with the bad item
    last_words: tuple[str, ...] = ("test engine: rendering",)  # its stderr, in the item's log


MISBEHAVIOURS = [
    Misbehaviour("exit 1 mid-item", "exit1", ("died", "exited"), last_words=("exiting with status 1",)),
    Misbehaviour("segfault mid-item", "segfault", ("died", "exited", "crash", "signal", "SIGSEGV"),
                 last_words=("reading address 0",)),
    Misbehaviour("hang past the item timeout", "hang", ("did not finish within",)),
    Misbehaviour("half an output, then done", "half-output", ("rejected", "output"), worker_dies=False,
                 last_words=("and says done",)),
    Misbehaviour("garbage on stdout", "garbage", ("not a protocol message",)),
    Misbehaviour("killed by the OOM killer", "oom-killed", ("died", "exited", "killed", "memory"),
                 last_words=("until the OOM killer acts", "simulating it with SIGKILL")),
    Misbehaviour("grandchild left holding the pipes, then exit 1", "orphan", ("died", "exited"),
                 last_words=("exiting with status 1",)),
    Misbehaviour("megabytes on stderr", "stderr-flood", (), fails=False, worker_dies=False),
    Misbehaviour("grandchild left running after a good render", "grandchild", (), fails=False, worker_dies=False,
                 last_words=("started grandchild",)),
]


# ---------------------------------------------------------------------------------------
# The memory cgroup for a real OOM kill


class MemoryCgroup:
    """A memory cgroup with a small limit that the OOM case's worker moves itself into.
    `path` is None where cgroups cannot be made (not root, read-only, no memory controller)."""

    def __init__(self, name: str):
        self.path: Path | None = None
        self.version = 0
        self.why_not = ""
        for version, parent in self._candidates():
            folder = parent / name
            try:
                folder.mkdir()
            except OSError as error:
                self.why_not = f"cannot make {folder}: {error.strerror}"
                continue
            try:
                limit_file = "memory.limit_in_bytes" if version == 1 else "memory.max"
                (folder / limit_file).write_text(str(OOM_LIMIT))
                if version == 1:
                    with contextlib.suppress(OSError):  # no swap to escape into
                        (folder / "memory.memsw.limit_in_bytes").write_text(str(OOM_LIMIT))
                else:
                    with contextlib.suppress(OSError):
                        (folder / "memory.swap.max").write_text("0")
            except OSError as error:
                self.why_not = f"cannot limit {folder}: {error.strerror}"
                with contextlib.suppress(OSError):
                    folder.rmdir()
                continue
            self.path, self.version = folder, version
            return

    @staticmethod
    def _candidates():
        root = Path("/sys/fs/cgroup")
        if "memory" in _read(root / "cgroup.controllers").split():
            # cgroup v2: a child of our own cgroup needs the memory controller enabled in it.
            own = _read(Path("/proc/self/cgroup")).strip().split("::", 1)[-1].lstrip("/")
            for parent in (root / own, root):
                if "memory" in _read(parent / "cgroup.subtree_control").split():
                    yield 2, parent
        if (root / "memory" / "memory.limit_in_bytes").exists():
            yield 1, root / "memory"

    def oom_kills(self) -> int:
        if self.path is None:
            return 0
        text = _read(self.path / ("memory.oom_control" if self.version == 1 else "memory.events"))
        match = re.search(r"^oom_kill (\d+)", text, re.MULTILINE)
        return int(match.group(1)) if match else 0

    def remove(self) -> None:
        if self.path is None:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.2)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------
# Watching a run


@dataclass
class Watch:
    """What the watcher saw while talkie ran."""

    zombies: dict[int, tuple[str, float]] = field(default_factory=dict)   # pid -> (name, longest seconds seen)
    last_alive: dict[int, float] = field(default_factory=dict)            # started worker/grandchild pid -> last seen alive
    peak_rss: int = 0
    first_rss: int = 0


def proc_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, state, name) of every process."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as file:
                stat = file.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        table[int(entry.name)] = (int(fields[1]), fields[0], name)
    return table


def rss_bytes(pid: int) -> int:
    match = re.search(r"^VmRSS:\s+(\d+) kB", _read(Path(f"/proc/{pid}/status")), re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


def watch(process: subprocess.Popen, start_log: Path, watched: Watch, stop: threading.Event) -> None:
    zombie_since: dict[int, float] = {}
    while not stop.is_set():
        now = time.monotonic()
        table = proc_table()
        descendants, frontier = set(), {process.pid}
        while frontier:
            frontier = {pid for pid, (parent, _, _) in table.items() if parent in frontier} - descendants
            descendants |= frontier
        for pid in descendants:
            _, state, name = table[pid]
            if state == "Z":
                since = zombie_since.setdefault(pid, now)
                if now - since > 0.5:
                    watched.zombies[pid] = (name, now - since)
        for pid in list(zombie_since):
            if pid not in descendants or table[pid][1] != "Z":
                del zombie_since[pid]
        for pid in started_pids(start_log):
            if pid in table and table[pid][1] != "Z":
                watched.last_alive[pid] = now
        rss = rss_bytes(process.pid)
        if rss:
            watched.first_rss = watched.first_rss or rss
            watched.peak_rss = max(watched.peak_rss, rss)
        stop.wait(0.1)


def start_lines(start_log: Path) -> list[list[str]]:
    return [line.split() for line in _read(start_log).splitlines() if line.strip()]


def started_pids(start_log: Path) -> list[int]:
    return [int(parts[1]) for parts in start_lines(start_log) if len(parts) >= 2 and parts[1].isdigit()]


# ---------------------------------------------------------------------------------------
# Cases


def make_templates(folder: Path) -> dict[str, Path]:
    """Templates of different content, made once and copied into every case."""
    return {name: harness.template(folder / f"{name}.mp4", variant=index)
            for index, name in enumerate(["good-a", "good-b", "bad", "good-c", "good-d"])}


def try_case(ctx: harness.Context, pool: dict[str, Path], misbehaviour: Misbehaviour, workers: int,
             attempts: int, cgroup: MemoryCgroup | None) -> None:
    label = misbehaviour.label + (f" ({workers} workers, {attempts} attempts)" if workers > 1 or attempts != 2 else "")
    with ctx.case(label) as case:
        folder = ctx.scratch(label)
        videos = folder / "templates"
        videos.mkdir()
        bad_name = f"2-{misbehaviour.marker}.mp4"
        good_names = ["1-good.mp4", "3-good.mp4"] + (["4-good.mp4", "5-good.mp4"] if workers > 1 else [])
        for name, source in zip(good_names, ["good-a", "good-b", "good-c", "good-d"]):
            shutil.copyfile(pool[source], videos / name)
        shutil.copyfile(pool["bad"], videos / bad_name)
        batch = harness.Batch(audio=harness.narration(folder), videos=videos, out=folder / "outputs",
                              engine_log=folder / "engine.log")
        start_log = folder / "engine-starts.log"
        extra = {"TALKIE_TEST_ENGINE_START_LOG": str(start_log)}
        if misbehaviour.marker == "stderr-flood":
            extra["TALKIE_TEST_ENGINE_FLOOD_MB"] = "20" if ctx.quick else "100"
        if cgroup is not None and cgroup.path is not None:
            extra["TALKIE_TEST_ENGINE_CGROUP"] = str(cgroup.path)
        oom_before = cgroup.oom_kills() if cgroup else 0
        env = batch.env(ctx, **extra)
        timeout = "8" if misbehaviour.marker == "hang" else "90"
        args = batch.run_args("--max-attempts", str(attempts), "--item-timeout", timeout)
        if workers > 1:
            args += ["--gpus", ",".join(str(index) for index in range(workers))]

        process = subprocess.Popen([harness.talkie_bin(), *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, env=env, text=True, errors="replace", start_new_session=True)
        watched, stop = Watch(), threading.Event()
        watcher = threading.Thread(target=watch, args=(process, start_log, watched, stop), daemon=True)
        watcher.start()
        try:
            stdout, stderr = process.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            case.fail(f"talkie did not finish within 240 s: {stderr[-400:]!r}")
        finally:
            stop.set()
            watcher.join(timeout=5)

        # Exit code and items.
        expected_exit = 1 if misbehaviour.fails else 0
        case.check(process.returncode == expected_exit,
                   f"talkie exited {process.returncode}, expected {expected_exit}: {(stdout + stderr)[-500:]!r}")
        try:
            state = harness.status(batch.out, env=env)
        except harness.StatusError as error:
            case.fail(str(error))
            state = {"items": []}
        by_name = {Path(name).name: item for item in state["items"] for name in item.get("names", [])}
        for name in good_names:
            status = by_name.get(name, {}).get("state", {}).get("status", "missing")
            case.check(status == "success", f"good item {name} ended {status} (was the worker restarted?)")
        bad = by_name.get(bad_name, {}).get("state", {})
        if misbehaviour.fails:
            error = bad.get("lastError") or {}
            message = error.get("message", "")
            case.check(bad.get("status") == "failed", f"the bad item ended {bad.get('status', 'missing')}, expected failed")
            case.check(error.get("kind") == "transient", f"the bad item failed with kind {error.get('kind')!r}, expected transient")
            case.check(bad.get("attempts") == attempts, f"the bad item had {bad.get('attempts')} attempts, the policy says {attempts}")
            case.check(any(word.lower() in message.lower() for word in misbehaviour.words),
                       f"the failure message does not say what happened (expected one of {misbehaviour.words}): {message!r}")
            case.check(plain(message), f"the failure message is not a short plain sentence: {message!r}")
        else:
            case.check(bad.get("status") == "success", f"the {misbehaviour.marker} item ended {bad.get('status', 'missing')}: "
                                                       f"{(bad.get('lastError') or {}).get('message', '')!r}")
        for problem in harness.output_problems(batch.out, state):
            case.fail(problem)

        # Renders: good items once, the bad one once per attempt.
        counts = {name: 0 for name in good_names + [bad_name]}
        for line in _read(batch.engine_log).splitlines():
            parts = line.split(" ")
            if len(parts) >= 3 and parts[0] == "render":
                counts[parts[2]] = counts.get(parts[2], 0) + 1
        expected = {name: 1 for name in good_names}
        expected[bad_name] = attempts if misbehaviour.fails else 1
        case.check(counts == expected, f"renders per template {counts}, expected {expected}")

        # Workers: restarted after a death, and every worker and grandchild gone.
        lines = start_lines(start_log)
        starts = [int(parts[1]) for parts in lines if parts[0] == "start"]
        grandchildren = {int(parts[1]): int(parts[2]) for parts in lines if parts[0] == "grandchild"}
        if misbehaviour.worker_dies:
            case.check(len(starts) >= workers + 1, f"{len(starts)} worker starts for {workers} slot(s): the dead worker "
                                                   f"was not restarted")
        case.check(len(starts) <= workers + attempts + 1, f"{len(starts)} worker starts: workers restarted without cause")
        if misbehaviour.marker in ("grandchild", "orphan"):
            case.check(bool(grandchildren), "the engine started no grandchild (test engine broken?)")
        for pid, worker in grandchildren.items():
            if misbehaviour.worker_dies:
                if not case.check(pid in watched.last_alive and worker in watched.last_alive,
                                  f"the watcher never saw grandchild {pid} or its worker {worker} alive"):
                    continue
                outlived = watched.last_alive[pid] - watched.last_alive[worker]
                case.check(outlived <= GRANDCHILD_GRACE,
                           f"grandchild {pid} outlived its dead worker {worker} by {outlived:.1f} s while the run went on")
        alive = [pid for pid in starts + list(grandchildren) if alive_with_tag(pid, ctx.tag)]
        case.check(not alive, f"workers or grandchildren still alive after the run: {alive}")
        for pid, (name, seconds) in watched.zombies.items():
            case.check(seconds <= ZOMBIE_GRACE, f"zombie {pid} ({name}) stayed unreaped for {seconds:.1f} s")
        leftovers = harness.wait_for_no_leftovers(ctx.tag)
        if leftovers:
            case.fail(f"processes of the run left behind: {leftovers}")
            kill_tagged(ctx.tag)

        # The engine's stderr is in the item's log (failure messages send people there).
        key = by_name.get(bad_name, {}).get("key", "")
        item_log = batch.out / ".talkie" / "logs" / f"{key}.log"
        try:
            with open(item_log, "rb") as log:
                head = log.read(1 << 20).decode(errors="replace")
        except OSError:
            head = ""
        case.check(any(words in head for words in misbehaviour.last_words),
                   f"the item's log {item_log.name} lacks the engine's last words {misbehaviour.last_words}")

        # Case specifics.
        if misbehaviour.marker == "stderr-flood":
            flood = int(extra["TALKIE_TEST_ENGINE_FLOOD_MB"]) * 1_000_000  # the engine's MB
            growth = watched.peak_rss - watched.first_rss
            case.check(growth < max(64 << 20, flood // 2),
                       f"talkie's memory grew by {growth >> 20} MiB while the engine wrote {flood // 10**6} MB to stderr")
            tail = b""
            with contextlib.suppress(OSError), open(item_log, "rb") as log:
                log.seek(max(0, item_log.stat().st_size - 8192))
                tail = log.read()
            # docs/engine-protocol.md: the runner copies the worker's stderr into the item's log.
            case.check(item_log.is_file() and item_log.stat().st_size >= flood and b"and a last line without its end" in tail,
                       f"the item's log holds {item_log.stat().st_size if item_log.is_file() else 0} bytes, not all "
                       f"{flood // 10**6} MB the engine wrote to stderr")
        if misbehaviour.marker == "oom-killed":
            log = _read(item_log)
            real = cgroup is not None and cgroup.oom_kills() > oom_before
            ctx.note(f"{label}: " + (f"the kernel's OOM killer killed the worker {cgroup.oom_kills() - oom_before} times "
                                     f"(memory cgroup v{cgroup.version}, limit {OOM_LIMIT >> 20} MB)" if real else
                                     "simulated (the worker SIGKILLed itself after allocating): "
                                     + (cgroup.why_not if cgroup and cgroup.why_not else "no memory cgroup")))
            if cgroup is not None and cgroup.path is not None:
                case.check(real or "no OOM killer acted" in log,
                           "the worker joined a memory cgroup but neither the OOM killer nor the simulation ended it")


INTERNALS = re.compile(r"0x[0-9a-fA-F]{6,}|Error\(|Optional\(|Swift\.|Traceback|\.talkie/tmp/")


def plain(message: str) -> bool:
    """A sentence for a person: short, one line, no program internals (memory addresses,
    type names, stack traces, Talkie's own temp files)."""
    return 0 < len(message) <= 300 and "\n" not in message and not INTERNALS.search(message)


def alive_with_tag(pid: int, tag: str) -> bool:
    """A pid still running with this suite's tag (a recycled pid of another program is not ours)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return f"TALKIE_RELIABILITY_TAG={tag}".encode() in environ.split(b"\0") and state != "Z"


def kill_tagged(tag: str) -> None:
    for entry in harness.leftover_processes(tag):
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(entry.split(":", 1)[0].replace("zombie ", "")), signal.SIGKILL)


def run(ctx: harness.Context) -> None:
    pool = make_templates(ctx.scratch("templates"))
    cgroup = MemoryCgroup(f"talkie-reliability-{os.getpid()}")
    try:
        plans = [(misbehaviour, 1, 2) for misbehaviour in MISBEHAVIOURS]
        if not ctx.quick:
            plans += [(misbehaviour, 2, 3) for misbehaviour in MISBEHAVIOURS]
        for misbehaviour, workers, attempts in plans:
            if ctx.out_of_time():
                ctx.note(f"out of time: {misbehaviour.label} with {workers} workers was not tried")
                break
            try_case(ctx, pool, misbehaviour, workers, attempts, cgroup if misbehaviour.marker == "oom-killed" else None)
    finally:
        kill_tagged(ctx.tag)
        cgroup.remove()
    leftovers = harness.wait_for_no_leftovers(ctx.tag)
    if leftovers:
        ctx.failures.append(("leftovers", f"processes left behind: {leftovers}"))
