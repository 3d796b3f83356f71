#!/usr/bin/env python3
"""Runs every benchmark side by side with its baseline, in one run on one machine, and writes
BENCHMARKS.md: the machine and versions, then one section per part of Talkie.

  python3 Benchmarks/run.py [--quick] [--out FILE] [--work DIR] [SECTION...]

Sections: core (hashing, restart, durable state, memory: Benchmarks/core.py), engine (the
built-in engine against the ffmpeg floor: Benchmarks/engine.py), studio (uploads, WebSocket
latency, the API under wrk: Benchmarks/studio.py), cluster (items claimed and committed per
second in PostgreSQL as workers grow, against pgbench: Benchmarks/cluster.py; it starts the
private instance of scripts/postgres.sh). Without SECTION, all of them.

Full mode builds Talkie and the Benchmarks package in release mode and writes BENCHMARKS.md
at the root (about 25 minutes on a 2-core machine). --quick uses tiny sizes and debug
builds, writes .build/bench-quick/BENCHMARKS.md, and takes a few minutes: CI runs it so that
no benchmark rots. Use scripts/bench.sh, which installs what is missing first."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
SECTIONS = ("core", "engine", "studio", "cluster")


def say(message: str) -> None:
    print(f"\033[1m==> {message}\033[0m", file=sys.stderr, flush=True)


def build(quick: bool) -> tuple[str, str]:
    """Builds talkie and talkie-bench; returns their paths."""
    configuration = "debug" if quick else "release"
    say(f"building talkie and the benchmarks ({configuration})")
    # A full run's StoreBenchmarks is built for release by ordo-one/benchmark's plugin, which
    # runs it. A quick run's figures mean nothing, so it takes the debug build, which builds
    # in half the time, and starts StoreBenchmarks directly.
    commands = [["swift", "build", "-c", configuration, "--product", "talkie"]]
    for product in ("talkie-bench", "StoreBenchmarks") if quick else ("talkie-bench",):
        commands.append(["swift", "build", "-c", configuration, "--package-path", "Benchmarks", "--product", product])
    for command in commands:
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return (str(ROOT / ".build" / configuration / "talkie"),
            str(ROOT / "Benchmarks" / ".build" / configuration / "talkie-bench"))


def version(command: list[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
        return (result.stdout or result.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "not found"


def machine() -> list[str]:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        memory = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    except (OSError, StopIteration):
        memory = 0
    filesystem = subprocess.run(["df", "--output=fstype", "/tmp"], capture_output=True, text=True).stdout.split()[-1:]
    return [
        f"- Machine: {os.cpu_count()} × {cpu}, {memory / 1048576:.1f} GiB RAM, Linux {platform.release()}, "
        f"scratch on {' '.join(filesystem) or '?'} (`/tmp`), shared with other work: figures vary between runs.",
        f"- Versions: {version(['swift', '--version'])}; {version(['ffmpeg', '-version'])}; "
        f"{version(['xxhsum', '--version'])}; {version(['hyperfine', '--version'])}; {version(['wrk', '-v'])}; "
        f"Python {platform.python_version()}.",
    ]


def revision() -> str:
    """The commit being measured, marked when the working tree differs from it."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return (commit or "?") + (" with uncommitted changes" if dirty else "")


def provenance(parts: Path, configuration: str) -> str:
    """When, at which commit and in how long each kept section was measured: a rerun of one
    section keeps the others, which may come from an earlier commit."""
    said = []
    for name in SECTIONS:
        try:
            meta = json.loads((parts / f"{name}.meta.json").read_text())
            said.append(f"{name} {meta['date']} at commit {meta['commit']} in {meta['seconds']:.0f} s")
        except (OSError, ValueError, KeyError):
            if (parts / f"{name}.md").exists():
                said.append(f"{name} (when and at which commit not recorded)")
    return f"- Sections, each measured in one run, Talkie built in {configuration} mode: " + "; ".join(said) + "."


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, debug build: proves every benchmark still runs")
    parser.add_argument("--out", type=Path, help="the file to write (default: BENCHMARKS.md, or .build/bench-quick/BENCHMARKS.md with --quick)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/talkie-bench"), help="scratch folder (media is kept there for reruns)")
    parser.add_argument("sections", nargs="*", choices=[[], *SECTIONS], default=[], metavar="SECTION",
                        help=f"only these: {', '.join(SECTIONS)}")
    args = parser.parse_args()
    sections = args.sections or list(SECTIONS)
    out = args.out or (ROOT / ".build" / "bench-quick" / "BENCHMARKS.md" if args.quick else ROOT / "BENCHMARKS.md")
    # Each section's Markdown, kept between runs: rerunning one section keeps the others.
    parts = ROOT / ".build" / ("bench-quick" if args.quick else "bench") / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    python = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable

    talkie, bench = build(args.quick)
    env = dict(os.environ, TALKIE_BINARY=talkie, TALKIE_HOME=str(ROOT))
    quick = ["--quick"] if args.quick else []
    commands = {
        "core": [python, "Benchmarks/core.py", *quick, "--out", str(parts), "--work", str(args.work / "core"),
                 "--talkie", talkie, "--bench-bin", bench],
        "engine": [python, "Benchmarks/engine.py", *quick, "--out", str(parts), "--work", str(args.work / "engine")],
        "studio": [python, "Benchmarks/studio.py", *quick, "--out", str(parts), "--work", str(args.work / "studio")],
        "cluster": [python, "Benchmarks/cluster.py", *quick, "--out", str(parts), "--work", str(args.work / "cluster"),
                    "--talkie", talkie],
    }
    failed, took = [], {}
    for name in sections:
        say(f"benchmark: {name}{' (quick)' if args.quick else ''}")
        (parts / f"{name}.md").unlink(missing_ok=True)
        start = time.monotonic()
        if subprocess.run(commands[name], cwd=ROOT, env=env).returncode != 0 or not (parts / f"{name}.md").exists():
            failed.append(name)
        took[name] = time.monotonic() - start
        if name not in failed:
            (parts / f"{name}.meta.json").write_text(json.dumps(
                {"date": datetime.date.today().isoformat(), "commit": revision(), "seconds": round(took[name])}))

    lines = ["# Benchmarks", "",
             "Every figure is measured side by side with its baseline, in the same run on the same machine,",
             "and given as a ratio. Medians of several runs, with min–max in brackets. A target that is",
             "missed says **no**; the reason is in the section's notes.", "",
             "Regenerate: `scripts/bench.sh` (installs what is missing, builds in release mode, runs every",
             "section and rewrites this file; `scripts/bench.sh core` runs one section).", "",
             *machine(), provenance(parts, "debug" if args.quick else "release"), ""]
    for name in SECTIONS:
        part = parts / f"{name}.md"
        if part.exists():
            lines += [part.read_text().rstrip(), ""]
        else:
            lines += [f"## {name}", "", f"Not measured: `{' '.join(commands[name][1:3])}` failed or was not run.", ""]
    out.write_text("\n".join(lines))
    say(f"wrote {out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
