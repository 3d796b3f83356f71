#!/usr/bin/env python3
"""Talkie's Wav2Lip engine ("wav2lip"): a protocol-1 worker running a Wav2Lip ONNX model.

    TALKIE_WAV2LIP_MODEL=/models/wav2lip_gan_96.onnx .venv/bin/python engines/wav2lip/worker.py [--model PATH]

LICENCE OF THE WEIGHTS: Wav2Lip's published weights (wav2lip.pth, wav2lip_gan.pth
and their ONNX conversions such as FaceFusion's wav2lip_96.onnx and
wav2lip_gan_96.onnx) are licensed for NON-COMMERCIAL USE ONLY (research,
personal and educational use).  Commercial use needs a licence from the
Wav2Lip authors (Sync Labs).  Talkie ships no weights; this engine only runs a
model file the user supplies, and the user is responsible for its licence.

Model: any Wav2Lip-family ONNX export - inputs mel (N,1,80,16) and 6-channel
face crops (N,6,S,S), output (N,3,S,S) - matched by shape, not by name (see
model.py).  The model file is taken from ``--model``, else the environment
variable TALKIE_WAV2LIP_MODEL, and loaded at start: a missing or unsuitable file
sends ``{"type":"fatal"}`` naming the file and the expected signature before any
item starts.  A render request whose ``params.model`` names another file loads
that one (a bad one fails the item with kind ``input``).

Execution provider: CUDA when onnxruntime-gpu and a GPU are present (reported in
the handshake as capabilities.device), CPU otherwise; TALKIE_WAV2LIP_DEVICE =
auto | cpu | cuda overrides.

Render parameters (``params``):
  model       path of the ONNX file (see above)
  mel         "wav2lip" (default: the original audio.py) | "facefusion" (see mel.py)
  batch       frames per model call when the model has a dynamic batch (default 16)
  pads        "top,bottom,left,right" crop padding in pixels (default "0,10,0,0")
  smooth      average each face box over 5 frames as inference.py does (default true;
              false = its --nosmooth, for fast head movement)
  color_fix   keep the original colour of the mouth region (default true)
  x264_preset, crf   encoder settings (as the classic engine)

Faces come from the classic engine's mediapipe face mesh (no detector weights),
with its face-track cache; video in/out through the classic engine's ffmpeg
pipes (the template loops ping-pong or is cut to the audio's duration).
"""
from __future__ import annotations

import math
import os
import sys
import time
import traceback

_HERE = os.path.dirname(os.path.abspath(__file__))
_CLASSIC = os.path.join(os.path.dirname(_HERE), "classic")
for _p in (_CLASSIC, _HERE):  # _HERE first on the path
    if _p in sys.path:
        sys.path.remove(_p)
    sys.path.insert(0, _p)

from params import flag, fmt_time, number  # noqa: E402  (engines/classic/params.py)
from protocol import claim_stdout, serve  # noqa: E402  (engines/classic/protocol.py)

NAME = "wav2lip"
VERSION = "1.0.0"
NO_FACE_SECONDS = 2.0
PARAMS = ["model", "mel", "batch", "pads", "smooth", "color_fix", "x264_preset", "crf"]


def _int(v, default: int, lo: int, hi: int) -> int:
    return int(number(v, default, lo, hi))


def _pads(v):
    from paste import PADS

    if v is None:
        return PADS
    try:
        parts = v if isinstance(v, (list, tuple)) else str(v).replace(" ", ",").split(",")
        vals = tuple(float(p) for p in parts if str(p).strip() != "")
        if len(vals) == 4:
            return vals
    except ValueError:
        pass
    return PADS


class Engine:
    """What a worker keeps loaded: the model session(s) and the face tracker."""

    def __init__(self, model_path: str, device: str = "auto"):
        from model import Wav2LipModel

        self.device_pref = device
        self.model = Wav2LipModel(model_path, device)
        self._tracker = None

    @property
    def tracker(self):
        if self._tracker is None:
            from facetrack import FaceTracker

            self._tracker = FaceTracker()
        return self._tracker

    def model_for(self, path):
        from model import ModelError, Wav2LipModel
        from video_io import InputError

        if not path or os.path.abspath(str(path)) == os.path.abspath(self.model.path):
            return self.model
        try:
            self.model = Wav2LipModel(str(path), self.device_pref)
        except ModelError as e:
            raise InputError(str(e))
        return self.model


def render_item(req: dict, engine: Engine, chan) -> dict:
    """Render one request; returns {"frames": n}. Raises InputError / TransientError."""
    import numpy as np

    import mel as mel_mod
    import paste
    from facetrack import TrackCache
    from video_io import Encoder, FrameSource, InputError, probe
    import audio as classic_audio

    rid = req.get("id")
    t0 = time.monotonic()

    def info(msg: str, level: str = "info"):
        chan.log(rid, msg, level)
        print(f"wav2lip[{rid}]: {msg}", file=sys.stderr, flush=True)

    video, audio_path, output = req.get("video"), req.get("audio"), req.get("output")
    if not video or not audio_path or not output:
        raise InputError("render request needs video, audio and output")
    params = req.get("params") or {}
    if not isinstance(params, dict):
        params = {}
    model = engine.model_for(params.get("model"))
    front = str(params.get("mel", "wav2lip")).strip().lower()
    if front not in mel_mod.FRONT_ENDS:
        raise InputError(f"unknown mel front end {front!r} (use wav2lip or facefusion)")
    batch = model.max_batch(_int(params.get("batch"), 16, 1, 256))
    pads = _pads(params.get("pads"))
    color_fix = flag(params.get("color_fix"), True)
    smooth = flag(params.get("smooth"), True)

    vinfo = probe(video)
    fps = vinfo.fps_float
    if not os.path.isfile(audio_path):
        raise InputError(f"audio not found: {audio_path}")
    try:
        duration = float(req.get("duration"))
    except (TypeError, ValueError):
        duration = 0.0
    if not (duration > 0):
        try:
            duration = classic_audio.probe_duration(audio_path)
        except classic_audio.AudioError as e:
            raise InputError(str(e))
    if not (duration > 0):
        raise InputError("the audio is empty")
    total = max(1, int(math.ceil(duration * fps - 1e-6)))
    try:
        wav = mel_mod.load_audio(audio_path)
    except mel_mod.MelError as e:
        raise InputError(str(e))
    if len(wav) == 0:
        raise InputError("the audio is empty")
    spec = mel_mod.melspectrogram(wav, front)
    info(f"model {os.path.basename(model.path)} on {model.device}, batch {batch}, mel front end {front}: "
         f"{spec.shape[1]} mel columns for {total} frames at {fps:.3f} fps")

    default_preset = "veryfast" if vinfo.width * vinfo.height <= 400_000 else "superfast"
    preset = str(params.get("x264_preset", default_preset))
    if preset not in ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow"):
        preset = default_preset
    crf = _int(params.get("crf"), 20, 0, 51)

    # face track cache (same format as the classic engine's) -------------------------
    cache_dir, video_key = req.get("cache_dir"), req.get("video_key") or ""
    cache = cache_path = None
    if cache_dir and video_key:
        cache_path = TrackCache.path(cache_dir, video_key)
        if os.path.exists(cache_path):
            cache = TrackCache.load(cache_path, vinfo.width, vinfo.height, fps)
        info("face track cache hit" if cache is not None else "face track cache miss")
    if cache is None:
        cache = TrackCache(vinfo.width, vinfo.height, fps)
    if cache.complete and len(cache) and not cache.valid[:len(cache)].any():
        raise InputError(f"no face found at {fmt_time(0.0)} (the template has no face)")
    engine.tracker.reset()

    size = model.size
    source = FrameSource(video, vinfo, total, known_frames=len(cache) if cache.complete else None)
    encoder = Encoder(output, audio_path, vinfo.width, vinfo.height, vinfo.fps, duration, preset=preset, crf=crf)
    limit = max(1, int(round(NO_FACE_SECONDS * fps)))
    pending = []  # (k, frame, face or None) in output order; face = (crop, matrix, box)
    n_faces = 0
    written = 0
    last_progress = 0.0
    valid_seen = 0
    miss_run, miss_start = 0, 0
    ok = False

    def flush():
        nonlocal pending, n_faces, written, last_progress
        idx = [j for j, p in enumerate(pending) if p[2] is not None]
        if idx:
            mels = np.stack([mel_mod.frame_chunk(spec, pending[j][0], fps) for j in idx])[:, None]
            faces = np.stack([paste.model_input(pending[j][2][0]) for j in idx])
            out = model.run(mels, faces)
            for o, j in zip(out, idx):
                k, frame, (crp, m, box) = pending[j]
                paste.paste(frame, paste.model_output(o), crp, m, box, color_fix=color_fix)
        for k, frame, _ in pending:
            encoder.write(frame)
            written += 1
            now = time.monotonic()
            if written == total or now - last_progress >= 0.04:
                chan.progress(rid, written, total)
                last_progress = now
        pending, n_faces = [], 0

    def admit(k, frame, box):
        """Crop a frame whose (smoothed) box is known and queue it for the model."""
        nonlocal n_faces
        face = None
        if box is not None:
            m = paste.crop_matrix(box, size)
            frame = np.array(frame, copy=True)  # decoder frames may be read-only
            face = (paste.crop(frame, m, size), m, box)
            n_faces += 1
        pending.append((k, frame, face))
        if n_faces >= batch or len(pending) >= 4 * batch:
            flush()

    smoother = paste.BoxSmoother() if smooth else None
    it = iter(source)
    try:
        for k in range(total):
            try:
                src_idx, frame = next(it)
            except StopIteration:
                from video_io import TransientError
                raise TransientError(f"the template yielded only {k} of {total} frames")
            if cache.has(src_idx):
                lm = cache.get(src_idx)
            elif src_idx == len(cache):
                lm = engine.tracker.track(frame)
                cache.append(src_idx, lm)
            else:
                lm = engine.tracker.track(frame)
            box = None
            if lm is None:
                if miss_run == 0:
                    miss_start = src_idx
                miss_run += 1
                if miss_run >= limit:
                    raise InputError(f"no face found at {fmt_time(miss_start / fps)}")
            else:
                valid_seen += 1
                miss_run = 0
                box = paste.face_box(lm, pads)
            if source.n is not None and k + 1 >= source.n and valid_seen == 0:
                raise InputError(f"no face found at {fmt_time(0.0)} (the template has no face)")
            ready = smoother.push((k, frame), box) if smoother else [((k, frame), box)]
            for (rk, rframe), rbox in ready:
                admit(rk, rframe, rbox)
        for (rk, rframe), rbox in (smoother.finish() if smoother else []):
            admit(rk, rframe, rbox)
        flush()
        encoder.close()
        ok = True
    finally:
        try:
            it.close()
        except Exception:  # noqa: BLE001
            pass
        if not ok:
            encoder.abort()
        cache.keep(cache_path, source.n, "wav2lip")
    el = time.monotonic() - t0
    info(f"rendered {total} frames in {el:.2f}s ({total / max(el, 1e-6):.1f} fps)")
    return {"frames": total}


def _model_arg(argv) -> str | None:
    for i, a in enumerate(argv):
        if a == "--model" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--model="):
            return a.split("=", 1)[1]
    return None


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chan = claim_stdout()  # before any library can print on fd 1
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    path = _model_arg(argv) or os.environ.get("TALKIE_WAV2LIP_MODEL", "")
    device = os.environ.get("TALKIE_WAV2LIP_DEVICE", "auto")
    try:
        import numpy  # noqa: F401
        import cv2  # noqa: F401
        import onnxruntime  # noqa: F401
    except BaseException as e:  # noqa: BLE001
        traceback.print_exc()
        chan.fatal(f"the wav2lip engine cannot start: {type(e).__name__}: {e} (install its environment: "
                   f".venv/bin/pip install -r engines/requirements-wav2lip.txt -c engines/constraints.txt)")
        return 1
    from model import ModelError
    try:
        engine = Engine(path, device)
        engine.tracker  # noqa: B018 - load mediapipe now, not during the first item
    except ModelError as e:
        chan.fatal(f"the wav2lip engine cannot start: {e}")
        return 1
    except BaseException as e:  # noqa: BLE001
        traceback.print_exc()
        chan.fatal(f"the wav2lip engine cannot start: {type(e).__name__}: {e}")
        return 1
    from video_io import InputError, TransientError

    sig = engine.model.sig
    print(f"wav2lip: model {path} on {engine.model.device}: mel input {sig.mel_name!r}, face input "
          f"{sig.face_name!r}, output {sig.out_name!r}, size {sig.size}, dynamic batch {sig.dynamic_batch}",
          file=sys.stderr, flush=True)
    chan.hello(NAME, VERSION, {"audio_sample_rate": 16000, "audio_channels": 1, "progress": True,
                               "device": engine.model.device, "face_track_cache": True,
                               "model": os.path.basename(path), "model_size": sig.size,
                               "dynamic_batch": sig.dynamic_batch, "params": PARAMS})

    def render(msg):
        res = render_item(msg, engine, chan)
        return (res["frames"], None)

    return serve(chan, NAME, render, InputError, TransientError)


if __name__ == "__main__":
    sys.exit(main())
