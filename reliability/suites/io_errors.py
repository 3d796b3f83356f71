"""I/O errors at the state's and the outputs' writes (strace -e inject=...:error=E): a clear
error, a non-zero exit when durable state could not be written, the previous state intact,
no success reported that rests on a failed write or fsync; then a clean run finishes it all.

How: a batch is part-done (template 1 rendered, committed and compacted). Each case copies
that state (or, for the "fresh batch" cases, starts from nothing: the journal's creation and a
first snapshot without .bak) and runs `talkie run --json` over all three templates with one
fault injected at one chosen call: ENOSPC on a write, EIO on an fsync, fdatasync or rename,
EXDEV on a rename or link. The call is aimed with strace's path filter (-P, which also limits
what `when=N` counts; for rename and link it matches the first path only) and N taken from a
clean traced run of the same state; a file with a random name is aimed at by N alone (its
thread's count of that syscall); files named after talkie's pid (`task_status.json.tmp-<pid>`)
are filtered by starting talkie stopped and attaching strace to its pid
(straced.run_attached). talkie is pinned to one CPU, so its calls come in one order (see
straced.py). Every case reads back from the trace which call the fault hit and tries again
(up to 3 times) when it was not the aimed one: only a hit on the aimed call counts.

What is right, per kind of call:
- durable: the journal (append, fdatasync), the snapshot (temp write, fsync, .bak link and
  rename, rename into place, journal rotation, folder fsync). Nothing reported afterwards can
  be trusted, so the run must stop: exit status non-zero; stderr's "error:" line names the file
  and the system's error text, with no Swift error dump; every item_succeeded event of the run
  rests on a journal record whose fdatasync returned 0 (checked in the trace when the journal
  is the filtered file); the item whose success record failed is never announced, and
  `talkie status` does not show it as a success afterwards either (its record was never
  confirmed: "never a success after a failed fsync"); the state loads and keeps template 1
  (part-done) and every announced success.
- item: the output's fsync, its rename into place, the output folder's fsync (before the
  success is committed). Only that attempt fails: an item_failed event that names the file
  and the error and does not claim the run stopped; the item is rendered again and succeeds
  from the new attempt (so its success never rests on the failed fsync); the run ends 0.
- harmless: the hash cache and the run log (talkie.log) are not state: the run ends 0.
Quick mode: the three faults marked quick and two others chosen by the seed.
After every case: the state loads, every success has a valid output with its key, no item
rendered more often than the failures that hit it plus one, and a clean run completes all
and leaves no snapshot temp file behind.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import harness
from . import straced

TITLE = "ENOSPC/EIO/EXDEV at the journal, snapshot and output writes (strace inject)"
BUDGET = (60, 600)
QUICK_EXTRA = 2
AIM_ATTEMPTS = 3

ERROR_TEXT = {"ENOSPC": "No space left on device", "EIO": "Input/output error", "EXDEV": "Invalid cross-device link"}
# What a raw Swift error description looks like, as opposed to a message for people.
DUMP_PATTERNS = ["Fatal error", "Stack dump", "Current stack trace", "StoreError", "EngineFailure", "errno:",
                 "(path:", "Swift.", "Foundation."]


@dataclass
class Fault:
    """One injected error: at which call, and what is right afterwards."""

    label: str
    syscall: str
    error: str
    kind: str                       # "durable", "item" or "harmless"
    filter: str | None              # -P file relative to OUT ("" = OUT itself, "{pid}" = talkie's pid);
                                    # None: no stable name, aimed by its thread's count of that syscall
    pick: Callable                  # (calls, out) -> the target call of the clean run, or None
    names: str                      # what the error message must name (relative to OUT; "{key}" = the item's)
    quick: bool = False             # always tried in --quick
    start: str = "part-done"        # or "fresh": a new batch, nothing on disk yet


def journal_write(calls, out, success: bool | None = None, nth: int = 1):
    found = [c for c in calls if c.name == "write" and c.where(out) == "OUT/task_status.journal"
             and (success is None or (_record_status(c) == "success") == success)]
    return found[nth - 1] if len(found) >= nth else None


def after(calls, first, name: str, where: str, out: Path):
    """The first call named `name` on `where` after `first`, in the same thread."""
    if first is None:
        return None
    for call in calls[calls.index(first) + 1:]:
        if call.tid == first.tid and call.name == name and call.where(out) == where:
            return call
    return None


def by_where(name: str, where: str, nth: int = 1):
    def pick(calls, out):
        found = [c for c in calls if c.name == name and c.where(out) == where]
        return found[nth - 1] if len(found) >= nth else None
    return pick


def folder_fsync_after_snapshot(calls, out):
    rename = by_where("rename", "OUT/task_status.json.tmp-PID -> OUT/task_status.json")(calls, out)
    return after(calls, rename, "fsync", "OUT", out)


def output_fsync(calls, out):
    return next((c for c in calls if c.name == "fsync" and c.where(out).startswith("OUT/.talkie/tmp/")
                 and c.where(out).endswith("-RANDOM.mp4")), None)


def output_rename(calls, out):
    return next((c for c in calls if c.name == "rename" and c.where(out).startswith("OUT/.talkie/tmp/")
                 and not c.where(out).endswith(".wav")), None)


def output_folder_fsync(calls, out):
    return after(calls, output_rename(calls, out), "fsync", "OUT", out)


FAULTS = [
    Fault("journal append ENOSPC, first commit", "write", "ENOSPC", "durable", "task_status.journal",
          lambda calls, out: journal_write(calls, out), "task_status.journal"),
    Fault("journal append ENOSPC, a success record", "write", "ENOSPC", "durable", "task_status.journal",
          lambda calls, out: journal_write(calls, out, success=True), "task_status.journal"),
    Fault("journal fdatasync EIO, first commit", "fdatasync", "EIO", "durable", "task_status.journal",
          by_where("fdatasync", "OUT/task_status.journal"), "task_status.journal"),
    Fault("journal fdatasync EIO, a success record", "fdatasync", "EIO", "durable", "task_status.journal",
          lambda calls, out: after(calls, journal_write(calls, out, success=True), "fdatasync", "OUT/task_status.journal", out),
          "task_status.journal", quick=True),
    Fault("snapshot temp write ENOSPC", "write", "ENOSPC", "durable", "task_status.json.tmp-{pid}",
          by_where("write", "OUT/task_status.json.tmp-PID"), "task_status.json.tmp-"),
    Fault("snapshot temp fsync EIO", "fsync", "EIO", "durable", "task_status.json.tmp-{pid}",
          by_where("fsync", "OUT/task_status.json.tmp-PID"), "task_status.json.tmp-", quick=True),
    Fault("backup link EXDEV", "link", "EXDEV", "durable", "task_status.json",
          lambda calls, out: next((c for c in calls if c.name == "link"), None), "task_status.json"),
    Fault("backup rename EXDEV", "rename", "EXDEV", "durable", "task_status.json.bak.tmp-{pid}",
          by_where("rename", "OUT/task_status.json.bak.tmp-PID -> OUT/task_status.json.bak"), "task_status.json.bak"),
    Fault("snapshot rename into place EXDEV", "rename", "EXDEV", "durable", "task_status.json.tmp-{pid}",
          by_where("rename", "OUT/task_status.json.tmp-PID -> OUT/task_status.json"), "task_status.json"),
    Fault("journal rotation rename EIO", "rename", "EIO", "durable", "task_status.journal",
          by_where("rename", "OUT/task_status.journal -> OUT/task_status.journal.prev"), "task_status.journal"),
    Fault("folder fsync EIO after the snapshot rename", "fsync", "EIO", "durable", "",
          folder_fsync_after_snapshot, ""),
    Fault("output fsync EIO", "fsync", "EIO", "item", None, output_fsync, "{key}", quick=True),
    Fault("output rename into place EXDEV", "rename", "EXDEV", "item", None, output_rename, "{key}"),
    Fault("output folder fsync EIO", "fsync", "EIO", "item", "", output_folder_fsync, "{key}"),
    Fault("hash cache write ENOSPC", "write", "ENOSPC", "harmless", ".talkie/hash-cache.json.tmp-{pid}",
          by_where("write", "OUT/.talkie/hash-cache.json.tmp-PID"), ""),
    Fault("run log write ENOSPC", "write", "ENOSPC", "harmless", "talkie.log",
          by_where("write", "OUT/talkie.log"), ""),
    # A new batch: its folders are made (their names synced in their parents), the journal is
    # created (its folder synced), the first snapshot has no .bak.
    Fault("fresh batch: fsync EIO of the output folder's parent", "fsync", "EIO", "durable", "..",
          by_where("fsync", "OUT/.."), "", start="fresh"),
    Fault("fresh batch: folder fsync EIO when the journal is created", "fsync", "EIO", "durable", "",
          lambda calls, out: after(calls, by_where("pwrite64", "OUT/.talkie.lock")(calls, out), "fsync", "OUT", out),
          "", start="fresh"),
    Fault("fresh batch: journal fdatasync EIO, a success record", "fdatasync", "EIO", "durable", "task_status.journal",
          lambda calls, out: after(calls, journal_write(calls, out, success=True), "fdatasync", "OUT/task_status.journal", out),
          "task_status.journal", start="fresh"),
    Fault("fresh batch: first snapshot temp write ENOSPC", "write", "ENOSPC", "durable", "task_status.json.tmp-{pid}",
          by_where("write", "OUT/task_status.json.tmp-PID"), "task_status.json.tmp-", start="fresh"),
    Fault("fresh batch: first snapshot rename into place EXDEV", "rename", "EXDEV", "durable",
          "task_status.json.tmp-{pid}", by_where("rename", "OUT/task_status.json.tmp-PID -> OUT/task_status.json"),
          "task_status.json", start="fresh"),
]


def run(ctx: harness.Context) -> None:
    if not straced.tools_ready(ctx):
        return
    faults = FAULTS
    if ctx.quick:
        # Three that matter most, and two more chosen by the seed: over many CI runs, all.
        others = [fault for fault in FAULTS if not fault.quick]
        faults = [fault for fault in FAULTS if fault.quick] + ctx.rng.sample(others, QUICK_EXTRA)
    media = harness.small_batch(ctx.scratch("media"), count=3)
    starts: dict[str, harness.Start | None] = {}
    cleans: dict[str, tuple | None] = {}
    for fault in faults:
        if ctx.out_of_time():
            ctx.note(f"the time budget ended the suite before: {fault.label}")
            break
        if fault.start not in starts:
            starts[fault.start] = harness.prepared_start(ctx, media, "part-done", 1) if fault.start == "part-done" else harness.Start("fresh", media, None)
            cleans[fault.start] = straced.clean_trace(ctx, starts[fault.start], "--json") if starts[fault.start] else None
        if cleans[fault.start] is not None:
            io_case(ctx, starts[fault.start], cleans[fault.start], fault)
    leftovers = harness.wait_for_no_leftovers(ctx.tag, seconds=10)
    if leftovers:
        ctx.failures.append(("leftovers", f"processes left behind: {leftovers}"))


def aim(fault: Fault, calls, out: Path) -> tuple[int, tuple[str, ...], straced.Call]:
    """when=N and the -P filters (with {out}/{pid} placeholders) that reach the fault's call."""
    target = fault.pick(calls, out)
    if target is None:
        raise LookupError(f"the clean run made no such call ({fault.label})")
    if fault.filter is None:
        # No stable name: count its thread's calls of that name (see straced.py).
        return straced.aim_index(calls, target, out, lambda call: call.name == target.name), (), target
    relative = fault.filter
    if "{pid}" in relative:
        n = straced.aim_index(calls, target, out,
                              lambda call: call.name == target.name and call.where(out) == target.where(out))
    else:
        path = straced.expand("{out}/" + relative, out)
        n = straced.aim_index(calls, target, out, lambda call: call.name == target.name and call.paths[:1] == (path,))
    return n, ("{out}/" + relative if relative else "{out}",), target


def io_case(ctx: harness.Context, start: harness.Start, clean, fault: Fault) -> None:
    calls, clean_out = clean
    with ctx.case(fault.label) as case:
        n, filters, target = aim(fault, calls, clean_out)
        wanted = straced.identity_of(calls, target, clean_out)
        misses = []
        for attempt in range(1, AIM_ATTEMPTS + 1):
            folder = ctx.scratch(f"{fault.label}-{attempt}")
            batch, env, ledger = start.begin(ctx, case, folder)
            earlier_successes = 1 if start.prepared is not None else 0  # template 1 of the part-done copy
            case.require(len(ledger.acknowledged) == earlier_successes,
                         f"the {start.name} copy has {len(ledger.acknowledged)} successes")
            log = folder / "strace.log"
            result = faulted_run(batch, env, log, f"{fault.syscall}:error={fault.error}:when={n}", filters)
            (folder / "faulted-run.stdout").write_text(result.stdout)   # kept for inspection (--keep)
            (folder / "faulted-run.stderr").write_text(result.stderr)
            traced = straced.read_calls(log)
            injected = [call for call in traced if call.injected_error]
            got = [straced.identity_of(traced, call, batch.out) for call in injected]
            if got == [wanted]:
                break
            # A second pool thread shifted strace's per-thread count (see straced.py): again.
            misses.append(got)
        case.require(got == [wanted], f"the fault was to hit {wanted} but hit {misses} in {AIM_ATTEMPTS} attempts "
                                      f"(when={n}, -P {filters})")
        if misses:
            ctx.note(f"{fault.label}: the fault hit its call at attempt {len(misses) + 1}")
        hit = injected[0]
        events = parse_events(result.stdout)
        announced = {event["key"]: event.get("output", "") for event in events if event.get("event") == "item_succeeded"}
        failed_attempts = [event for event in events if event.get("event") == "item_failed"]
        error_text = ERROR_TEXT[fault.error]
        what = f"{fault.error} at {hit.describe(batch.out)}"

        unconfirmed = None
        if fault.kind == "durable":
            unconfirmed = check_durable(case, fault, what, result, traced, hit, announced, batch.out, error_text)
        elif fault.kind == "item":
            check_item(case, what, result, hit, announced, failed_attempts, events, batch, error_text)
        else:
            case.check(result.returncode == 0, f"{what}: the run exited {result.returncode}, though only a cache or "
                                               f"log write failed: {result.stderr.strip()[-400:]}")
            case.check(not failed_attempts, f"{what}: items failed: {failed_attempts}")

        # The state afterwards: loads, keeps template 1 and every announced success.
        ledger.acknowledged.update(announced)
        for event in failed_attempts:
            ledger.hits[event["key"]] += 1
        for problem in ledger.observe(killed=result.returncode != 0, env=env):
            case.fail(f"after {what}: {problem}")
        if unconfirmed:
            state = harness.statuses(harness.status(batch.out, env=env))
            case.check(state.get(unconfirmed) != "success",
                       f"after {what}: talkie status shows item {unconfirmed[:12]} as success, though the run "
                       f"stopped because its record could not be made durable")
        second = harness.run_talkie(batch.run_args(), env=env, timeout=180)
        case.check(second.returncode == 0, f"the clean run after {what} exited {second.returncode}: {second.stderr[-500:]}")
        for problem in ledger.observe(killed=False, env=env) + ledger.all_done(env=env, expected=3):
            case.fail(f"after {what} and a clean run: {problem}")
        leftovers = sorted(path.name for path in batch.out.glob("task_status.json*.tmp-*"))
        case.check(not leftovers, f"after {what} and a clean run, temp files remain: {leftovers}")


def faulted_run(batch: harness.Batch, env: dict[str, str], log: Path, inject: str,
                filters: tuple[str, ...]):
    """`talkie run --json` with the fault; attached when a filter names talkie's pid."""
    args = batch.run_args("--json")
    if any("{pid}" in path for path in filters):
        result, _ = straced.run_attached(args, env, log, inject,
                                         lambda pid: [straced.expand(path, batch.out, pid) for path in filters])
        return result
    return harness.run_talkie(args, env=env, timeout=180, prefix=straced.prefix(
        log, inject=inject, paths=tuple(straced.expand(path, batch.out) for path in filters)))


def check_durable(case, fault: Fault, what: str, result, traced, hit, announced: dict, out: Path,
                  error_text: str) -> str | None:
    """Checks a run whose durable state could not be written; returns the key of the item
    whose success record failed, if the fault hit one."""
    case.check(result.returncode != 0, f"{what}: the run exited 0 though durable state could not be written")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    message = " ".join(errors)
    named = fault.names if fault.names else str(out)
    case.check(bool(errors), f"{what}: no 'error:' line on stderr: {result.stderr.strip()[-400:]!r}")
    if errors:
        case.check(named in message and error_text in message,
                   f"{what}: the error does not name {named!r} and {error_text!r}: {message[:400]!r}")
    dumps = [pattern for pattern in DUMP_PATTERNS if pattern in result.stderr]
    case.check(not dumps, f"{what}: stderr shows a raw error dump ({dumps}): {result.stderr.strip()[-400:]!r}")
    # The success record whose write or fdatasync failed is never announced.
    unconfirmed = None
    if hit.where(out) == "OUT/task_status.journal" and hit.name in ("write", "fdatasync"):
        record = hit if hit.name == "write" else last_journal_write_before(traced, hit, out)
        if record is not None and _record_status(record) == "success":
            unconfirmed = _record_key(record)
            case.check(unconfirmed not in announced,
                       f"{what}: item {unconfirmed[:12]} was announced done though its record failed")
    # With the journal filtered, the trace shows every record: each announced success rests
    # on a record whose write and following fdatasync returned in full.
    if fault.filter == "task_status.journal":
        confirmed = confirmed_successes(traced, out)
        for key in announced:
            case.check(key in confirmed, f"{what}: item {key[:12]} was announced done without a confirmed "
                                         f"journal fdatasync of its record")
    return unconfirmed


def check_item(case, what: str, result, hit, announced: dict, failed_attempts: list, events: list,
               batch: harness.Batch, error_text: str) -> None:
    case.check(result.returncode == 0, f"{what}: the run exited {result.returncode}; only one attempt should fail "
                                       f"and be retried: {result.stderr.strip()[-400:]}")
    case.require(len(failed_attempts) == 1, f"{what}: {len(failed_attempts)} item_failed events, expected 1: "
                                            f"{[e.get('message') for e in failed_attempts]}")
    failure = failed_attempts[0]
    key, message = failure["key"], failure.get("message", "")
    case.check(error_text in message and key[:12] in message,
               f"{what}: the item's error does not name its file and {error_text!r}: {message!r}")
    case.check(failure.get("will_retry") is True, f"{what}: the failed attempt is not retried: {failure}")
    if result.returncode == 0:
        case.check("run stopped" not in message,
                   f"{what}: the item's error says the run stopped, but the run went on: {message!r}")
    later = [e for e in events[events.index(failure) + 1:] if e.get("event") == "item_succeeded" and e.get("key") == key]
    earlier = [e for e in events[:events.index(failure)] if e.get("event") == "item_succeeded" and e.get("key") == key]
    case.check(not earlier, f"{what}: item {key[:12]} was announced done before its output was durable")
    case.check(len(later) == 1, f"{what}: item {key[:12]} did not succeed from a new attempt in the same run")
    renders = harness.render_counts(batch.engine_log)[key]
    case.check(renders == 2, f"{what}: item {key[:12]} rendered {renders} times; its success must come from a new "
                             f"render, not from the output whose write failed")


def last_journal_write_before(traced, call, out: Path):
    index = traced.index(call)
    for earlier in reversed(traced[:index]):
        if earlier.tid == call.tid and earlier.name == "write" and earlier.where(out) == "OUT/task_status.journal":
            return earlier
    return None


def confirmed_successes(traced, out: Path) -> set[str]:
    """Keys whose success record was written in full and then fdatasync'ed with result 0."""
    confirmed, pending = set(), []
    for call in traced:
        if call.where(out) != "OUT/task_status.journal":
            continue
        if call.name == "write":
            written = call.result.split(" ")[0]
            if _record_status(call) == "success" and written.isdigit() and int(written) > 0:
                pending.append(_record_key(call))
            elif not written.isdigit():
                pending = []
        elif call.name == "fdatasync":
            if call.result == "0":
                confirmed.update(key for key in pending if key)
            pending = []
    return confirmed


_KEY = re.compile(r'\\"key\\":\\"([0-9a-f]{32}-[0-9a-f]{32})\\"')
_STATUS = re.compile(r'\\"status\\":\\"([a-z]+)\\"')


def _record_key(call: straced.Call) -> str | None:
    match = _KEY.search(call.line)
    return match.group(1) if match else None


def _record_status(call: straced.Call) -> str | None:
    statuses = _STATUS.findall(call.line)
    return statuses[0] if len(statuses) == 1 else None


def parse_events(stdout: str) -> list[dict]:
    events = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return events
