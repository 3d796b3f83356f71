#!/usr/bin/env bash
# README's main command: installs what is missing (apt packages, the engines' Python
# environment, the Swift build), checks it with `talkie doctor`, then `talkie demo`: sample
# templates from the public-domain astronaut photo in scikit-image and espeak-ng narration,
# rendered by the built-in engine into demo/outputs with a contact sheet beside each video.
# Run it again: nothing renders twice.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
bin/talkie doctor
set +e
bin/talkie demo --workspace "${TALKIE_DEMO:-demo}" "$@"
code=$?
set -e
# 1 = some item failed: the sample set has one template without a face, on purpose.
[ $code -le 1 ] || exit $code
bin/talkie status --out "${TALKIE_DEMO:-demo}/outputs"
