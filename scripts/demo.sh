#!/usr/bin/env bash
# README's main command: installs what is missing (apt packages, the engines' Python
# environment, the Swift build), checks it with `talkie doctor`, then opens the studio with
# the demo batch loaded: sample templates from the public-domain astronaut photo in
# scikit-image and espeak-ng narration, ready to render with the built-in engine. Open the
# printed address and press Start; Ctrl-C stops the server (the batch resumes next time).
#   scripts/demo.sh [--port 7860] [--host 127.0.0.1]    (any `talkie serve` option)
#   TALKIE_DEMO_CLI=1 scripts/demo.sh                   renders the demo in the terminal instead
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
bin/talkie doctor
if [ -n "${TALKIE_DEMO_CLI:-}" ]; then
    set +e
    bin/talkie demo --workspace demo "$@"
    code=$?
    set -e
    # 1 = some item failed: the sample set has one template without a face, on purpose.
    [ $code -le 1 ] || exit $code
    exit 0
fi
exec bin/talkie serve --workspace demo-studio --demo "$@"
