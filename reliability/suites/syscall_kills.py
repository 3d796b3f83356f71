"""SIGKILL at every file-changing system call of a run, then a run to completion: no
acknowledged success is lost, every success has its valid output, nothing renders twice
without a kill that hit it.

How: a small batch (3 one-second templates, test engine). A clean `talkie run` is traced with
strace (`-f -b execve`: talkie's threads; the engine and ffmpeg are let go at their exec) to
list its calls of write, pwrite64, fsync, fdatasync, rename, link, unlink, ftruncate (and the
other variants in `straced.TRACED`, when talkie makes them). Then, per case, a fresh output
folder, `talkie run` under `strace -e inject=NAME:signal=KILL:when=N` (killed at that call,
before it happens), the checks, `talkie run` again to the end, the checks again and "every
item is done". The checks are harness.Ledger's: the state loads, no success seen before is
lost, every success has an output with video and audio whose talkie_key tag is its key, and
no item rendered (by the engine's own log) more often than the kills that hit it plus one.

What exactly is covered. strace counts `when=N` per syscall name and per thread, so talkie
runs pinned to one CPU, where Swift's cooperative pool has one thread that makes the runner's
calls in a fixed order (see straced.py; rarely a second pool thread appears, which is why the
killed call is always read back from the trace rather than assumed). A call is identified
across runs by (syscall, file with pids and random parts masked, its occurrence on that file).
Two scenarios: "fresh" (a new batch, 3 to render) and "grown" (a finished batch of 2 gets a
third template: the paths with an existing snapshot, its .bak link and the journal rotation).
Full mode: for each scenario and each syscall name, every N from 1 to the most calls of that
name one thread made in the clean run (kills at the state's and outputs' files first, then the
other files in the output folder, then pipes, wake-ups and talkie.log, in case the budget ends
the sweep); then each call of the clean run that no kill hit yet is aimed at again: by the
path filter (-P) when its file has a stable name (this reaches the engine-stderr copier's
writes to .talkie/logs, made by a second thread whose Nth write always comes after the pool
thread's) or one made of talkie's pid (then strace attaches to a talkie started stopped, see
straced.run_attached), else by N one or two off (libdispatch's eventfd wake-ups and the event
printer's timing shift the writes to pipes a little between runs). A note gives how many of
the clean run's calls were each the killed call of a case and lists those never hit; the
eventfd wake-ups are swept but not required.
Quick mode: 7 calls spread over the fresh clean run and 3 over the grown one, first and last
included.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

from .. import harness
from . import straced

TITLE = "SIGKILL at every write/fsync/rename of a run (strace inject), then resume"
BUDGET = (100, 900)

QUICK_POINTS = {"fresh": 7, "grown": 3}


@dataclass
class Point:
    """One kill: at the nth call of `name` (of those on `paths`, when given; "{out}" stands
    for the case's output folder)."""

    scenario: harness.Start
    name: str
    n: int
    paths: tuple[str, ...] = ()
    rank: int = 2


def rank(call: straced.Call | None, out: Path) -> int:
    """What to try first when the time may not suffice for all: 0 the state and the outputs,
    1 the other files in the output folder, 2 pipes, wake-ups and the run log."""
    if call is None:
        return 2
    where = call.where(out)
    if where == "OUT" or where.startswith(("OUT/task_status", "OUT/.talkie.lock", "OUT/.talkie/tmp/")) \
            or (where.startswith("OUT/") and where.endswith(".mp4")):
        return 0
    if where.startswith("OUT") and "talkie.log" not in where:
        return 1
    return 2


def run(ctx: harness.Context) -> None:
    if not straced.tools_ready(ctx):
        return
    media = harness.small_batch(ctx.scratch("media"), count=3)
    scenarios = [harness.Start("fresh", media)]
    grown = harness.prepared_start(ctx, media, "grown", 2)  # the cases run it with all three
    if grown is not None:
        scenarios.append(grown)
    traces = []
    for scenario in scenarios:
        clean = straced.clean_trace(ctx, scenario)
        if clean is not None:
            calls, out = clean
            names = straced.per_name_counts(calls, out)
            ctx.note(f"{scenario.name}: the clean run made " + ", ".join(f"{count} {name}" for name, count in sorted(names.items()))
                     + f" (most per thread) on {len({call.tid for call in calls})} threads")
            traces.append((scenario, *clean))

    points: list[Point] = []
    for scenario, calls, out in traces:
        points += quick_points(scenario, calls, out) if ctx.quick else sweep_points(scenario, calls, out)
    points.sort(key=lambda point: point.rank)
    hit: dict[str, set] = {scenario.name: set() for scenario in scenarios}
    for index, point in enumerate(points):
        if ctx.out_of_time():
            ctx.note(f"the time budget ended the sweep: {len(points) - index} of {len(points)} kills not tried")
            break
        kill_case(ctx, point, hit[point.scenario.name])
    for scenario, calls, out in traces:
        wanted = wanted_calls(calls, out)
        if not ctx.quick:
            fill_in(ctx, scenario, calls, out, wanted, hit[scenario.name])
        missed = [identity for identity in wanted if identity not in hit[scenario.name]]
        text = f"{scenario.name}: {len(wanted) - len(missed)} of the clean run's {len(wanted)} calls were each the killed call of a case"
        if missed and not ctx.quick:
            text += "; never hit: " + "; ".join(f"{name}({where}) #{k}" for name, where, k in missed[:8])
            text += " ..." if len(missed) > 8 else ""
        ctx.note(text)
    leftovers = harness.wait_for_no_leftovers(ctx.tag, seconds=10)
    if leftovers:
        ctx.failures.append(("leftovers", f"processes left behind: {leftovers}"))


def wanted_calls(calls: list[straced.Call], out: Path) -> dict[tuple, straced.Call]:
    """Every call of the clean run a kill should hit, by identity; not the eventfd wake-ups,
    whose number varies from run to run."""
    wanted: dict[tuple, straced.Call] = {}
    for call, identity in straced.identities(calls, out):
        if "eventfd" not in identity[1]:
            wanted.setdefault(identity, call)
    return wanted


def quick_points(scenario: harness.Start, calls: list[straced.Call], out: Path) -> list[Point]:
    """A spread over the clean run, first and last call included."""
    pool = straced.pool_threads(calls, out)
    sequence = [call for call in calls if call.tid in pool and "eventfd" not in call.where(out)]
    count = min(QUICK_POINTS[scenario.name], len(sequence))
    chosen = sorted({round(i * (len(sequence) - 1) / max(1, count - 1)) for i in range(count)})
    return [Point(scenario, sequence[i].name, index_among_name(calls, sequence[i], out), rank=0) for i in chosen]


def sweep_points(scenario: harness.Start, calls: list[straced.Call], out: Path) -> list[Point]:
    """Every N of every syscall name, up to the most calls of it one thread made."""
    points = []
    for name, most in sorted(straced.per_name_counts(calls, out).items()):
        for n in range(1, most + 1):
            aimed = straced.nth_of_thread(calls, name, n)
            points.append(Point(scenario, name, n, rank=min((rank(call, out) for call in aimed), default=2)))
    return points


def fill_in(ctx: harness.Context, scenario: harness.Start, calls: list[straced.Call], out: Path,
            wanted: dict[tuple, straced.Call], hit: set) -> None:
    """Aims once more at each call no kill hit: by the path filter when its file has a stable
    name or one with talkie's pid (strace's -P matches the descriptor's file or, for rename and
    link, the first path), else by N one or two off (the eventfd wake-ups and the event
    printer's timing shift the writes a little between runs)."""
    for identity, call in wanted.items():
        if identity in hit:
            continue
        first = call.paths[0] if call.paths else ""
        template = straced.filter_for(first, out)
        if template is not None:
            # Its kth call of that name on that file, in its thread.
            k = straced.aim_index(calls, call, out, lambda other: other.name == call.name and other.paths[:1] == (first,))
            attempts = [Point(scenario, call.name, k, (template,))]
        else:
            n = index_among_name(calls, call, out)
            attempts = [Point(scenario, call.name, n + offset) for offset in (1, -1, 2, -2)]
        for point in attempts:
            if identity in hit or point.n < 1:
                continue
            if ctx.out_of_time():
                ctx.note(f"{scenario.name}: the time budget ended the second aim at missed calls")
                return
            kill_case(ctx, point, hit)


def index_among_name(calls: list[straced.Call], target: straced.Call, out: Path) -> int:
    """Which call of that name `target` is (1-based): its when=N."""
    return straced.aim_index(calls, target, out, lambda call: call.name == target.name)


def kill_case(ctx: harness.Context, point: Point, hit: set) -> None:
    """One case: killed at the point's call, checked, run to the end, checked again."""
    scenario, name, n, paths = point.scenario, point.name, point.n, point.paths
    label = f"{scenario.name}: kill at {name} #{n}" + (f" on {Path(paths[0]).name}" if paths else "")
    with ctx.case(label) as case:
        folder = ctx.scratch(f"{scenario.name}-{name}-{n}")
        batch, env, ledger = scenario.begin(ctx, case, folder)
        log = folder / "strace.log"
        inject = f"{name}:signal=KILL:when={n}"
        if any("{pid}" in path for path in paths):
            first, _ = straced.run_attached(batch.run_args(), env, log, inject,
                                            lambda pid: [straced.expand(path, batch.out, pid) for path in paths])
        else:
            first = harness.run_talkie(batch.run_args(), env=env, timeout=180, prefix=straced.prefix(
                log, inject=inject, paths=tuple(straced.expand(path, batch.out) for path in paths)))
        killed = first.returncode == -signal.SIGKILL
        case.require(killed or first.returncode == 0,
                     f"the run under injection exited {first.returncode} (expected a kill, or 0 when it made fewer "
                     f"calls): {first.stderr[-500:]}")
        calls = straced.read_calls(log)
        where = "no call (the run made fewer)"
        if killed:
            call = straced.killed_call(calls, name, n)
            if call is not None:
                hit.add(straced.identity_of(calls, call, batch.out))
                where = call.describe(batch.out)
        if batch.out.exists() or ledger.acknowledged:
            for problem in ledger.observe(killed=killed, env=env):
                case.fail(f"after the kill at {where}: {problem}")
        # else: killed before it made the output folder; there is nothing to load yet.
        second = harness.run_talkie(batch.run_args(), env=env, timeout=180)
        case.check(second.returncode == 0, f"the run after the kill at {where} exited {second.returncode}: "
                                           f"{second.stderr[-500:]}")
        for problem in ledger.observe(killed=False, env=env) + ledger.all_done(env=env, expected=3):
            case.fail(f"after the kill at {where} and a run to the end: {problem}")
