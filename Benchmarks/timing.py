"""Whole commands timed by hyperfine, for the benchmark scripts beside this file."""
from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path


def hyperfine(commands: dict[str, list[str]], export: Path | str, runs: int, warmup: int = 1,
              prepare: str | None = None) -> dict[str, dict]:
    """Times each named command with hyperfine (no shell, output discarded) and returns
    hyperfine's result for each name: median, min, max, mean and times in seconds, and
    `cpu`, the mean user + system seconds. Raises RuntimeError when hyperfine fails."""
    command = ["hyperfine", "--shell=none", "--style", "none", "--export-json", str(export),
               "--runs", str(runs), "--warmup", str(warmup)]
    if prepare:
        command += ["--prepare", prepare]
    for name, words in commands.items():
        command += ["-n", name, shlex.join(words)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"hyperfine failed ({', '.join(commands)}): {result.stderr.strip()[-500:]}")
    results = json.loads(Path(export).read_text())["results"]
    return {r["command"]: dict(r, cpu=r["user"] + r["system"]) for r in results}
