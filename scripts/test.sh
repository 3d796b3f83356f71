#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test: the engines' pytest suites, the
# Swift Testing suites (unit, store crash/corruption, end-to-end with the real binary), every
# benchmark at tiny sizes (scripts/bench.sh --quick; its figures mean nothing, it only proves
# they still run), then the bounded (--quick) version of every reliability suite
# (scripts/reliability.sh), whose table of cases and failures ends the run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --tests
command -v swift >/dev/null 2>&1 || export PATH="/opt/swift/usr/bin:$PATH"

# The cluster tests' database: a private PostgreSQL instance (not the system's cluster).
scripts/postgres.sh start
export TALKIE_TEST_POSTGRES="$(scripts/postgres.sh url)"

# The quick benchmarks need the Benchmarks package built for release: about 8 minutes of CPU,
# most of it ordo-one/benchmark's own tool. It builds in the background while the Python
# tests run, which spend much of their time waiting on the processes they start.
bench_log=.build/benchmarks-build.log
mkdir -p .build
(
    for product in talkie-bench StoreBenchmarks BenchmarkTool; do
        swift build -c release --package-path Benchmarks --product "$product" || exit $?
    done
) > "$bench_log" 2>&1 &
bench_build=$!
# Never leave that build running behind an interrupted or failed run.
# (|| true: under set -e a failing command in the trap would turn the exit status to 1)
trap 'pkill -P "$bench_build" 2>/dev/null || true; kill "$bench_build" 2>/dev/null || true' EXIT

status=0
if [ -x .venv/bin/python ]; then
    printf '\033[1m==> engine, studio and cluster tests (pytest: engines, OpenAPI conformance, headless Chromium, PostgreSQL cluster)\033[0m\n'
    suites=(engines/tests)
    [ -d tests/studio ] && suites+=(tests/studio)
    [ -d tests/cluster ] && suites+=(tests/cluster)
    TALKIE_SCREENSHOTS="${TALKIE_SCREENSHOTS:-$PWD/.build/screenshots}" .venv/bin/python -m pytest -q "${suites[@]}" || status=$?
fi
printf '\033[1m==> Swift tests\033[0m\n'
swift test --skip-build --disable-xctest || status=$?
printf '\033[1m==> benchmarks, tiny sizes, so none rots (scripts/bench.sh --quick)\033[0m\n'
if wait "$bench_build"; then
    .venv/bin/python Benchmarks/run.py --quick || status=$?
else
    status=1
    echo "error: the Benchmarks package did not build for release (the end of $bench_log):" >&2
    tail -40 "$bench_log" >&2
fi
printf '\033[1m==> reliability suites, bounded (scripts/reliability.sh --quick)\033[0m\n'
.venv/bin/python -m reliability --quick || status=$?
exit $status
