"""Runs Talkie's reliability suites and prints a table: suite, cases tried, failures.

    python3 -m reliability [--quick] [--seed N] [--work DIR] [--keep] [SUITE ...]

--quick runs the bounded version CI runs (every suite, fewer cases); without it each suite
tries its full count. Exit status: 0 when nothing failed, 1 otherwise.
Normally started by scripts/reliability.sh, which installs what is missing first.
"""
from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from .harness import Context, talkie_bin

# In the order of the issue; each is reliability/suites/<name>.py.
SUITES = [
    "syscall_kills",
    "server_kills",
    "power_loss",
    "io_errors",
    "corrupt_state",
    "bad_inputs",
    "engines",
    "security",
    "two_writers",
]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python3 -m reliability", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suites", nargs="*", metavar="SUITE", help=f"suites to run (default: all): {', '.join(SUITES)}")
    parser.add_argument("--quick", action="store_true", help="the bounded version CI runs")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock, printed)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (kept anyway on failure)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()

    unknown = [name for name in args.suites if name not in SUITES]
    if unknown:
        parser.error(f"unknown suite {', '.join(unknown)}; the suites are {', '.join(SUITES)}")
    if not Path(talkie_bin()).exists():
        parser.error(f"no talkie binary at {talkie_bin()}: run scripts/reliability.sh (it builds one) or set TALKIE_BIN")
    seed = args.seed if args.seed is not None else int(time.time()) % 100000
    work = args.work or Path(tempfile.mkdtemp(prefix="talkie-reliability-"))
    work.mkdir(parents=True, exist_ok=True)
    mode = "quick" if args.quick else "full"
    print(f"reliability ({mode}), seed {seed}, scratch {work}, binary {talkie_bin()}", flush=True)

    results = []
    for name in args.suites or SUITES:
        module = importlib.import_module(f".suites.{name}", __package__)
        quick_seconds, full_seconds = module.BUDGET
        ctx = Context(name, args.quick, seed, work / name, quick_seconds if args.quick else full_seconds)
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        print(f"--> {name}: {module.TITLE}", flush=True)
        started = time.monotonic()
        try:
            module.run(ctx)
        except Exception as error:
            ctx.failures.append(("suite", f"the suite itself crashed: {type(error).__name__}: {error}\n"
                                          f"{traceback.format_exc(limit=6)}"))
        seconds = time.monotonic() - started
        results.append({"suite": name, "title": module.TITLE, "cases": ctx.tried, "failures": len(ctx.failures),
                        "seconds": round(seconds, 1), "details": [f"{label}: {message}" for label, message in ctx.failures],
                        "notes": ctx.notes})
        print(f"    {ctx.tried} cases, {len(ctx.failures)} failures, {seconds:.0f} s", flush=True)
        for label, message in ctx.failures[:10]:
            print(f"    FAIL {label}: {message}".rstrip(), flush=True)

    print_table(results, mode, seed)
    if args.json:
        args.json.write_text(json.dumps({"mode": mode, "seed": seed, "suites": results}, indent=2))
    failed = sum(result["failures"] for result in results)
    if failed == 0 and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    elif failed:
        print(f"scratch kept for inspection: {work}")
    return 1 if failed else 0


def print_table(results: list[dict], mode: str, seed: int) -> None:
    """The suites' notes, then the table, whose last line is the run's summary."""
    for result in results:
        for note in result["notes"]:
            print(f"note ({result['suite']}): {note}")
    print()
    print("| suite | what it tries | cases | failures | seconds |")
    print("|---|---|---:|---:|---:|")
    for result in results:
        print(f"| {result['suite']} | {result['title']} | {result['cases']} | {result['failures']} | {result['seconds']:.0f} |")
    total_cases = sum(result["cases"] for result in results)
    total_failures = sum(result["failures"] for result in results)
    total_seconds = sum(result["seconds"] for result in results)
    print(f"| **all** ({mode}, seed {seed}) | | {total_cases} | {total_failures} | {total_seconds:.0f} |")


if __name__ == "__main__":
    sys.exit(main())
