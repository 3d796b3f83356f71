"""scripts/gpu-smoke.sh, run in its --cpu mode with a stand-in model, so the script that
checks real weights on a GPU machine keeps working on machines without one."""
from __future__ import annotations

import os
import subprocess

from test_wav2lip import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "gpu-smoke.sh")


def test_smoke_script_passes_on_the_cpu_with_a_stand_in_model(tmp_path):
    model = build_model(tmp_path / "wav2lip_96.onnx")
    run = subprocess.run([SCRIPT, "--cpu", "--seconds", "2", "--work", str(tmp_path / "work"), model],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "wav2lip engine starts (handshake): wav2lip 1.0.0 on cpu" in run.stdout
    assert "SMOKE TEST PASSED" in run.stdout
    assert run.stdout.count(" cpu ") >= 3, run.stdout  # one line per template


def test_smoke_script_refuses_clearly(tmp_path):
    missing = subprocess.run([SCRIPT, str(tmp_path / "absent.onnx")], capture_output=True, text=True)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    model = build_model(tmp_path / "m.onnx")
    env = dict(os.environ, PATH="/usr/bin:/bin")  # no nvidia-smi here, nor on the CI machine
    if subprocess.run(["sh", "-c", "command -v nvidia-smi"], capture_output=True, env=env).returncode == 0:
        return
    no_gpu = subprocess.run([SCRIPT, model], capture_output=True, text=True, env=env)
    assert no_gpu.returncode == 1 and "no NVIDIA GPU found" in no_gpu.stderr and "--cpu" in no_gpu.stderr
