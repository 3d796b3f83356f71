"""Corrupt state: a damaged task_status.json, .bak or journal is recovered without rendering
any success again, or refused with a message that says what to do; never a silently empty
batch.

How: one real batch is rendered with the test engine (three good templates and one that
fails with kind "input"), giving three base states: "first run" (one snapshot, no .bak yet,
the whole history in task_status.journal.prev), "second run" (a copy whose failure is
retried, so the run has a change to record: a .bak one generation behind; a run that
changes nothing writes no new snapshot) and "killed run" (a copy run again with two more
templates and SIGKILLed while rendering the second, so task_status.journal holds a success
the snapshot lacks).
Each case copies one of them, damages its state files (empty, truncated at every
10 %, random bytes, zeros, JSON of the wrong shape, a future schema, a journal torn at its
end or in its middle, stale temp files, a missing .bak, a damaged hash cache, and
combinations), then runs the real binary:
- `talkie status --json` changes no file, and either shows every earlier success, or says
  on stderr which file is damaged, or refuses (exit 2) naming the file;
- `talkie run` (the same command again) either ends with exit 1 (the input failure is
  still a failure) with every earlier success still a success with its valid output, none
  of them rendered again (the test engine's own log), no item left pending, and the output
  naming what was damaged; or refuses with exit 2, a message naming the file and what to do,
  every byte of the state files still in the folder, and refuses again when run once more.
Cases whose damage is only what a crash leaves (a torn last journal line, stale temp
files, no .bak yet) or costs only time (the hash cache) must be recovered; a future schema
must be refused. The full run adds every 10 % cut without a .bak, more shapes and
combinations, `talkie run --out OUT` alone (the inputs from what is left of the state), and
a second run after each recovery that must render nothing.
"""
from __future__ import annotations

import contextlib
import filecmp
import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import harness

TITLE = "damaged state files are recovered or refused, never silently emptied"
BUDGET = (90, 600)

SNAPSHOT = "task_status.json"
BACKUP = "task_status.json.bak"
JOURNAL = "task_status.journal"
PREVIOUS = "task_status.journal.prev"
HASH_CACHE = ".talkie/hash-cache.json"

# Words of a refusal that tells the user what to do.
ACTION_WORDS = ("upgrade", "move", "remove", "restore", "delete", "rename", "run ", "fix", "check", "pass ")


# ---------------------------------------------------------------------------------------
# Base states


@dataclass
class Base:
    """A rendered batch whose outputs folder is copied for each case."""

    name: str
    audio: Path
    videos: list[Path]         # template folders, as given to --videos
    out: Path
    known: dict[str, str]      # key -> output of every success before the damage
    failed_key: str            # the fail-input item

    def run_args(self, out: Path) -> list[str]:
        return ["run", "--audio", str(self.audio), "--videos", *map(str, self.videos), "--out", str(out),
                "--engine", "test", "--retry-delay", "0.1"]

    def templates(self) -> list[str]:
        return sorted(path.name for folder in self.videos for path in folder.iterdir())


def build_bases(ctx: harness.Context) -> dict[str, Base]:
    """One batch rendered once ("first run"); a copy of its outputs whose failure is retried
    ("second run"); another copy run with two more templates and SIGKILLed ("killed run"). The
    copies share the narration and templates, so the keys are the same."""
    first = harness.small_batch(ctx.scratch("base-first-run"), count=3)
    harness.template(first.videos / "bad-fail-input.mp4", variant=11)
    bases = {}
    for name in ("first run", "second run", "killed run"):
        out = first.out if name == "first run" else ctx.scratch(f"base-{name}") / "outputs"
        if name != "first run":
            shutil.copytree(first.out, out, symlinks=True)
        videos = [first.videos]
        if name == "killed run":
            videos.append(out.parent / "more-templates")
        base = Base(name, first.audio, videos, out, {}, "")
        env = ctx.env(TALKIE_TEST_ENGINE_LOG=str(out.parent / f"engine-{name.replace(' ', '-')}.log"))
        if name == "killed run":
            kill_while_rendering(ctx, base, env)
        else:
            args = base.run_args(out)
            if name == "second run":
                args = ["retry", "--failed", "--out", str(out), "--engine", "test", "--retry-delay", "0.1"]
            result = harness.run_talkie(args, env=env, timeout=180)
            if result.returncode != 1:
                raise RuntimeError(f"base {name}: the run exited {result.returncode}, expected 1: {result.stderr[-500:]}")
        state = harness.status(out, env=env)
        base.known = harness.successes(state)
        failed = [item["key"] for item in state["items"] if "fail-input" in " ".join(item.get("names", []))]
        expected = 4 if name == "killed run" else 3
        if len(base.known) != expected or len(failed) != 1:
            raise RuntimeError(f"base {name}: {len(base.known)} successes and {len(failed)} failures, expected "
                               f"{expected} and 1: {harness.statuses(state)}")
        base.failed_key = failed[0]
        problems = harness.output_problems(out, state)
        if problems:
            raise RuntimeError(f"base {name}: {problems}")
        bases[name] = base
    return bases


def kill_while_rendering(ctx: harness.Context, base: Base, env: dict[str, str]) -> None:
    """A run with a new template (rendered) and a hanging one (being rendered when the run
    is SIGKILLed): its changes are in the journal only. The hanging template is removed
    afterwards so that later runs do not wait for it."""
    harness.template(base.videos[1] / "template-4.mp4", variant=12)
    hanging = harness.template(base.videos[1] / "zz-hang.mp4", variant=13)
    engine_log = Path(env["TALKIE_TEST_ENGINE_LOG"])
    process = subprocess.Popen([harness.talkie_bin(), *base.run_args(base.out), "--item-timeout", "600"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if any("zz-hang" in line for line in read_lines(engine_log)):
                break
            if process.poll() is not None:
                raise RuntimeError(f"the run to be killed ended by itself ({process.returncode})")
            time.sleep(0.05)
        else:
            raise RuntimeError("the run to be killed never reached the hanging template")
        # The hanging item's "running" record was committed before its request was sent.
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        kill_tagged(ctx.tag)
    hanging.unlink()
    state = harness.status(base.out, env=env)
    # The point of this base: changes the snapshot does not hold, in the journal.
    if not (base.out / JOURNAL).exists() or (base.out / JOURNAL).stat().st_size == 0:
        raise RuntimeError("the killed run left an empty journal")
    if "running" not in harness.statuses(state).values():
        raise RuntimeError(f"the killed run left no running item: {harness.statuses(state)}")


def kill_tagged(tag: str) -> None:
    """SIGKILLs what a killed talkie left (its engine worker, in a group of its own)."""
    for entry in harness.leftover_processes(tag):
        pid = entry.split(":", 1)[0].replace("zombie ", "")
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    harness.wait_for_no_leftovers(tag)


def read_lines(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines() if path.exists() else []


# ---------------------------------------------------------------------------------------
# Damage


Damage = Callable[[Path, random.Random], None]


def truncated(name: str, fraction: float) -> Damage:
    def damage(out: Path, rng) -> None:
        data = (out / name).read_bytes()
        (out / name).write_bytes(data[:int(len(data) * fraction)])
    return damage


def replaced(name: str, content: bytes) -> Damage:
    def damage(out: Path, rng) -> None:
        (out / name).write_bytes(content)
    return damage


def random_bytes(name: str) -> Damage:
    def damage(out: Path, rng) -> None:
        size = max(64, (out / name).stat().st_size if (out / name).exists() else 0)
        (out / name).write_bytes(bytes(rng.getrandbits(8) for _ in range(size)))
    return damage


def zeros(name: str) -> Damage:
    """What some file systems show after a power cut: the right length, all zero bytes."""
    def damage(out: Path, rng) -> None:
        (out / name).write_bytes(bytes((out / name).stat().st_size))
    return damage


def removed(name: str) -> Damage:
    def damage(out: Path, rng) -> None:
        (out / name).unlink(missing_ok=True)
    return damage


def future_schema(name: str) -> Damage:
    def damage(out: Path, rng) -> None:
        document = json.loads((out / name).read_text())
        document["schema"] = 99
        document["somethingNew"] = {"added": "by a newer Talkie"}
        (out / name).write_text(json.dumps(document, indent=2))
    return damage


def torn_tail(name: str) -> Damage:
    """A crash in the middle of an append: the first half of a record, no newline."""
    def damage(out: Path, rng) -> None:
        lines = (out / name).read_bytes().splitlines()
        record = lines[-1] if lines else b'{"seq":999999,"item":null}'
        with open(out / name, "ab") as journal:
            journal.write(record[:len(record) // 2])
    return damage


def last_line_cut(name: str) -> Damage:
    """The journal's last record cut in the middle (its newline lost with it)."""
    def damage(out: Path, rng) -> None:
        data = (out / name).read_bytes()
        start = data.rstrip(b"\n").rfind(b"\n") + 1
        (out / name).write_bytes(data[:start + (len(data) - start) // 2])
    return damage


def middle_line_damaged(name: str) -> Damage:
    """A record in the middle overwritten with garbage of the same length; the lines
    around it stay intact."""
    def damage(out: Path, rng) -> None:
        lines = (out / name).read_bytes().split(b"\n")
        records = [index for index, line in enumerate(lines) if line]
        if len(records) < 3:
            raise RuntimeError(f"{name} has {len(records)} records, too few to damage one in the middle")
        index = records[len(records) // 2]
        lines[index] = bytes(rng.choice(b"#%&*?~") for _ in range(len(lines[index])))
        (out / name).write_bytes(b"\n".join(lines))
    return damage


def stale_temps(out: Path, rng) -> None:
    """What a crash during a compaction or a render leaves: temp files beside the state
    (one of them a valid but empty state, a trap), and a half-written engine output."""
    empty_state = json.loads((out / SNAPSHOT).read_text())
    empty_state["items"] = []
    empty_state["generation"] += 5
    (out / f"{SNAPSHOT}.tmp-99999").write_text(json.dumps(empty_state))
    (out / f"{SNAPSHOT}.tmp-4242").write_bytes(b'{"schema":1,"genera')
    (out / f"{BACKUP}.tmp-31337").write_bytes((out / SNAPSHOT).read_bytes()[:100])
    tmp = out / ".talkie" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / ("0" * 32 + "-" + "1" * 32 + "-deadbeef.engine.mp4")).write_bytes(b"\0\0\0\x18ftypmp42" + bytes(500))


def everything_removed(out: Path, rng) -> None:
    for name in (SNAPSHOT, BACKUP, JOURNAL, PREVIOUS):
        (out / name).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------
# Cases


@dataclass
class Spec:
    label: str
    base: str
    damages: list[Damage]
    expect: str = "either"            # "recover", "refuse" or "either"
    names_damage: str | None = SNAPSHOT  # a word the run's output must contain when it recovered
    short_command: bool = False       # `talkie run --out OUT` instead of the full command


WRONG_SHAPES = {
    "a JSON array": b"[]\n",
    "null": b"null\n",
    "an empty object": b"{}\n",
    "items of the wrong type": b'{"schema": 1, "generation": 3, "lastSequence": 9, "items": "all of them"}\n',
    "a journal line": b'{"seq": 1, "item": null}\n',
    "a string": b'"task_status"\n',
}


def specs(quick: bool, rng: random.Random) -> list[Spec]:
    """The cases, most telling first (the quick run may stop at its budget). Quick tries
    three seeded 10 % cuts with a .bak and one without, and one seeded wrong shape; the
    full run tries every cut on both and every shape."""
    tenths = [index / 10 for index in range(1, 10)]
    cuts = sorted(rng.sample(tenths, 3)) if quick else tenths
    first_cuts = [rng.choice(tenths)] if quick else tenths
    shapes = [rng.choice(list(WRONG_SHAPES))] if quick else list(WRONG_SHAPES)
    debris = dict(expect="recover", names_damage=None)
    out = [
        Spec("snapshot empty (.bak intact)", "second run", [replaced(SNAPSHOT, b"")]),
        Spec("snapshot from a future schema", "second run", [future_schema(SNAPSHOT)], expect="refuse"),
        Spec("journal with a torn last line", "killed run", [torn_tail(JOURNAL)], **debris),
        Spec("journal all zero bytes", "killed run", [zeros(JOURNAL)], names_damage="journal"),
        Spec("snapshot random, .bak cut at 50%", "second run", [random_bytes(SNAPSHOT), truncated(BACKUP, 0.5)]),
        Spec("stale temp files beside the state", "second run", [stale_temps], **debris),
        Spec("journal damaged in the middle", "killed run", [middle_line_damaged(JOURNAL)], names_damage="journal"),
    ]
    out += [Spec(f"snapshot cut at {fraction:.0%} (.bak intact)", "second run", [truncated(SNAPSHOT, fraction)])
            for fraction in cuts]
    out += [Spec(f"first snapshot cut at {fraction:.0%} (no .bak yet)", "first run", [truncated(SNAPSHOT, fraction)])
            for fraction in first_cuts]
    out += [Spec(f"snapshot is {label} (.bak intact)", "second run", [replaced(SNAPSHOT, WRONG_SHAPES[label])])
            for label in shapes]
    out += [
        Spec("snapshot random bytes (.bak intact)", "second run", [random_bytes(SNAPSHOT)]),
        Spec("snapshot empty, .bak missing", "second run", [replaced(SNAPSHOT, b""), removed(BACKUP)]),
        Spec("snapshot damaged, .bak from a future schema", "second run",
             [truncated(SNAPSHOT, 0.3), future_schema(BACKUP)], expect="refuse"),
        Spec("every state file deleted (outputs remain)", "second run", [everything_removed], names_damage="recovered"),
        Spec("journal's last record cut in half", "killed run", [last_line_cut(JOURNAL)], **debris),
        Spec(".bak missing (snapshot intact)", "second run", [removed(BACKUP)], **debris),
        Spec("first snapshot deleted, previous journal damaged in the middle", "first run",
             [removed(SNAPSHOT), middle_line_damaged(PREVIOUS)], names_damage="journal"),
        # The hash cache only saves reading the inputs again: damaged, it must cost time only.
        Spec("hash cache cut at 50%", "second run", [truncated(HASH_CACHE, 0.5)], **debris),
        Spec("journal torn at the end, snapshot empty", "killed run", [torn_tail(JOURNAL), replaced(SNAPSHOT, b"")]),
    ]
    if quick:
        return out
    out += [
        Spec("snapshot all zero bytes (.bak intact)", "second run", [zeros(SNAPSHOT)]),
        Spec("first snapshot empty (no .bak yet)", "first run", [replaced(SNAPSHOT, b"")]),
        Spec("first snapshot random bytes (no .bak yet)", "first run", [random_bytes(SNAPSHOT)]),
        Spec("first snapshot from a future schema", "first run", [future_schema(SNAPSHOT)], expect="refuse"),
        Spec("snapshot missing, .bak random", "second run", [removed(SNAPSHOT), random_bytes(BACKUP)], names_damage=BACKUP),
        Spec("journal random bytes", "killed run", [random_bytes(JOURNAL)], names_damage="journal"),
        Spec("journal damaged in the middle, snapshot random", "killed run",
             [middle_line_damaged(JOURNAL), random_bytes(SNAPSHOT)]),
        Spec("every state file deleted (killed run)", "killed run", [everything_removed], names_damage="recovered"),
        Spec("stale temp files, snapshot empty", "second run", [stale_temps, replaced(SNAPSHOT, b"")]),
        Spec("hash cache random bytes", "second run", [random_bytes(HASH_CACHE)], **debris),
        Spec("hash cache empty, snapshot random", "killed run", [replaced(HASH_CACHE, b""), random_bytes(SNAPSHOT)]),
        # `talkie run --out OUT` alone: it must find the batch's inputs in what is left, or ask for them.
        Spec("continue: snapshot random (.bak intact)", "second run", [random_bytes(SNAPSHOT)], short_command=True),
        Spec("continue: snapshot and .bak gone", "second run", [removed(SNAPSHOT), removed(BACKUP)], short_command=True),
        Spec("continue: every state file deleted", "second run", [everything_removed], short_command=True),
        Spec("continue: journal torn at the end", "killed run", [torn_tail(JOURNAL)], short_command=True, **debris),
    ]
    for fraction in (0.1, 0.5, 0.9):
        out.append(Spec(f"snapshot cut at {fraction:.0%} (killed run)", "killed run", [truncated(SNAPSHOT, fraction)]))
        out.append(Spec(f".bak cut at {fraction:.0%}, snapshot empty", "second run",
                        [truncated(BACKUP, fraction), replaced(SNAPSHOT, b"")]))
    return out


def state_files(out: Path) -> dict[str, bytes]:
    """Every state file (snapshot, .bak, journals, their corrupt copies and temps) by name."""
    return {path.name: path.read_bytes() for path in out.iterdir() if path.name.startswith("task_status") and path.is_file()}


def folder_listing(out: Path) -> dict[str, int]:
    return {str(path.relative_to(out)): path.stat().st_size for path in out.rglob("*") if path.is_file()}


def output_problems(base: Base, out: Path, state: dict) -> list[str]:
    """harness.output_problems, without probing again an output that is byte for byte the
    base's (verified when the base was made) under the same name."""
    unchanged = {key for key, name in harness.successes(state).items()
                 if base.known.get(key) == name and (out / name).is_file()
                 and filecmp.cmp(base.out / name, out / name, shallow=False)}
    rest = {"items": [item for item in state.get("items", []) if item.get("key") not in unchanged]}
    return harness.output_problems(out, rest)


def check_refusal(case: harness.Case, result: subprocess.CompletedProcess, what: str, out: Path) -> None:
    """A refusal names the damaged state file (or, when none is left, the folder) and says
    what to do."""
    message = result.stderr.strip() + result.stdout.strip()
    case.check("task_status" in message or str(out) in message,
               f"{what} refused without naming the state file or its folder: {message[-400:]!r}")
    case.check(any(word in message.lower() for word in ACTION_WORDS),
               f"{what} refused without saying what to do: {message[-400:]!r}")


def check_evidence_kept(case: harness.Case, before: dict[str, bytes], out: Path, what: str) -> None:
    """Every state file's content must still be in the folder (a damaged file may be moved
    aside, not destroyed)."""
    after = state_files(out)
    contents = set(after.values())
    for name, data in before.items():
        if after.get(name) != data and data not in contents:
            case.fail(f"after the refused {what}, the content of {name} ({len(data)} bytes) is gone "
                      f"(state files now: {sorted(after)})")


def try_case(ctx: harness.Context, base: Base, spec: Spec) -> None:
    with ctx.case(spec.label) as case:
        folder = ctx.scratch(spec.label)
        out = folder / "outputs"
        shutil.copytree(base.out, out, symlinks=True)
        engine_log = folder / "engine.log"
        env = ctx.env(TALKIE_TEST_ENGINE_LOG=str(engine_log))
        for damage in spec.damages:
            damage(out, ctx.rng)

        # status: read-only; shows every success, or says what is damaged, or refuses.
        before = state_files(out)
        listing = folder_listing(out)
        shown = harness.run_talkie(["status", "--out", str(out), "--json"], env=env, timeout=60)
        case.check(state_files(out) == before and folder_listing(out) == listing,
                   "`talkie status` changed the folder: " + str(sorted(set(folder_listing(out).items()) ^ set(listing.items())))[:400])
        if shown.returncode == 2:
            check_refusal(case, shown, "status", out)
        elif shown.returncode == 0:
            case.check(spec.expect != "refuse", f"status showed a state that must be refused (exit 0): {shown.stdout[:200]!r}")
            try:
                items = json.loads(shown.stdout).get("items", [])
            except (json.JSONDecodeError, AttributeError) as error:
                case.fail(f"status printed no JSON state ({error}): {shown.stdout[:200]!r}")
                items = None
            if items is not None:
                missing = base.known.keys() - harness.successes({"items": items}).keys()
                if missing and not re.search(r"task_status|journal|recover", shown.stderr):
                    case.fail(f"`talkie status --json` silently shows {len(items)} items, {len(base.known) - len(missing)} of "
                              f"{len(base.known)} successes, exit 0, and nothing on stderr says the state is damaged "
                              f"or that the outputs hold more")
        else:
            case.fail(f"status exited {shown.returncode}: {shown.stderr.strip()[-300:]!r}")

        # run: recovered without rendering a success again, or refused.
        args = ["run", "--out", str(out), "--retry-delay", "0.1"] if spec.short_command else base.run_args(out)
        before = state_files(out)
        result = harness.run_talkie(args, env=env, timeout=180)
        output = result.stdout + result.stderr
        rendered = harness.render_counts(engine_log)
        again_rendered = sorted(key[:12] for key in base.known if rendered[key])
        case.check(not again_rendered, f"successes rendered again: {again_rendered} (exit {result.returncode})")
        if result.returncode == 2:
            case.check(spec.expect != "recover", f"the run refused state that only holds crash debris: {output[-400:]!r}")
            check_refusal(case, result, "run", out)
            check_evidence_kept(case, before, out, "run")
            second = harness.run_talkie(args, env=env, timeout=120)
            case.check(second.returncode == 2, f"refused once, the same run then exited {second.returncode}: "
                                               f"{(second.stdout + second.stderr)[-400:]!r}")
            case.check(not harness.render_counts(engine_log), "a refused run rendered something")
            return
        case.require(result.returncode == 1, f"the run exited {result.returncode}, expected 1 (the input failure) "
                                             f"or 2 (refused): {output[-600:]!r}")
        case.check(spec.expect != "refuse", f"a state that must be refused was used: {output[-300:]!r}")
        if spec.names_damage:
            case.check(spec.names_damage in output,
                       f"the run recovered but its output does not mention {spec.names_damage!r}: {output[-500:]!r}")
        try:
            state = harness.status(out, env=env)
        except harness.StatusError as error:
            case.fail(f"after the run the state does not load: {error}")
            return
        statuses = harness.statuses(state)
        lost = {key[:12]: statuses.get(key, "missing") for key in base.known if statuses.get(key) != "success"}
        case.check(not lost, f"earlier successes lost: {lost}")
        case.check(statuses.get(base.failed_key) == "failed",
                   f"the input failure ended {statuses.get(base.failed_key, 'missing')}, expected failed")
        templates = base.templates()
        names = {Path(name).name: item["state"]["status"] for item in state["items"] for name in item.get("names", [])}
        unfinished = {name: names.get(name, "missing") for name in templates if names.get(name) not in ("success", "failed")}
        case.check(not unfinished, f"templates left without a finished item: {unfinished}")
        for problem in output_problems(base, out, state):
            case.fail(problem)
        leftover_temps = [name for name in state_files(out) if ".tmp-" in name]
        leftover_temps += [f".talkie/tmp/{path.name}" for path in (out / ".talkie" / "tmp").glob("*")]
        case.check(not leftover_temps, f"stale temp files were not swept: {leftover_temps}")
        if not ctx.quick:
            # Once recovered, the next run has nothing to do.
            again = harness.run_talkie(args, env=env, timeout=120)
            case.check(again.returncode == 1, f"the run after the recovery exited {again.returncode}")
            case.check(harness.render_counts(engine_log) == rendered,
                       f"the run after the recovery rendered again: {dict(harness.render_counts(engine_log))}")


def run(ctx: harness.Context) -> None:
    bases: dict[str, Base] = {}
    with ctx.case("render the base batches") as case:
        bases = build_bases(ctx)
        case.check(not (bases["first run"].out / BACKUP).exists(), "after one run there is a .bak already")
        case.check((bases["second run"].out / BACKUP).exists(), "after two runs there is no .bak")
    if len(bases) < 3:
        return
    for spec in specs(ctx.quick, ctx.rng):
        if ctx.out_of_time():
            ctx.note(f"out of time: cases from {spec.label!r} on were not tried")
            break
        try_case(ctx, bases[spec.base], spec)
    leftovers = harness.wait_for_no_leftovers(ctx.tag)
    if leftovers:
        ctx.failures.append(("leftovers", f"processes left behind: {leftovers}"))
        kill_tagged(ctx.tag)
