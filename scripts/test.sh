#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test: the engines' pytest suites, the
# Swift Testing suites (unit, store crash/corruption, end-to-end with the real binary), every
# benchmark at tiny sizes (scripts/bench.sh --quick; its figures mean nothing, it only proves
# they still run), then the bounded (--quick) version of every reliability suite
# (scripts/reliability.sh), whose table of cases and failures ends the run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
scripts/setup.sh --tests
command -v swift >/dev/null 2>&1 || export PATH="/opt/swift/usr/bin:$PATH"

# The cluster tests' database: a private PostgreSQL instance (not the system's cluster).
scripts/postgres.sh start
export TALKIE_TEST_POSTGRES="$(scripts/postgres.sh url)"

# The quick benchmarks need the Benchmarks package (its debug build: about 2.5 minutes of
# CPU). It builds in the background while the Python tests run, which spend much of their
# time waiting on the processes they start.
build_benchmarks() {
    for product in talkie-bench StoreBenchmarks; do
        swift build --package-path Benchmarks --product "$product" || return $?
    done
}
bench_log=.build/benchmarks-build.log
background "$bench_log" build_benchmarks
bench_build=$BACKGROUND_PID

status=0
if [ -x .venv/bin/python ]; then
    say "engine, studio and cluster tests (pytest: engines, OpenAPI conformance, headless Chromium, PostgreSQL cluster)"
    suites=(engines/tests)
    [ -d tests/studio ] && suites+=(tests/studio)
    [ -d tests/cluster ] && suites+=(tests/cluster)
    TALKIE_SCREENSHOTS="${TALKIE_SCREENSHOTS:-$PWD/.build/screenshots}" .venv/bin/python -m pytest -q --durations=15 "${suites[@]}" || status=$?
fi
say "Swift tests"
swift test --skip-build --disable-xctest || status=$?
say "benchmarks, tiny sizes, so none rots (scripts/bench.sh --quick)"
if await_background "$bench_build" "$bench_log" "building the Benchmarks package"; then
    .venv/bin/python Benchmarks/run.py --quick || status=$?
else
    status=1
fi
say "reliability suites, bounded (scripts/reliability.sh --quick)"
.venv/bin/python -m reliability --quick || status=$?
say "done (exit status $status)"
exit $status
