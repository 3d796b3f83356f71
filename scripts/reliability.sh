#!/usr/bin/env bash
# Proves Talkie loses no work: runs the reliability suites (fault injection at every syscall,
# server kills, power loss, I/O errors, corrupt state, bad inputs, misbehaving engines,
# security, two writers) and prints a table of suite, cases tried, failures.
#   scripts/reliability.sh                 every suite, full counts (about 35 minutes)
#   scripts/reliability.sh --quick         the bounded version CI runs (a few minutes)
#   scripts/reliability.sh [--quick] SUITE...   only these; --seed N repeats a run
# Installs what is missing first (as scripts/setup.sh --tests does). Exit 1 if any case failed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --tests
exec .venv/bin/python -m reliability "$@"
