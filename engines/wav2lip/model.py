"""The Wav2Lip ONNX session: signature discovery by shape, execution provider choice, batching.

A Wav2Lip-family generator takes two float32 NCHW inputs and gives one output:

    mel    (N, 1, 80, 16)        FaceFusion calls it 'source', other exports 'mel_spectrogram', ...
    faces  (N, 6, S, S) in [0,1] 'target' / 'video_frames'; BGR; channels 0-2 the crop with
                                 its lower half (rows S/2..S-1) zeroed, 3-5 the full reference crop
    out    (N, 3, S, S) in [0,1] BGR                                  (S = 96 for wav2lip_96)

The inputs are told apart by shape, never by name.  A batch dimension that is
symbolic (or -1/0) is dynamic: frames are run in batches; a fixed 1 means batch 1.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

EXPECTED = ("inputs: mel float32 (N,1,80,16) and face crops float32 (N,6,S,S) (S = 96 for wav2lip_96; "
            "FaceFusion's wav2lip_96/wav2lip_gan_96 call them 'source' and 'target'); "
            "output: float32 (N,3,S,S) in [0,1]")


class ModelError(Exception):
    """The model file is missing or is not a Wav2Lip-family ONNX model."""


@dataclass
class Signature:
    mel_name: str
    face_name: str
    out_name: str
    size: int          # S
    dynamic_batch: bool
    mel_shape: tuple
    face_shape: tuple
    out_shape: tuple


def _dim(d):
    """An int for a fixed dimension, None for a symbolic/unknown one."""
    if isinstance(d, (int, np.integer)) and int(d) > 0:
        return int(d)
    return None


def _fmt(shape) -> str:
    return "(" + ",".join(str(d) if d is not None else "?" for d in shape) + ")"


def discover(inputs, outputs, path: str = "model") -> Signature:
    """`inputs`/`outputs`: sequences of (name, shape, type string) as onnxruntime reports them."""
    def bad(why):
        got = "; ".join(f"input {n!r} {t} {_fmt(s)}" for n, s, t in inputs)
        got += "; " + "; ".join(f"output {n!r} {t} {_fmt(s)}" for n, s, t in outputs)
        return ModelError(f"{path} is not a Wav2Lip ONNX model ({why}). Expected {EXPECTED}. Found: {got}")

    if len(inputs) != 2:
        raise bad(f"{len(inputs)} inputs instead of 2")
    if not outputs:
        raise bad("no output")
    mel = face = None
    for name, shape, typ in inputs:
        if len(shape) != 4:
            continue
        dims = [_dim(d) for d in shape]
        if dims[1] == 1 and dims[2] == 80 and dims[3] == 16:
            mel = (name, shape, typ)
        elif dims[1] == 6:
            face = (name, shape, typ)
    if mel is None:
        raise bad("no input of shape (N,1,80,16)")
    if face is None:
        raise bad("no input of shape (N,6,S,S)")
    for n, s, t in (mel, face):
        if "float" not in t or "16" in t:
            raise bad(f"input {n!r} is {t}, not float32")
    fd = [_dim(d) for d in face[1]]
    size = fd[2] or fd[3] or 96
    if fd[2] and fd[3] and fd[2] != fd[3]:
        raise bad(f"face input {face[0]!r} is not square")
    out = None
    for name, shape, typ in outputs:
        dims = [_dim(d) for d in shape]
        if len(dims) == 4 and dims[1] == 3 and (dims[2] in (None, size)) and (dims[3] in (None, size)):
            out = (name, shape, typ)
            break
    if out is None:
        raise bad(f"no output of shape (N,3,{size},{size})")
    b_mel, b_face = _dim(mel[1][0]), _dim(face[1][0])
    dynamic = b_mel is None and b_face is None
    return Signature(mel[0], face[0], out[0], int(size), dynamic, tuple(mel[1]), tuple(face[1]), tuple(out[1]))


def choose_providers(available, device: str = "auto") -> list[str]:
    """Execution providers to try, best first: CUDA when asked for/available, always CPU last."""
    device = (device or "auto").lower()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise ModelError("device 'cuda' was asked for but onnxruntime has no CUDA execution provider "
                         "(install onnxruntime-gpu instead of onnxruntime)")
    return ["CPUExecutionProvider"]


def device_of(session_providers) -> str:
    return "cuda" if session_providers and session_providers[0] == "CUDAExecutionProvider" else "cpu"


class Wav2LipModel:
    """An onnxruntime session plus its discovered signature."""

    def __init__(self, path: str, device: str = "auto", threads: int = 0):
        if not path:
            raise ModelError("no model file configured (set params.model or TALKIE_WAV2LIP_MODEL). "
                             f"Expected an ONNX file with {EXPECTED}")
        if not os.path.isfile(path):
            raise ModelError(f"model file not found: {path}. Expected an ONNX file with {EXPECTED}")
        import onnxruntime as ort

        self.path = path
        opts = ort.SessionOptions()
        if threads > 0:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        providers = choose_providers(ort.get_available_providers(), device)
        try:
            self.session = ort.InferenceSession(path, sess_options=opts, providers=providers)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types
            raise ModelError(f"cannot load the model file {path}: {type(e).__name__}: {str(e)[:300]}. "
                             f"Expected an ONNX file with {EXPECTED}")
        ins = [(i.name, list(i.shape), i.type) for i in self.session.get_inputs()]
        outs = [(o.name, list(o.shape), o.type) for o in self.session.get_outputs()]
        self.sig = discover(ins, outs, path)
        self.device = device_of(self.session.get_providers())
        self.size = self.sig.size

    @property
    def fixed_batch(self) -> int:
        """The model's batch size when it is fixed (1 for FaceFusion's files), 0 when dynamic."""
        if self.sig.dynamic_batch:
            return 0
        return _dim(self.sig.face_shape[0]) or _dim(self.sig.mel_shape[0]) or 1

    def max_batch(self, wanted: int) -> int:
        return max(1, int(wanted)) if self.sig.dynamic_batch else self.fixed_batch

    def run(self, mels: np.ndarray, faces: np.ndarray) -> np.ndarray:
        """mels (N,1,80,16), faces (N,6,S,S) -> (N,3,S,S) float32.

        For a model with a fixed batch b, N is split into runs of b (the last one padded).
        """
        b = self.fixed_batch
        if b and len(mels) != b:
            outs = []
            for i in range(0, len(mels), b):
                m, f = mels[i:i + b], faces[i:i + b]
                n = len(m)
                if n < b:
                    m = np.concatenate([m, np.repeat(m[-1:], b - n, axis=0)])
                    f = np.concatenate([f, np.repeat(f[-1:], b - n, axis=0)])
                outs.append(self.run(m, f)[:n])
            return np.concatenate(outs)
        out = self.session.run([self.sig.out_name], {self.sig.mel_name: np.ascontiguousarray(mels, np.float32),
                                                     self.sig.face_name: np.ascontiguousarray(faces, np.float32)})
        return out[0]
