#!/usr/bin/env bash
# Smoke test of the wav2lip engine with real weights on a GPU machine.
#
#   scripts/gpu-smoke.sh MODEL.onnx [--gpus 0,1] [--mel wav2lip|facefusion] [--cpu] [--work DIR]
#                        [--seconds N]   (narration length; default its natural ~18 s)
#
# MODEL is a Wav2Lip-family ONNX file, such as FaceFusion's wav2lip_96.onnx or
# wav2lip_gan_96.onnx. Wav2Lip's weights are licensed for NON-COMMERCIAL use only; Talkie
# ships none and downloads none: bring your own file.
#
# What it does, stopping at the first failure with a message:
#   1. installs what is missing (scripts/setup.sh; on a machine with an NVIDIA GPU it
#      puts onnxruntime-gpu in place of onnxruntime), and checks onnxruntime offers CUDA;
#   2. makes sample media (templates from the public-domain astronaut photo, an
#      espeak-ng narration) in the work folder;
#   3. starts the engine the way a run does (`talkie doctor --engine wav2lip`): it must
#      load the model and report device cuda;
#   4. renders three templates with `talkie run --engine wav2lip --gpus LIST`, then checks
#      every item succeeded on a listed GPU and every output has video, audio and the
#      narration's duration;
#   5. prints per item: the GPU, seconds, frames per second.
#
# --cpu runs the same on the CPU (no GPU needed): it checks the script and the engine's
# whole path, and is how CI keeps this script from rotting, with a stand-in model.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
MODEL=""; GPUS=0; MEL=wav2lip; CPU=0; WORK=""; SECONDS_ARG=()
while [ $# -gt 0 ]; do
    case "$1" in
        --gpus) GPUS=${2:?--gpus needs a list such as 0,1}; shift 2 ;;
        --mel) MEL=${2:?--mel needs wav2lip or facefusion}; shift 2 ;;
        --work) WORK=${2:?--work needs a folder}; shift 2 ;;
        --cpu) CPU=1; shift ;;
        --seconds) SECONDS_ARG=(--narration-seconds "${2:?--seconds needs a number}"); shift 2 ;;
        -h|--help) usage 0 ;;
        -*) echo "error: unknown option $1" >&2; usage 2 ;;
        *) MODEL=$1; shift ;;
    esac
done
[ -n "$MODEL" ] || { echo "error: give the model file: scripts/gpu-smoke.sh MODEL.onnx" >&2; exit 2; }
[ -f "$MODEL" ] || { echo "error: the model file $MODEL does not exist" >&2; exit 2; }
MODEL=$(cd "$(dirname "$MODEL")" && pwd)/$(basename "$MODEL")
source scripts/lib.sh
fail() { echo "SMOKE TEST FAILED: $*" >&2; exit 1; }

if [ $CPU -eq 0 ]; then
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L | grep -q '^GPU' \
        || fail "no NVIDIA GPU found (nvidia-smi -L lists none); run with --cpu to check the path on the CPU"
    say "GPUs: $(nvidia-smi -L | tr '\n' ';')"
    TALKIE_GPU=1 scripts/setup.sh
    providers=$(.venv/bin/python -c 'import onnxruntime as o; print(",".join(o.get_available_providers()))')
    case "$providers" in
        *CUDAExecutionProvider*) say "onnxruntime providers: $providers" ;;
        *) fail "onnxruntime offers no CUDA provider ($providers): install CUDA 12 and cuDNN 9 (or pip install 'onnxruntime-gpu[cuda,cudnn]' in .venv)" ;;
    esac
    DEVICE=cuda
    export TALKIE_WAV2LIP_DEVICE=cuda
else
    TALKIE_GPU=0 scripts/setup.sh
    DEVICE=cpu
    export TALKIE_WAV2LIP_DEVICE=cpu
fi
TALKIE="$ROOT/.build/debug/talkie"

WORK=${WORK:-$(mktemp -d /tmp/talkie-gpu-smoke.XXXXXX)}
mkdir -p "$WORK"
say "sample media in $WORK"
.venv/bin/python engines/media_samples.py --out "$WORK/inputs" --seconds 4 --templates closeup-512,closeup-720,wide-512 "${SECONDS_ARG[@]}" >/dev/null

say "starting the engine (talkie doctor --engine wav2lip)"
doctor=$("$TALKIE" doctor --engine wav2lip --param "model=$MODEL" 2>&1) || { echo "$doctor"; fail "the engine did not start"; }
echo "$doctor" | grep 'wav2lip engine starts'
echo "$doctor" | grep -q "wav2lip engine starts (handshake): wav2lip .* on $DEVICE" || fail "the engine did not report device $DEVICE"

gpu_args=(--gpus "$GPUS"); [ $CPU -eq 1 ] && gpu_args=()
say "rendering on $([ $CPU -eq 1 ] && echo "the CPU" || echo "GPU(s) $GPUS")"
start=$(date +%s.%N)
"$TALKIE" run --engine wav2lip --param "model=$MODEL" --param "mel=$MEL" "${gpu_args[@]}" \
    --audio "$WORK/inputs/narration-en.wav" --videos "$WORK/inputs/templates" --out "$WORK/outputs" --max-attempts 1 \
    || fail "talkie run failed (see $WORK/outputs/talkie.log and $WORK/outputs/.talkie/logs/)"
end=$(date +%s.%N)

"$TALKIE" status --out "$WORK/outputs" --json > "$WORK/state.json"
.venv/bin/python - "$WORK" "$GPUS" "$CPU" "$start" "$end" <<'EOF'
import json, subprocess, sys
work, gpus, cpu, start, end = sys.argv[1], sys.argv[2].split(","), sys.argv[3] == "1", float(sys.argv[4]), float(sys.argv[5])
state = json.load(open(f"{work}/state.json"))
def probe(path):
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration:stream=codec_type,avg_frame_rate",
                          "-of", "json", path], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)
narration = float(probe(f"{work}/inputs/narration-en.wav")["format"]["duration"])
problems, total_frames = [], 0
print(f"{'template':<22}{'device':<10}{'seconds':>9}{'fps':>8}")
for item in state["items"]:
    name = item["names"][0].rsplit("/", 1)[-1]
    if item["state"]["status"] != "success":
        problems.append(f"{name}: {item['state']['status']} {item['state'].get('lastError')}")
        continue
    info = probe(f"{work}/outputs/{item['state']['output']}")
    kinds = sorted(s["codec_type"] for s in info["streams"])
    if kinds != ["audio", "video"]:
        problems.append(f"{name}: streams {kinds}")
    duration = float(info["format"]["duration"])
    if abs(duration - narration) > max(0.5, 0.02 * narration):
        problems.append(f"{name}: lasts {duration:.2f} s, the narration {narration:.2f} s")
    device = item.get("device") or "?"
    if not cpu and device not in {f"gpu {g}" for g in gpus}:
        problems.append(f"{name}: rendered on {device}, not on a listed GPU")
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    num, den = (int(x) for x in video["avg_frame_rate"].split("/"))
    frames = duration * num / max(den, 1)
    total_frames += frames
    seconds = item.get("renderSeconds") or 0
    print(f"{name:<22}{device:<10}{seconds:>9.2f}{frames / max(seconds, 1e-6):>8.1f}")
print(f"{len(state['items'])} items, {total_frames:.0f} frames in {end - start:.1f} s wall ({total_frames / (end - start):.1f} fps overall)")
if problems:
    print("SMOKE TEST FAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
    sys.exit(1)
print("SMOKE TEST PASSED")
EOF
