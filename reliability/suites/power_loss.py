"""Power loss: the output folder lives on a file system that keeps only what was fsynced
(lazyfs.py beside this file, a FUSE pass-through in the manner of LazyFS); power is cut at
random points of `talkie run`, every un-synced byte is dropped, the folder is mounted again,
and the state must still load, be the old or a newer generation, and keep every success that
was acknowledged before the cut.

How a cut goes: the file system freezes (from that instant nothing reaches the disk, every
operation fails), talkie and its engine are SIGKILLed, the file system drops what was not
synced and treats un-synced directory changes by a policy drawn for the cut (`keep`: they
survive, as in LazyFS; `rollback`: folders not fsynced since their last change get their
durable listing back; `mixed`: a coin per folder), and is unmounted. The cut comes after a
random delay, or exactly before the N-th fsync / rename / write / create / any mutation
(counted by the file system itself).

What is checked after each cut, on the folder mounted again:
- `talkie status` loads the state; its generation and last sequence number never go back;
- no acknowledged success is lost: one seen by a `talkie status` before the cut (the one
  after the previous cut, or one polled during the run), or printed as `done` on talkie's
  stdout (before or after the freeze: once frozen, no fsync can succeed, so a success
  reported at all was made durable before the cut);
- every success's output is a valid video with audio whose talkie_key tag is its key, and no
  item rendered more often than the cuts that hit it plus one (harness.Ledger);
- a run that ends by itself (before its cut) ends well; and after the chain's cuts a run to
  completion finishes every item.
Two cases keep the suite honest: the clean case (no cut) shows the mount is transparent
(a whole batch renders on it and survives a clean unmount), and "model bites" shows a cut
really loses what was not fsynced (a program that writes and renames without fsync loses
its data; what it fsynced survives).

Needs Debian's fuse3 and PyPI's mfusepy (found in this interpreter or in the repository's
.venv), and /dev/fuse with the right to mount (root).
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import harness
from . import lazyfs

TITLE = "power cuts on a file system that keeps only fsynced data"
BUDGET = (120, 900)

ITEMS = 3
# More attempts than cuts per chain: Talkie fails an item interrupted --max-attempts times
# (its guard against an item that kills the machine); the chains test durability, not that.
RUN_ARGS = ("--max-attempts", "20")
KIND_WEIGHTS = {"fsync": 4, "rename": 2, "mutate": 3, "write": 1, "create": 1}
DONE_LINE = re.compile(r"^done\s+.*? -> (.+) \([0-9.]+ s\)\s*$")


# ---------------------------------------------------------------------------------------
# Processes


def tagged_pids(tag: str) -> list[int]:
    """Live (not zombie) processes whose environment carries `tag`."""
    needle = f"TALKIE_RELIABILITY_TAG={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    found.append(int(entry.name))
    return found


def kill_tagged(tag: str, seconds: float = 15) -> list[int]:
    """SIGKILLs every process of this suite (talkie, its engine, a status poll) until none is
    left; returns those still alive after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        pids = tagged_pids(tag)
        if not pids or time.monotonic() > deadline:
            return pids
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


class StatusPoller:
    """Runs `talkie status` now and then during a run; every success it saw is acknowledged."""

    def __init__(self, out: Path, env: dict[str, str], interval: float):
        self.out, self.env, self.interval = out, env, interval
        self.seen: dict[str, str] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                state = harness.status(self.out, env=self.env)
            except (harness.StatusError, RuntimeError, OSError):
                continue  # a status that cannot read (mid-cut, say) acknowledges nothing
            if not self.stop.is_set():
                self.seen.update(harness.successes(state))

    def __enter__(self) -> "StatusPoller":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=90)


# ---------------------------------------------------------------------------------------
# One run, cut or not


@dataclass
class Plan:
    """Where a run is cut: after `delay` seconds, or before the `after`-th operation of `kind`."""

    kind: str  # "timer" or an operation kind of lazyfs
    after: int = 0
    delay: float = 0.0
    policy: str = "keep"
    poll_status: bool = False

    def describe(self) -> str:
        where = f"after {self.delay:.2f} s" if self.kind == "timer" else f"before {self.kind} #{self.after}"
        return f"cut {where}, policy {self.policy}{', status polled' if self.poll_status else ''}"


@dataclass
class Outcome:
    cut: bool
    returncode: int | None
    stdout: list[str] = field(default_factory=list)
    stderr: str = ""
    status_seen: dict[str, str] = field(default_factory=dict)
    crash: dict = field(default_factory=dict)
    seconds: float = 0.0

    def acknowledged_outputs(self) -> set[str]:
        """Output file names talkie printed as done."""
        names = set()
        for line in self.stdout:
            match = DONE_LINE.match(line)
            if match:
                names.add(os.path.basename(match.group(1)))
        return names


def watch(mount: lazyfs.LazyMount, process: subprocess.Popen, plan: Plan | None, poller: StatusPoller | None,
          started: float, timeout: float) -> bool:
    """Waits for the run's cut (or its end); returns True when the power was cut. At the cut
    the file system is frozen: nothing after it reaches the disk."""
    cut = False
    with poller or contextlib.nullcontext():
        while process.poll() is None:
            elapsed = time.monotonic() - started
            if elapsed > timeout:
                break
            if plan and plan.kind == "timer" and elapsed >= plan.delay:
                cut = True
                break
            if plan and plan.kind != "timer" and mount.stats().get("frozen"):
                cut = True
                break
            time.sleep(0.02)
        if plan and plan.kind != "timer" and not cut and mount.stats().get("frozen"):
            cut = True  # the armed cut came, and talkie stopped on the I/O errors before we looked
        if cut or process.poll() is None:  # (a run past its timeout is cut too)
            mount.freeze()
            return True
        if plan and plan.kind != "timer":
            mount.disarm()  # the run ended before its cut
        return False


def run_with_cut(ctx: harness.Context, mount: lazyfs.LazyMount, batch: harness.Batch, plan: Plan | None,
                 seed: int, timeout: float = 150) -> Outcome:
    """Runs `talkie run` on the mount and, unless it ends first, cuts power as `plan` says:
    freeze, kill everything of the suite, drop what was not synced. Leaves the mount
    mounted (frozen after a cut): the caller unmounts."""
    env = batch.env(ctx)
    if plan and plan.kind != "timer":
        mount.arm(plan.kind, plan.after)
    started = time.monotonic()
    process = subprocess.Popen([harness.talkie_bin(), *batch.run_args(*RUN_ARGS)], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
                               errors="replace", start_new_session=True)
    stdout: list[str] = []
    stderr: list[str] = []
    readers = [threading.Thread(target=lambda: stdout.extend(process.stdout), daemon=True),
               threading.Thread(target=lambda: stderr.append(process.stderr.read()), daemon=True)]
    for reader in readers:
        reader.start()
    poller = StatusPoller(batch.out, env, interval=ctx.rng.uniform(0.3, 0.9)) if plan and plan.poll_status else None
    cut = False
    try:
        cut = watch(mount, process, plan, poller, started, timeout)
        if cut:
            kill_tagged(ctx.tag)
    finally:
        if process.poll() is None:  # the suite itself failed: leave nothing running on the mount
            mount.freeze()
            kill_tagged(ctx.tag)
    process.wait(timeout=30)
    for reader in readers:
        reader.join(timeout=30)
    outcome = Outcome(cut=cut, returncode=process.returncode, stdout=stdout, stderr="".join(stderr),
                      status_seen=dict(poller.seen) if poller else {}, seconds=time.monotonic() - started)
    if cut:
        outcome.crash = mount.crash(plan.policy if plan else "keep", seed)
    return outcome


def unmount(ctx: harness.Context, mount: lazyfs.LazyMount) -> list[str]:
    """Unmounts; returns problems, notes a daemon that had to be killed."""
    problems = mount.close()
    for warning in mount.warnings:
        ctx.note(warning)
    mount.warnings.clear()
    return problems


def empty_files(folder: Path) -> list[str]:
    """Zero-length files under `folder` (a name that survived a cut without its data)."""
    found = []
    for path in sorted(folder.rglob("*")) if folder.exists() else []:
        with contextlib.suppress(OSError):
            if path.is_file() and path.stat().st_size == 0 and path.name != "task_status.journal":
                found.append(str(path.relative_to(folder)))
    return found


def mounts_under(folder: Path) -> list[str]:
    prefix = os.path.realpath(folder) + "/"
    with open("/proc/self/mountinfo") as mounts:
        return [line.split()[4] for line in mounts if (line.split()[4] + "/").startswith(prefix)]


# ---------------------------------------------------------------------------------------
# The cases


def model_bites(ctx: harness.Context, python: str, case: harness.Case) -> None:
    """A program that writes and renames without fsync loses its data after a cut; what it
    fsynced (file and folder) survives. Under `keep` the renamed name survives empty, under
    `rollback` the old file is back and the new name is gone."""
    program = r"""
import os, sys, time
folder = sys.argv[1]
def write(name, data, sync):
    fd = os.open(os.path.join(folder, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, data)
    if sync:
        os.fsync(fd)
    os.close(fd)
def sync_folder():
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(fd)
    os.close(fd)
write("synced.txt", b"synced", True)
write("target.txt", b"old", True)
sync_folder()
write("target.tmp", b"new content", False)   # the classic mistake: no fsync before the rename
os.rename(os.path.join(folder, "target.tmp"), os.path.join(folder, "target.txt"))
write("fresh.txt", b"fresh", False)
print("ready", flush=True)
time.sleep(120)
"""
    expected = {
        "keep": {"synced.txt": b"synced", "target.txt": b"", "fresh.txt": b""},
        "rollback": {"synced.txt": b"synced", "target.txt": b"old", "fresh.txt": None},
    }
    for policy, files in expected.items():
        folder = ctx.scratch(f"bites-{policy}")
        backing, mountpoint, state = folder / "backing", folder / "mnt", folder / "state"
        with lazyfs.LazyMount(python, backing, mountpoint, state) as mount:
            process = subprocess.Popen([python, "-c", program, str(mountpoint)], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, env=ctx.env(), text=True, start_new_session=True)
            try:
                line = process.stdout.readline()
                case.require(line.strip() == "ready", f"the writer did not get ready: {line!r} {process.stderr.read()[-500:] if process.poll() is not None else ''}")
                before = (mountpoint / "target.txt").read_bytes()
                case.check(before == b"new content", f"before the cut the mount shows {before!r}, not the written b'new content'")
                mount.freeze()
            finally:
                kill_tagged(ctx.tag)
                process.wait(timeout=30)
            report = mount.crash(policy, ctx.rng.randrange(1 << 30))
            case.check(report.get("dropped_bytes", 0) > 0, f"{policy}: the cut dropped no un-synced data: {report}")
            problems = unmount(ctx, mount)
            case.check(not problems, f"unmount: {problems}")
        with lazyfs.LazyMount(python, backing, mountpoint, state):
            for name, content in files.items():
                path = mountpoint / name
                found = path.read_bytes() if path.exists() else None
                case.check(found == content, f"{policy}: after the cut {name} holds {found!r}, expected {content!r}")


def clean_run(ctx: harness.Context, python: str, inputs: harness.Batch, case: harness.Case) -> tuple[dict, float]:
    """A whole batch on the mount with no cut: it must behave as on a plain disk and survive a
    clean unmount. Returns the file system's operation counts and the run's seconds."""
    folder = ctx.scratch("clean")
    backing, mountpoint, state = folder / "backing", folder / "mnt", folder / "state"
    batch = harness.Batch(inputs.audio, inputs.videos, mountpoint / "outputs", folder / "engine.log")
    env = batch.env(ctx)
    with lazyfs.LazyMount(python, backing, mountpoint, state) as mount:
        started = time.monotonic()
        result = harness.run_talkie(batch.run_args(), env=env, timeout=180)
        seconds = time.monotonic() - started
        counts = mount.stats().get("counts", {})
        case.check(result.returncode == 0, f"talkie run on the mount exited {result.returncode}: {result.stderr[-600:]}")
        done_lines = [line for line in result.stdout.splitlines() if DONE_LINE.match(line)]
        case.check(len(done_lines) == ITEMS, f"{len(done_lines)} items reported done, expected {ITEMS}: {result.stdout[-600:]}")
        ledger = harness.Ledger(batch)
        for problem in ledger.observe(killed=False, env=env) + ledger.all_done(env=env, expected=ITEMS):
            case.fail(problem)
        renders = harness.render_counts(batch.engine_log)
        case.check(sorted(renders.values()) == [1] * ITEMS, f"renders {dict(renders)}, expected one per item")
        before = harness.status(batch.out, env=env)
        problems = unmount(ctx, mount)
        case.check(not problems, f"unmount: {problems}")
    with lazyfs.LazyMount(python, backing, mountpoint, state):
        after = harness.status(batch.out, env=env)
        case.check(harness.successes(after) == harness.successes(before),
                   "the state changed across a clean unmount and mount")
        for problem in harness.output_problems(batch.out, after):
            case.fail(f"after a clean remount: {problem}")
    return counts, seconds


class Chain:
    """One batch followed across cuts: its backing folder, its ledger, what was acknowledged,
    and the mount it is on (mounted again after every cut; always unmounted by `close`)."""

    def __init__(self, ctx: harness.Context, python: str, inputs: harness.Batch, number: int):
        self.ctx = ctx
        self.number = number
        self.folder = ctx.scratch(f"chain-{number}")
        self.backing, self.mountpoint, self.state = self.folder / "backing", self.folder / "mnt", self.folder / "state"
        self.python = python
        self.batch = harness.Batch(inputs.audio, inputs.videos, self.mountpoint / "outputs", self.folder / "engine.log")
        self.ledger = harness.Ledger(self.batch)
        self.acknowledged_outputs: set[str] = set()
        self.generation = (-1, -1)  # (generation, lastSequence) last seen on a durable state
        self.cuts = 0
        self.cuts_made: list[str] = []
        self.broken = False
        self.current: lazyfs.LazyMount | None = None

    def mount(self) -> lazyfs.LazyMount:
        if self.current is None:
            self.current = lazyfs.LazyMount(self.python, self.backing, self.mountpoint, self.state)
            self.current.mount()
        return self.current

    def close(self) -> list[str]:
        problems = []
        if self.current:
            problems = unmount(self.ctx, self.current)
        self.current = None
        return problems

    def count_hits(self) -> None:
        """When the ledger cannot look (the state is gone or does not load, which is reported):
        the cut counts as a hit on every item rendered since its last look, so that a run to
        completion is not blamed for rendering them again."""
        counts = harness.render_counts(self.batch.engine_log)
        for key, total in counts.items():
            if total > self.ledger.seen[key]:
                self.ledger.hits[key] += 1
        self.ledger.seen = counts

    def forget_lost_state(self) -> None:
        """After the whole state was lost (and reported): start the ledger afresh."""
        self.count_hits()
        self.ledger.acknowledged.clear()
        self.acknowledged_outputs.clear()
        self.generation = (-1, -1)

    def check_after_cut(self, ctx: harness.Context, case: harness.Case, outcome: Outcome) -> None:
        """On the folder mounted again: the state loads, did not go back, and kept every
        acknowledged success with a valid output."""
        env = self.batch.env(ctx)
        self.acknowledged_outputs |= outcome.acknowledged_outputs()
        if not self.batch.out.exists():
            lost = len(self.acknowledged_outputs | set(self.ledger.acknowledged.values()) | set(outcome.status_seen.values()))
            self.forget_lost_state()
            case.require(lost == 0, f"the output folder itself is gone after the cut ({outcome.crash.get('rolled_back', [])[:4]}): "
                                    f"its entry in {self.batch.out.parent} was never fsynced, and {lost} acknowledged "
                                    f"successes went with it")
            return
        try:
            state = harness.status(self.batch.out, env=env)
        except harness.StatusError as error:
            self.count_hits()
            case.require(False, f"the state does not load after the cut: {error}")
        done = harness.successes(state)
        now = (state.get("generation", -1), state.get("lastSequence", -1))
        case.check(now[0] >= self.generation[0], f"generation went back from {self.generation[0]} to {now[0]}")
        case.check(now[1] >= self.generation[1], f"last sequence went back from {self.generation[1]} to {now[1]}")
        self.generation = max(self.generation, now)
        outputs = set(done.values())
        for name in sorted(self.acknowledged_outputs - outputs):
            case.fail(f"{name} was printed as done before the cut but is no success now "
                      f"(statuses {sorted(set(harness.statuses(state).values()))})")
        for key in sorted(outcome.status_seen.keys() - done.keys()):
            case.fail(f"success {key[:12]} seen by a talkie status during the run was lost "
                      f"(now {harness.statuses(state).get(key, 'missing')})")
        self.ledger.acknowledged.update(outcome.status_seen)
        for problem in self.ledger.observe(killed=True, env=env):
            case.fail(problem)

    def finish(self, ctx: harness.Context, case: harness.Case) -> None:
        """A run to completion after the cuts finishes every item."""
        env = self.batch.env(ctx)
        self.mount()
        result = harness.run_talkie(self.batch.run_args(*RUN_ARGS), env=env, timeout=180)
        case.check(result.returncode == 0,
                   f"the run to completion after {self.cuts} cuts {self.cuts_made} exited {result.returncode} "
                   f"(empty files: {empty_files(self.batch.out)}): {result.stderr.strip()[-600:]}")
        for problem in self.ledger.observe(killed=False, env=env) + self.ledger.all_done(env=env, expected=ITEMS):
            case.fail(problem)


def draw_plan(ctx: harness.Context, counts: dict, seconds: float, pending: float) -> Plan:
    """A random cut for a run that has `pending` (0..1) of the batch left to render."""
    rng = ctx.rng
    policy = rng.choice(lazyfs.POLICIES)
    poll = rng.random() < 0.5
    if rng.random() < 0.3 or not counts:
        return Plan("timer", delay=rng.uniform(0.02, max(0.3, seconds * pending + 0.3)), policy=policy, poll_status=poll)
    kinds = [kind for kind in KIND_WEIGHTS if counts.get(kind)]
    kind = rng.choices(kinds, weights=[KIND_WEIGHTS[kind] for kind in kinds])[0]
    return Plan(kind, after=rng.randint(1, max(1, round(counts[kind] * pending) + 2)), policy=policy, poll_status=poll)


def seconds_left(ctx: harness.Context) -> float:
    return ctx.deadline - time.monotonic()


def reserve(ctx: harness.Context) -> float:
    """Time kept for a chain's run to completion (a busy machine renders slowly)."""
    return 15.0 if ctx.quick else 25.0


def run_chain(ctx: harness.Context, chain: Chain, counts: dict, seconds: float, cuts_wanted: int) -> None:
    """Cuts one batch up to `cuts_wanted` times (fewer when a run ends before its cut)."""
    while chain.cuts < cuts_wanted and not chain.broken and seconds_left(ctx) > reserve(ctx):
        pending = 1.0 - len(chain.ledger.acknowledged) / ITEMS
        plan = draw_plan(ctx, counts, seconds, max(pending, 0.2))
        seed = ctx.rng.randrange(1 << 30)
        label = f"chain {chain.number} {plan.describe()}"
        outcome = None
        with ctx.case(label) as case:
            try:
                outcome = run_with_cut(ctx, chain.mount(), chain.batch, plan, seed)
                problems = chain.close()
                case.require(not problems, f"unmount after the cut: {problems}")
                chain.mount()  # the power is back
                if not outcome.cut:
                    # It ended before its cut: it must have ended well, and the batch is done.
                    chain.broken = True
                    case.check(outcome.returncode == 0,
                               f"the run ended by itself, before its cut, with exit {outcome.returncode} "
                               f"(the cuts before it: {chain.cuts_made}; empty files now: "
                               f"{empty_files(chain.batch.out)}): {outcome.stderr.strip()[-600:]}")
                    for problem in chain.ledger.observe(killed=False, env=chain.batch.env(ctx)):
                        case.fail(problem)
                else:
                    chain.cuts += 1
                    chain.cuts_made.append(plan.describe())
                    chain.check_after_cut(ctx, case, outcome)
            finally:
                if case.failures:
                    chain.broken = True  # one failure per chain: later cuts would repeat it
                    ctx.note(f"{label}: {outcome_summary(outcome)}")


def outcome_summary(outcome: Outcome | None) -> str:
    if outcome is None:
        return "no outcome"
    return (f"run exit {outcome.returncode} after {outcome.seconds:.1f} s, {len(outcome.acknowledged_outputs())} done on stdout, "
            f"{len(outcome.status_seen)} seen by status; dropped {outcome.crash.get('dropped_files')} files / "
            f"{outcome.crash.get('dropped_bytes')} bytes; {outcome.crash.get('rolled_back', [])[:8]}")


def run(ctx: harness.Context) -> None:
    python = lazyfs.find_python()
    if python is None or not os.path.exists("/dev/fuse"):
        with ctx.case("setup") as case:
            case.fail("no FUSE here: install Debian's fuse3 and PyPI's mfusepy (scripts/setup.sh --tests), "
                      "and run as root with /dev/fuse")
        return
    inputs = harness.small_batch(ctx.scratch("inputs"), count=ITEMS)
    try:
        with ctx.case("model bites: un-synced writes and renames are lost") as case:
            model_bites(ctx, python, case)
        counts, seconds = {}, 3.0
        with ctx.case("clean mount is transparent") as case:
            counts, seconds = clean_run(ctx, python, inputs, case)
        cuts_total = 8 if ctx.quick else 100
        cuts_per_chain = 4 if ctx.quick else 5
        made = 0
        number = 0
        while made < cuts_total and seconds_left(ctx) > 2 * reserve(ctx):
            number += 1
            chain = Chain(ctx, python, inputs, number)
            try:
                run_chain(ctx, chain, counts, seconds, min(cuts_per_chain, cuts_total - made))
                made += chain.cuts
                with ctx.case(f"chain {number}: a run to completion after {chain.cuts} cuts") as case:
                    chain.finish(ctx, case)
            finally:
                problems = chain.close()
                if problems:
                    ctx.failures.append((f"chain {number}", f"unmount: {problems}"))
        if made < cuts_total:
            ctx.note(f"{made} of {cuts_total} cuts made within the time budget")
    finally:
        kill_tagged(ctx.tag)
        for path in mounts_under(ctx.workdir):
            problems = lazyfs.unmount(Path(path))
            ctx.failures.append(("mounts", f"a mount was left behind at {path}{': ' + str(problems) if problems else ''}"))
    leftovers = harness.wait_for_no_leftovers(ctx.tag)
    if leftovers:
        ctx.failures.append(("leftovers", f"processes left behind: {leftovers}"))
