#!/usr/bin/env bash
# Installs what Talkie needs on Debian 12 and builds it. Safe to run again: it only does
# what is missing. Used by scripts/demo.sh and scripts/test.sh (and so by README and CI).
#   scripts/setup.sh            runtime: apt packages, the engine's Python venv, the Swift build
#   scripts/setup.sh --tests    also the test tools (pytest, scikit-image) and the test build
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WITH_TESTS=0
[ "${1:-}" = "--tests" ] && WITH_TESTS=1

source scripts/lib.sh

# 1. Debian packages.
APT_PACKAGES=(ffmpeg espeak-ng libxxhash-dev zlib1g-dev xxhash python3 python3-venv python3-pip pkg-config procps)
# The tests also use strace, a real headless browser, FUSE (the power-loss suite) and
# PostgreSQL (the cluster tests, on a private instance: scripts/postgres.sh); the
# benchmarks (their --quick run is part of the tests) hyperfine and wrk.
[ $WITH_TESTS -eq 1 ] && APT_PACKAGES+=(strace curl chromium chromium-driver fonts-wqy-microhei fuse3 postgresql hyperfine wrk)
missing=()
for package in "${APT_PACKAGES[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# 2. Swift (not in Debian's archive: the toolchain must already be on PATH).
if ! command -v swift >/dev/null 2>&1; then
    for candidate in /opt/swift/usr/bin /usr/share/swift/usr/bin; do
        [ -x "$candidate/swift" ] && export PATH="$candidate:$PATH"
    done
fi
command -v swift >/dev/null 2>&1 || {
    echo "error: Swift 6.2 or newer is needed (swift was not found on PATH or in /opt/swift)." >&2
    exit 2
}

# 3. The engines' Python environment (PyPI only, pinned), rebuilt when the pins change. It
# installs in the background while Swift builds (step 4): the download is mostly waiting.
PYTHON=/usr/bin/python3
[ -x "$PYTHON" ] || PYTHON=$(command -v python3)
REQUIREMENTS=(engines/requirements.txt)
[ -f engines/requirements-wav2lip.txt ] && REQUIREMENTS+=(engines/requirements-wav2lip.txt)
[ -f engines/requirements-test.txt ] && REQUIREMENTS+=(engines/requirements-test.txt)
stamp=$(cat "${REQUIREMENTS[@]}" engines/constraints.txt engines/requirements-nodeps.txt 2>/dev/null | sha256sum | cut -c1-16)
install_venv() {
    [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
    local args=()
    for file in "${REQUIREMENTS[@]}"; do args+=(-r "$file"); done
    [ -f engines/constraints.txt ] && args+=(-c engines/constraints.txt)
    .venv/bin/python -m pip install -q "${args[@]}"
    [ -f engines/requirements-nodeps.txt ] && .venv/bin/python -m pip install -q --no-deps -r engines/requirements-nodeps.txt
    echo "$stamp" > .venv/.talkie-stamp
}
venv_job=""
venv_log=.build/venv-install.log
if [ -f engines/requirements.txt ] && [ "$(cat .venv/.talkie-stamp 2>/dev/null)" != "$stamp" ]; then
    say "installing the engine's Python environment in .venv, beside the Swift build (log: $venv_log)"
    background "$venv_log" install_venv
    venv_job=$BACKGROUND_PID
fi

# 4. The Swift build (debug: the engines do the heavy work, and one build serves demo and tests).
say "building Talkie (a first build takes a few minutes)"
if [ $WITH_TESTS -eq 1 ]; then
    swift build --build-tests 2>&1 | sed '/^\[[0-9]*\/[0-9]*\]/d'
else
    swift build --product talkie 2>&1 | sed '/^\[[0-9]*\/[0-9]*\]/d'
fi
mkdir -p bin && ln -sf "$ROOT/.build/debug/talkie" bin/talkie

if [ -n "$venv_job" ]; then
    await_background "$venv_job" "$venv_log" "installing the engine's Python environment" || exit 1
fi

# 5. With an NVIDIA GPU, onnxruntime-gpu (same version) takes the place of onnxruntime, so
# the wav2lip engine runs on CUDA. TALKIE_GPU=1 forces it, TALKIE_GPU=0 keeps the CPU build.
# The two packages own the same module: the CPU one goes first, the GPU one is then
# installed afresh (after a pin change reinstalled the CPU one, this runs again).
want_gpu=${TALKIE_GPU:-auto}
if [ "$want_gpu" = auto ]; then
    want_gpu=0
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU' && want_gpu=1
fi
if [ "$want_gpu" = 1 ] && [ -x .venv/bin/python ] && .venv/bin/python -m pip show onnxruntime >/dev/null 2>&1; then
    version=$(.venv/bin/python -m pip show onnxruntime | sed -n 's/^Version: //p')
    say "NVIDIA GPU: installing onnxruntime-gpu $version in place of onnxruntime"
    .venv/bin/python -m pip uninstall -q -y onnxruntime
    gpu_package="onnxruntime-gpu==$version"
    .venv/bin/python -m pip install -q --no-deps --force-reinstall "$gpu_package" 2>/dev/null || {
        gpu_package=onnxruntime-gpu   # no GPU build of this exact version: the newest one
        .venv/bin/python -m pip install -q --no-deps --force-reinstall "$gpu_package"
    }
    .venv/bin/python -m pip install -q "$gpu_package" -c engines/constraints.txt
fi

