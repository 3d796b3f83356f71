#!/usr/bin/env python3
"""Generate Talkie's sample media: template videos and narration.

Templates are built from ``skimage.data.astronaut()`` (a public-domain NASA
portrait that ships inside scikit-image) with slow zoom/pan camera motions;
narration is synthesised with espeak-ng (English ``en-us`` and Mandarin with the
voice ``cmn-latn-pinyin``).  Everything is deterministic and nothing is
downloaded.

    python engines/media_samples.py --out DIR [--seconds N] [--narration-seconds M]

writes DIR/templates/*.mp4, DIR/narration-en.wav and DIR/narration-zh.wav.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import wave

import numpy as np

FPS = 25

# Where the face is in the 512x512 astronaut photo (measured with face mesh):
# x 178..272, y 72..175 -> centre (225, 124), about 100 px tall.
FACE_CX, FACE_CY = 225.0, 126.0

ENGLISH_TEXT = (
    "Hello, I am Talkie, your digital presenter. "
    "Every video in this batch is rendered on the processor, with no downloaded weights. "
    "If the power goes out, finished work is never lost, and only the rest runs again. "
    "Thank you for watching, and have a wonderful day."
)
# Pinyin with tone numbers for espeak-ng's cmn-latn-pinyin voice:
# 你好，我是Talkie，你的数字主播。这个批次的每个视频都在处理器上生成。断电以后，已经完成的工作不会丢失。谢谢观看。
MANDARIN_TEXT = (
    "ni3 hao3, wo3 shi4 tuo1 ke4, ni3 de5 shu4 zi4 zhu3 bo1. "
    "zhe4 ge4 pi1 ci4 de5 mei3 ge4 shi4 pin2, dou1 zai4 chu3 li3 qi4 shang4 sheng1 cheng2. "
    "duan4 dian4 yi3 hou4, yi3 jing1 wan2 cheng2 de5 gong1 zuo4 bu2 hui4 diu1 shi1. "
    "xie4 xie4 guan1 kan4."
)


def astronaut() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())  # RGB uint8 512x512


def _affine(cx: float, cy: float, scale: float, out_w: int, out_h: int) -> np.ndarray:
    """Affine matrix mapping source point (cx, cy) to the output centre with `scale`."""
    return np.array(
        [[scale, 0.0, out_w / 2.0 - scale * cx], [0.0, scale, out_h / 2.0 - scale * cy]],
        dtype=np.float64,
    )


def _smooth(t: float) -> float:
    """A smooth 0..1..0 cycle (no jerks), period 1."""
    return 0.5 - 0.5 * math.cos(2.0 * math.pi * t)


# name -> (width, height, function(t_seconds, duration) -> (cx, cy, scale))
def _templates():
    def closeup_512(t, dur):
        u = _smooth(t / max(dur, 1e-6))
        # face ~ 2.1-2.4x upscaled: about 220-250 px face, slow zoom in and out,
        # a gentle pan sideways.
        scale = 2.15 + 0.25 * u
        return FACE_CX + 6.0 * math.sin(2 * math.pi * t / max(dur, 1e-6)), FACE_CY + 8.0 - 4.0 * u, scale

    def closeup_720(t, dur):
        u = t / max(dur, 1e-6)
        # 1280x720, face about 300 px, slow pan left to right and a small tilt-like drift.
        scale = 2.9 + 0.15 * _smooth(u)
        return FACE_CX + 30.0 - 60.0 * _smooth(u / 2.0), FACE_CY + 10.0 + 5.0 * math.sin(2 * math.pi * u), scale

    def wide_512(t, dur):
        u = _smooth(t / max(dur, 1e-6))
        # the whole portrait, face ~100 px, slow zoom 1.0 -> 1.12
        scale = 1.0 + 0.12 * u
        return 256.0 - 20.0 * u, 256.0 - 60.0 * u, scale

    def noface_512(t, dur):
        u = _smooth(t / max(dur, 1e-6))
        # the space shuttle model on the right: no face anywhere
        return 415.0 + 10.0 * u, 150.0, 2.4 + 0.2 * u

    return {
        "closeup-512": (512, 512, closeup_512),
        "closeup-720": (1280, 720, closeup_720),
        "wide-512": (512, 512, wide_512),
        "noface-512": (512, 512, noface_512),
    }


TEMPLATE_NAMES = tuple(_templates().keys())


def render_template(path: str, name: str, seconds: float, fps: int = FPS) -> None:
    import cv2

    w, h, motion = _templates()[name]
    src = astronaut()
    frames = max(1, int(round(seconds * fps)))
    tmp = path + ".part.mp4"
    cmd = [
        "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "-",
        "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p",
        "-g", str(fps * 2), "-movflags", "+faststart",
        "-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1",
        tmp,
    ]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    try:
        for i in range(frames):
            cx, cy, s = motion(i / fps, frames / fps)
            m = _affine(cx, cy, s, w, h)
            img = cv2.warpAffine(src, m, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT101)
            proc.stdin.write(img.tobytes())
        proc.stdin.close()
    finally:
        rc = proc.wait()
    if rc != 0:
        raise RuntimeError(f"ffmpeg failed making {path} (exit {rc})")
    os.replace(tmp, path)


def _read_wav_mono(path: str) -> tuple[np.ndarray, int]:
    with wave.open(path, "rb") as wf:
        sr = wf.getframerate()
        ch = wf.getnchannels()
        data = np.frombuffer(wf.readframes(wf.getnframes()), dtype="<i2").astype(np.float32)
    if ch > 1:
        data = data.reshape(-1, ch).mean(axis=1)
    return data / 32768.0, sr


def _write_wav(path: str, samples: np.ndarray, sr: int) -> None:
    pcm = np.clip(np.round(samples * 32767.0), -32768, 32767).astype("<i2")
    tmp = path + ".part"
    with wave.open(tmp, "wb") as wf:
        wf.setnchannels(1)
        wf.setsampwidth(2)
        wf.setframerate(sr)
        wf.writeframes(pcm.tobytes())
    os.replace(tmp, path)


def synth_speech(path: str, voice: str, text: str, seconds: float | None = None,
                 sample_rate: int = 16000, speed: int = 150) -> None:
    """Speak `text` with espeak-ng into a 16-bit mono WAV at `sample_rate`.

    With `seconds`, the text is repeated (with a pause) until it is long enough and
    the result is cut to exactly that length with a short fade-out.
    """
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as td:
        raw = os.path.join(td, "speech.wav")
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", raw, text],
                       check=True, stdout=subprocess.DEVNULL)
        res = os.path.join(td, "speech16k.wav")
        subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", raw,
                        "-ac", "1", "-ar", str(sample_rate), "-c:a", "pcm_s16le",
                        "-fflags", "+bitexact", "-flags:a", "+bitexact", res], check=True)
        x, sr = _read_wav_mono(res)
    # lead-in of 0.3 s silence so a clip starts with a closed mouth
    lead = np.zeros(int(0.3 * sr), np.float32)
    x = np.concatenate([lead, x])
    if seconds is not None:
        n = int(round(seconds * sr))
        pause = np.zeros(int(0.4 * sr), np.float32)
        parts = [x]
        while sum(len(p) for p in parts) < n:
            parts += [pause, x[len(lead):]]
        x = np.concatenate(parts)[:n]
        fade = min(len(x), int(0.05 * sr))
        if fade > 0:
            x[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    if peak > 0:
        x = x * (0.7 / peak)
    _write_wav(path, x.astype(np.float32), sr)


def generate(out: str, seconds: float = 6.0, narration_seconds: float | None = None,
             templates: tuple[str, ...] | None = None, narrations: bool = True) -> dict:
    """Write the sample set into `out`; returns {name: path}. Existing files are kept."""
    tdir = os.path.join(out, "templates")
    os.makedirs(tdir, exist_ok=True)
    made = {}
    for name in templates or TEMPLATE_NAMES:
        p = os.path.join(tdir, f"{name}.mp4")
        if not os.path.exists(p):
            render_template(p, name, seconds)
        made[name] = p
    if narrations:
        for lang, voice, text in (("en", "en-us", ENGLISH_TEXT), ("zh", "cmn-latn-pinyin", MANDARIN_TEXT)):
            p = os.path.join(out, f"narration-{lang}.wav")
            if not os.path.exists(p):
                synth_speech(p, voice, text, narration_seconds)
            made[f"narration-{lang}"] = p
    return made


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--seconds", type=float, default=6.0, help="length of each template video (default 6)")
    ap.add_argument("--narration-seconds", type=float, default=None,
                    help="cut/loop each narration to exactly this length (default: natural length)")
    ap.add_argument("--templates", default=None,
                    help="comma-separated subset of: " + ",".join(TEMPLATE_NAMES))
    args = ap.parse_args(argv)
    names = tuple(n.strip() for n in args.templates.split(",")) if args.templates else None
    if names:
        bad = [n for n in names if n not in TEMPLATE_NAMES]
        if bad:
            ap.error("unknown template(s): " + ", ".join(bad))
    made = generate(args.out, args.seconds, args.narration_seconds, names)
    for k, v in made.items():
        print(f"{k}\t{v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
