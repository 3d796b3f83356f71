"""Tests of the Wav2Lip ONNX engine (engines/wav2lip) with tiny stand-in models.

No real weights are downloaded: the models are built here with onnx.helper and
have the signature of FaceFusion's wav2lip_96 (or another export's names).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import Worker

ENGINES = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSIC = os.path.join(ENGINES, "classic")
W2L = os.path.join(ENGINES, "wav2lip")
for _p in (ENGINES, CLASSIC, W2L):
    if _p not in sys.path:
        sys.path.insert(0, _p)

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

import mel as mel_mod  # noqa: E402
import paste  # noqa: E402
from model import ModelError, Wav2LipModel, choose_providers, device_of, discover  # noqa: E402

WORKER = os.path.join(W2L, "worker.py")
SR = 16000


# --- tiny models --------------------------------------------------------------------
def build_model(path, kind="conv", names=("source", "target", "output"), batch="N", size=96, seed=0,
                face_channels=6):
    """A Wav2Lip-shaped ONNX model.

    kind: "conv" - sigmoid(1x1 conv over target channels 3-5 + 0.1 * mean(source)), random weights;
          "identity" - target channels 3-5 (the reference crop); "constant" - 0.5 everywhere.
    """
    mel_name, face_name, out_name = names
    rng = np.random.default_rng(seed)
    inits = [helper.make_tensor("starts", TensorProto.INT64, [1], [3]),
             helper.make_tensor("ends", TensorProto.INT64, [1], [6]),
             helper.make_tensor("axes", TensorProto.INT64, [1], [1])]
    nodes = [helper.make_node("Slice", [face_name, "starts", "ends", "axes"], ["ref"])]
    if kind == "conv":
        w = (np.eye(3) * 2.0 + rng.normal(0, 0.3, (3, 3))).astype(np.float32).reshape(3, 3, 1, 1)
        b = rng.normal(0, 0.1, 3).astype(np.float32)
        inits += [helper.make_tensor("W", TensorProto.FLOAT, [3, 3, 1, 1], w.ravel()),
                  helper.make_tensor("B", TensorProto.FLOAT, [3], b),
                  helper.make_tensor("k", TensorProto.FLOAT, [], [0.1])]
        nodes += [helper.make_node("Conv", ["ref", "W", "B"], ["c"]),
                  helper.make_node("ReduceMean", [mel_name], ["mm"], axes=[1, 2, 3], keepdims=1),
                  helper.make_node("Mul", ["mm", "k"], ["mk"]),
                  helper.make_node("Add", ["c", "mk"], ["pre"]),
                  helper.make_node("Sigmoid", ["pre"], [out_name])]
    elif kind == "identity":
        nodes += [helper.make_node("Identity", ["ref"], [out_name])]
    elif kind == "constant":
        inits += [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
                  helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])]
        nodes += [helper.make_node("Mul", ["ref", "zero"], ["z"]),
                  helper.make_node("Add", ["z", "half"], [out_name])]
    graph = helper.make_graph(
        nodes, "tiny_wav2lip",
        [helper.make_tensor_value_info(mel_name, TensorProto.FLOAT, [batch, 1, 80, 16]),
         helper.make_tensor_value_info(face_name, TensorProto.FLOAT, [batch, face_channels, size, size])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [batch, 3, size, size])], initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("w2l_models")
    return {
        "ff": build_model(d / "wav2lip_96.onnx"),
        "ff1": build_model(d / "wav2lip_96_b1.onnx", batch=1),
        "ff3": build_model(d / "wav2lip_96_b3.onnx", batch=3),
        "other": build_model(d / "other.onnx", names=("mel_spectrogram", "video_frames", "predicted"), seed=1),
        "identity": build_model(d / "identity.onnx", kind="identity"),
        "constant": build_model(d / "constant.onnx", kind="constant"),
        "wrong": build_model(d / "wrong.onnx", kind="identity", face_channels=3, size=64),
        "garbage": _write(d / "garbage.onnx", b"this is not an onnx file"),
    }


def _write(path, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


# --- signature discovery --------------------------------------------------------------
def test_signature_facefusion_names(models):
    m = Wav2LipModel(models["ff"], "cpu")
    s = m.sig
    assert (s.mel_name, s.face_name, s.out_name, s.size, s.dynamic_batch) == ("source", "target", "output", 96, True)
    assert m.device == "cpu" and m.max_batch(8) == 8


def test_signature_other_names_mapped_by_shape(models):
    m = Wav2LipModel(models["other"], "cpu")
    assert (m.sig.mel_name, m.sig.face_name, m.sig.out_name) == ("mel_spectrogram", "video_frames", "predicted")
    # input order does not matter either
    s = discover([("frames", [1, 6, 96, 96], "tensor(float)"), ("audio", [1, 1, 80, 16], "tensor(float)")],
                 [("y", [1, 3, 96, 96], "tensor(float)")])
    assert (s.mel_name, s.face_name, s.dynamic_batch) == ("audio", "frames", False)
    assert Wav2LipModel(models["ff1"], "cpu").max_batch(8) == 1


@pytest.mark.parametrize("which", ["missing", "wrong", "garbage"])
def test_bad_model_errors_name_file_and_signature(models, tmp_path, which):
    path = str(tmp_path / "nope.onnx") if which == "missing" else models[which]
    with pytest.raises(ModelError) as ei:
        Wav2LipModel(path, "cpu")
    msg = str(ei.value)
    assert path in msg and "(N,1,80,16)" in msg and "(N,6,S,S)" in msg and "(N,3,S,S)" in msg


def test_provider_selection():
    assert choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider"]) == \
        ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], "cpu") == ["CPUExecutionProvider"]
    assert choose_providers(["AzureExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(ModelError):
        choose_providers(["CPUExecutionProvider"], "cuda")
    # onnxruntime-gpu without a usable GPU falls back to CPU: the session's providers decide
    assert device_of(["CUDAExecutionProvider", "CPUExecutionProvider"]) == "cuda"
    assert device_of(["CPUExecutionProvider"]) == "cpu"


# --- mel front ends ---------------------------------------------------------------------
def _sine(freq, seconds=1.0, amp=0.5):
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _ref_slaney_filters():
    """librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600), written out per filter."""
    def h2m(f):
        return f / (200 / 3) if f < 1000 else 15.0 + math.log(f / 1000) / (math.log(6.4) / 27)

    def m2h(m):
        return m * (200 / 3) if m < 15.0 else 1000 * math.exp((m - 15.0) * math.log(6.4) / 27)

    lo, hi = h2m(55.0), h2m(7600.0)
    centres = [m2h(lo + (hi - lo) * i / 81) for i in range(82)]
    bank = np.zeros((80, 401))
    for i in range(80):
        a, c, b = centres[i], centres[i + 1], centres[i + 2]
        for j in range(401):
            f = j * 20.0  # 16000 / 800
            if a < f <= c:
                bank[i, j] = (f - a) / (c - a)
            elif c < f < b:
                bank[i, j] = (b - f) / (b - c)
        bank[i] *= 2.0 / (b - a)
    return bank, centres


def test_slaney_filters_match_reference():
    bank, centres = _ref_slaney_filters()
    np.testing.assert_allclose(mel_mod.slaney_mel_filters(), bank, atol=1e-9)
    assert abs(mel_mod.hz_to_mel_slaney(1000.0) - 15.0) < 1e-12
    assert abs(centres[0] - 55.0) < 1e-9 and abs(centres[-1] - 7600.0) < 1e-6


def test_wav2lip_mel_against_direct_dft():
    wav = _sine(1000.0, 0.5) + _sine(300.0, 0.5, 0.2)
    got = mel_mod.wav2lip_mel(wav)
    n = len(wav)
    assert got.shape == (80, 1 + n // 200)
    # reference: pre-emphasis, reflect padding (librosa 0.7 center=True), periodic Hann, a direct DFT per frame
    x = np.asarray(wav, np.float64)
    y = np.concatenate([[x[0]], x[1:] - 0.97 * x[:-1]])
    yp = np.pad(y, 400, mode="reflect")
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(800) / 800)
    kk = np.arange(401)[:, None] * np.arange(800)[None, :]
    dft = np.exp(-2j * np.pi * kk / 800)
    bank, _ = _ref_slaney_filters()
    ref = np.zeros((80, got.shape[1]))
    for t in range(got.shape[1]):
        mag = np.abs(dft @ (yp[200 * t:200 * t + 800] * win))
        db = 20 * np.log10(np.maximum(1e-5, bank @ mag)) - 20
        ref[:, t] = np.clip(8 * (db + 100) / 100 - 4, -4, 4)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    assert got.min() >= -4 and got.max() <= 4


def _band_of(freq, centres):
    return int(np.argmin([abs(c - freq) for c in centres[1:81]]))


@pytest.mark.parametrize("freq", [440.0, 1000.0, 3000.0])
def test_wav2lip_mel_sine_peak(freq):
    s = mel_mod.wav2lip_mel(_sine(freq))
    _, centres = _ref_slaney_filters()
    mid = s[:, 10:-10].mean(axis=1)
    assert abs(int(np.argmax(mid)) - _band_of(freq, centres)) <= 1
    assert mid.max() > 0 and mid.min() < -1.0
    # silence is the floor
    assert np.all(mel_mod.wav2lip_mel(np.zeros(SR, np.float32)) == -4.0)


def test_facefusion_stft_matches_scipy():
    from scipy import signal

    rng = np.random.default_rng(3)
    for n in (SR, 12345, 801, 60 * SR + 77):  # the last one spans several STFT blocks
        x = rng.normal(0, 0.3, n)
        ref = np.abs(signal.stft(x, nperseg=800, nfft=800, noverlap=600)[2])
        got = mel_mod.stft_scipy(x)
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-10)


def test_facefusion_mel_against_scipy_reference():
    from scipy import signal

    wav = _sine(1000.0, 0.5) + _sine(250.0, 0.5, 0.1)
    got = mel_mod.facefusion_mel(wav)
    # reference: FaceFusion's pipeline written with scipy (lfilter, stft, windows.triang)
    x = wav / np.max(np.abs(wav))
    x = signal.lfilter([1.0, -0.97], [1.0], x)
    spec = np.abs(signal.stft(x, nperseg=800, nfft=800, noverlap=600)[2])
    pts = np.linspace(2595 * np.log10(1 + 55 / 700), 2595 * np.log10(1 + 7600 / 700), 82)
    idx = np.floor(801 * (700 * (10 ** (pts / 2595) - 1)) / 16000).astype(np.int16)
    bank = np.zeros((80, 401))
    for i in range(80):
        bank[i, idx[i]:idx[i + 1]] = signal.windows.triang(idx[i + 1] - idx[i])
    ref = np.clip(np.log10(np.maximum(1e-5, bank @ spec)) * 1.6 + 3.2, -4, 4)
    assert got.shape == ref.shape == (80, spec.shape[1])
    np.testing.assert_allclose(got, ref, atol=1e-4)
    np.testing.assert_allclose(mel_mod.facefusion_filters(), bank, atol=1e-12)
    # the 1 kHz tone (FFT bin 50) peaks in the filter that covers bin 50
    band = int(np.nonzero((idx[:-2] <= 50) & (idx[1:-1] > 50))[0][0])
    assert int(np.argmax(got[:, 10:-10].mean(axis=1))) == band
    assert got.min() >= -4 and got.max() <= 4


def test_front_ends_differ_and_select():
    w = _sine(700.0)
    a, b = mel_mod.melspectrogram(w, "wav2lip"), mel_mod.melspectrogram(w, "facefusion")
    assert a.shape[0] == b.shape[0] == 80 and not np.allclose(a[:, :a.shape[1] - 2], b[:, :a.shape[1] - 2])
    with pytest.raises(mel_mod.MelError):
        mel_mod.melspectrogram(w, "librosa")


def test_mel_chunks_per_frame():
    T = 161  # 2 s of 16 kHz audio with the wav2lip front end
    spec = np.tile(np.arange(T, dtype=np.float32), (80, 1))
    for fps in (25.0, 30.0, 29.97):
        for i in range(int(2 * fps)):
            c = mel_mod.frame_chunk(spec, i, fps)
            assert c.shape == (80, 16)
            start = int(i * (80.0 / fps))
            if start + 16 <= T:
                assert c[0, 0] == start  # Wav2Lip: start = int(80 * i / fps)
            else:
                assert c[0, 0] == T - 16  # the last 16 columns, as inference.py
            assert np.all(np.diff(c[0]) == 1)
    assert mel_mod.frame_start(1, 25) == 3 and mel_mod.frame_start(5, 25) == 16 and mel_mod.frame_start(1, 30) == 2
    # shorter than one window: padded at the end with the floor
    short = np.full((80, 5), 1.0, np.float32)
    short[:, 0] = -4.0
    c = mel_mod.frame_chunk(short, 0, 25)
    assert c.shape == (80, 16) and np.all(c[:, 5:] == -4.0) and np.all(c[:, 1:5] == 1.0)


# --- crop / paste geometry --------------------------------------------------------
def _face_frame():
    """A 320x240 RGB frame with a smooth pattern and fake landmarks of a face at (150, 110)."""
    yy, xx = np.mgrid[0:240, 0:320].astype(np.float32)
    img = np.stack([128 + 60 * np.sin(xx / 23.0), 128 + 60 * np.cos(yy / 17.0), 100 + 0.3 * xx], axis=2)
    lm = np.array([[110, 60], [190, 60], [110, 150], [190, 150], [150, 160]], np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), lm


def _run_paste(model_path, frame, lm):
    m = Wav2LipModel(model_path, "cpu")
    box = paste.face_box(lm)
    mat = paste.crop_matrix(box, m.size)
    crp = paste.crop(frame, mat, m.size)
    out = m.run(np.zeros((1, 1, 80, 16), np.float32), paste.model_input(crp)[None])[0]
    res = frame.copy()
    paste.paste(res, paste.model_output(out), crp, mat, box, color_fix=False)
    return res, box


def test_box_smoothing_matches_inference_py_by_hand():
    # get_smoothened_boxes([0, 5, 10, 15, 20, 25], T=5), worked out by hand: the first two
    # windows are raw, the tail windows are boxes[1:] as already updated in place.
    got = paste.smoothened_boxes(np.array([[0.0], [5.0], [10.0], [15.0], [20.0], [25.0]]))[:, 0]
    assert np.allclose(got, [10.0, 15.0, 17.0, 18.4, 19.08, 18.896])
    # shorter than T: boxes[n - T:] wraps to the end of the array, as in Python
    assert np.allclose(paste.smoothened_boxes(np.array([[1.0], [2.0], [3.0], [10.0]]))[:, 0], [10.0] * 4)
    assert np.allclose(paste.smoothened_boxes(np.array([[4.0], [8.0]]))[:, 0], [6.0, 7.0])


def test_streaming_box_smoother_equals_the_whole_video_version():
    rng = np.random.default_rng(3)
    for trial in range(60):
        n = int(rng.integers(1, 40))
        boxes = [None if rng.random() < 0.15 else tuple(rng.uniform(0, 500, 3)) for _ in range(n)]
        smoother = paste.BoxSmoother()
        out = []
        for k, b in enumerate(boxes):
            out += smoother.push(k, b)
            assert len(boxes[:k + 1]) - len(out) <= paste.SMOOTH_T - 1, "at most T-1 frames wait"
        out += smoother.finish()
        assert [k for k, _ in out] == list(range(n)), "every frame comes out once, in order"
        # expected: each run of frames with a face smoothed as a whole video
        expected, run = [None] * n, []
        for k in range(n + 1):
            if k < n and boxes[k] is not None:
                run.append(k)
                continue
            if run:
                for j, v in zip(run, paste.smoothened_boxes([boxes[j] for j in run])):
                    expected[j] = v
            run = []
        for (k, got), want in zip(out, expected):
            assert (got is None) == (want is None), (trial, k)
            if got is not None:
                assert np.allclose(got, want), (trial, k, got, want)


def test_crop_box_padding_and_input_layout():
    frame, lm = _face_frame()
    x0, y0, side = paste.face_box(lm)
    assert side == 110  # height 100 + 10 px below the chin (pads 0,10,0,0) > width 80
    assert abs((y0 + side / 2) - 115) < 1e-6 and abs((x0 + side / 2) - 150) < 1e-6
    crp = paste.crop(frame, paste.crop_matrix((x0, y0, side), 96), 96)
    inp = paste.model_input(crp)
    assert inp.shape == (6, 96, 96) and inp.dtype == np.float32
    assert np.all(inp[:3, 48:] == 0) and np.allclose(inp[:3, :48], inp[3:, :48])
    assert np.allclose(inp[3:].transpose(1, 2, 0)[:, :, ::-1] * 255, crp, atol=1e-3)  # BGR
    # the crop is the frame's face region: crop pixel centre (48, 48) ~ frame (150, 115)
    assert np.abs(crp[48, 48].astype(int) - frame[115, 150].astype(int)).max() <= 6


def test_paste_identity_leaves_frame_nearly_unchanged(models):
    frame, lm = _face_frame()
    res, _ = _run_paste(models["identity"], frame, lm)
    d = np.abs(res.astype(int) - frame.astype(int))
    assert d.mean() < 0.5 and d.max() <= 40


def test_paste_constant_changes_only_the_mouth_box(models):
    frame, lm = _face_frame()
    res, box = _run_paste(models["constant"], frame, lm)
    changed = np.any(res != frame, axis=2)
    x0, y0, side = box
    ys, xs = np.nonzero(changed)
    assert len(ys) > 1000
    assert ys.min() >= y0 + side / 2 - 1 and ys.max() <= y0 + side + 1
    assert xs.min() >= x0 - 1 and xs.max() <= x0 + side + 1
    # inside the box, away from the feathered edge, the pixel is the model's grey
    cy, cx = int(y0 + side * 0.78), int(x0 + side / 2)
    assert np.abs(res[cy, cx].astype(int) - 128).max() <= 2
    # colour kept: with color_fix the mean colour of the mouth region stays the original's
    m = Wav2LipModel(models["constant"], "cpu")
    mat = paste.crop_matrix(box, 96)
    crp = paste.crop(frame, mat, 96)
    out = m.run(np.zeros((1, 1, 80, 16), np.float32), paste.model_input(crp)[None])[0]
    fixed = paste.paste(frame.copy(), paste.model_output(out), crp, mat, box, color_fix=True)
    sl = (slice(int(y0 + side * 0.62), int(y0 + side * 0.9)), slice(int(x0 + side * 0.2), int(x0 + side * 0.8)))
    orig_mean = frame[sl].reshape(-1, 3).mean(0)
    assert np.abs(fixed[sl].reshape(-1, 3).mean(0) - orig_mean).max() < np.abs(128 - orig_mean).max()


def test_batching_gives_the_same_pixels(models):
    frame, lm = _face_frame()
    rng = np.random.default_rng(5)
    faces, mels = [], []
    for k in range(5):
        f = np.roll(frame, 3 * k, axis=1)
        box = paste.face_box(lm + [3 * k, 0])
        faces.append(paste.model_input(paste.crop(f, paste.crop_matrix(box, 96), 96)))
        mels.append(rng.uniform(-4, 4, (1, 80, 16)).astype(np.float32))
    faces, mels = np.stack(faces), np.stack(mels)
    dyn = Wav2LipModel(models["ff"], "cpu")
    one = np.concatenate([dyn.run(mels[i:i + 1], faces[i:i + 1]) for i in range(5)])
    many = dyn.run(mels, faces)
    np.testing.assert_allclose(many, one, atol=1e-6)
    fixed = Wav2LipModel(models["ff1"], "cpu")  # a batch-1 model is run frame by frame
    np.testing.assert_allclose(fixed.run(mels, faces), one, atol=1e-6)
    fixed3 = Wav2LipModel(models["ff3"], "cpu")  # a fixed batch of 3: runs of 3, the last one padded
    assert fixed3.max_batch(16) == 3 and not fixed3.sig.dynamic_batch
    np.testing.assert_allclose(fixed3.run(mels, faces), one, atol=1e-6)
    # the output depends on the audio
    assert np.abs(dyn.run(mels[:1] * 0 + 4, faces[:1]) - dyn.run(mels[:1] * 0 - 4, faces[:1])).max() > 0.01


# --- the worker over the protocol -----------------------------------------------------
def w2l_worker(model=None) -> Worker:
    """The wav2lip worker with TALKIE_WAV2LIP_MODEL set to `model`, or unset."""
    return Worker(WORKER, env={"TALKIE_WAV2LIP_MODEL": model} if model is not None else None,
                  unset=("TALKIE_WAV2LIP_MODEL",), timeout=120.0)


@pytest.mark.parametrize("which", ["missing", "wrong", "unset"])
def test_fatal_handshake(models, tmp_path, which):
    path = {"missing": str(tmp_path / "absent.onnx"), "wrong": models["wrong"], "unset": None}[which]
    w = w2l_worker(path)
    try:
        msg = w.recv(60)
        assert msg["type"] == "fatal", msg
        if path:
            assert path in msg["message"]
        assert "(N,1,80,16)" in msg["message"] and "(N,6,S,S)" in msg["message"]
        assert w.proc.wait(timeout=20) != 0
        assert w.recv(5) is None  # nothing else on stdout
    finally:
        w.close()


@pytest.fixture(scope="module")
def w2l_media(tmp_path_factory):
    import media_samples

    d = tmp_path_factory.mktemp("w2l_media")
    tpl = str(d / "closeup-512.mp4")
    media_samples.render_template(tpl, "closeup-512", 2.0)
    wav = str(d / "narration.wav")
    media_samples.synth_speech(wav, "en-us", media_samples.ENGLISH_TEXT, 2.0)
    black = str(d / "black.mp4")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=black:s=160x120:r=25:d=1",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", black], check=True)
    return {"dir": str(d), "closeup": tpl, "wav": wav, "black": black}


def _probe(path):
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries",
                          "stream=codec_type,codec_name,r_frame_rate,duration,nb_frames:format=duration",
                          "-of", "json", path], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _frame_at(path, t):
    raw = subprocess.run(["ffmpeg", "-v", "error", "-ss", str(t), "-i", path, "-frames:v", "1", "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(512, 512, 3)


def test_render_over_protocol(models, w2l_media, tmp_path):
    w = w2l_worker(models["ff"])
    try:
        hello = w.recv(90)
        assert hello and hello["type"] == "hello", w.stderr
        assert hello["protocol"] == 1 and hello["name"] == "wav2lip"
        caps = hello["capabilities"]
        assert caps["device"] == "cpu" and caps["audio_sample_rate"] == 16000 and caps["audio_channels"] == 1
        outs = {}
        for rid, params in (("b8", {"batch": 8}), ("b1", {"batch": 1}), ("ff", {"mel": "facefusion"})):
            req = {"id": rid, "video": w2l_media["closeup"], "audio": w2l_media["wav"],
                   "output": str(tmp_path / f"{rid}.engine.mp4"), "item_key": rid, "video_key": "vk-w2l",
                   "audio_key": "ak", "params": params, "cache_dir": str(tmp_path / "cache"), "duration": 2.0,
                   "unknown_field": 1}
            final, seen = w.render(req)
            assert final["type"] == "done", (final, w.stderr[-3000:])
            assert final["frames"] == 50
            prog = [m for m in seen if m["type"] == "progress"]
            assert prog and prog[-1]["frame"] == prog[-1]["frames"] == 50
            assert [m["frame"] for m in prog] == sorted(m["frame"] for m in prog)
            p = _probe(req["output"])
            kinds = {s["codec_type"]: s for s in p["streams"]}
            assert set(kinds) == {"video", "audio"}
            assert kinds["video"]["codec_name"] == "h264" and kinds["video"]["r_frame_rate"] == "25/1"
            assert abs(float(p["format"]["duration"]) - 2.0) < 0.08
            assert abs(float(kinds["video"]["duration"]) - 2.0) < 0.06
            assert not os.path.exists(req["output"] + ".part.mp4")
            outs[rid] = req["output"]
        # the engine changed the mouth, and only there; batch 8 and batch 1 give the same pixels
        src = _frame_at(w2l_media["closeup"], 1.0)
        b8, b1 = _frame_at(outs["b8"], 1.0), _frame_at(outs["b1"], 1.0)
        assert np.array_equal(b8, b1)
        diff = np.abs(b8.astype(int) - src.astype(int)).max(axis=2)
        ys, xs = np.nonzero(diff > 30)
        assert len(ys) > 200
        assert 250 < np.median(ys) < 480 and 150 < np.median(xs) < 360  # the lower face of the close-up
        # no face -> error kind input, and the worker goes on
        req = {"id": "black", "video": w2l_media["black"], "audio": w2l_media["wav"],
               "output": str(tmp_path / "black.engine.mp4"), "params": {}, "duration": 2.0}
        final, _ = w.render(req)
        assert final["type"] == "error" and final["kind"] == "input" and "no face" in final["message"]
        assert not os.path.exists(req["output"])
        req = {"id": "badmodel", "video": w2l_media["closeup"], "audio": w2l_media["wav"],
               "output": str(tmp_path / "bm.engine.mp4"), "params": {"model": models["wrong"]}, "duration": 2.0}
        final, _ = w.render(req)
        assert final["type"] == "error" and final["kind"] == "input" and models["wrong"] in final["message"]
    finally:
        w.close()
    assert w.proc.returncode == 0
