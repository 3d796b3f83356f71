#!/usr/bin/env bash
# Regenerates BENCHMARKS.md: every benchmark side by side with its baseline, in one run.
#   scripts/bench.sh                 all sections, release build (about 25 minutes)
#   scripts/bench.sh core            one section (core, engine, studio, cluster); the others are kept
#   scripts/bench.sh --quick         tiny sizes, debug build, into .build/bench-quick/ (CI)
# Installs what is missing first (as scripts/setup.sh --tests does: hyperfine, wrk, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --tests
command -v swift >/dev/null 2>&1 || export PATH="/opt/swift/usr/bin:$PATH"
exec .venv/bin/python Benchmarks/run.py "$@"
