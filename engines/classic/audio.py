"""Audio -> per-video-frame mouth targets.

The narration is decoded by ffmpeg to 16 kHz mono and read in blocks (constant
memory for any length).  For every video frame a 64 ms Hann window centred on
the frame time gives loudness and a few band energies; from those:

* ``envelope``  - loudness on a 0..1 scale (dB above the noise floor, relative to
  the speech level); this is what the lip-sync score correlates against.
* ``open``      - the mouth-opening target 0..1: loudness shaped by the spectrum
  (open vowels with a high first formant open wider; sibilants and nasals, whose
  energy sits above 3.5 kHz or below 300 Hz, keep the mouth nearly closed).
* ``width``     - -1 (rounded, "oo") .. +1 (spread, "ee") from the balance of the
  second-formant band against the first.

Both targets are smoothed with an attack/release follower (fast opening, slower
closing) and advanced by a fraction of a frame, so the mouth neither jitters nor lags.
"""
from __future__ import annotations

import math
import subprocess
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000
WIN = 1024  # 64 ms at 16 kHz

# band edges in Hz
_BANDS = {
    "low": (80.0, 300.0),
    "f1": (300.0, 1000.0),
    "f2": (1000.0, 2800.0),
    "hi": (3500.0, 8000.0),
}


class AudioError(Exception):
    """The audio could not be read."""


@dataclass
class MouthTrack:
    fps: float
    envelope: np.ndarray  # (F,) 0..1
    open: np.ndarray      # (F,) 0..1 smoothed opening target
    width: np.ndarray     # (F,) -1..1 smoothed spread/round target
    raw_db: np.ndarray    # (F,) loudness in dBFS

    @property
    def frames(self) -> int:
        return int(len(self.open))


def probe_duration(path: str) -> float:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "default=nw=1:nk=1", path],
        capture_output=True, text=True)
    try:
        return float(out.stdout.strip())
    except ValueError:
        raise AudioError(f"cannot read the audio {path}: {out.stderr.strip()[:300]}")


def iter_audio_blocks(path: str, block_seconds: float = 10.0):
    """Yield float32 mono 16 kHz blocks of the audio, decoded by ffmpeg."""
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-i", path,
           "-vn", "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "s16le", "-"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    nbytes = int(block_seconds * SAMPLE_RATE) * 2
    try:
        while True:
            buf = proc.stdout.read(nbytes)
            if not buf:
                break
            if len(buf) % 2:
                buf = buf[:-1]
            yield np.frombuffer(buf, dtype="<i2").astype(np.float32) / 32768.0
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode("utf-8", "replace")
        proc.stderr.close()
        rc = proc.wait()
    if rc != 0:
        raise AudioError(f"cannot decode the audio {path}: {err.strip()[:300]}")


def frame_features(blocks, fps: float, frames: int) -> dict:
    """Per-frame features from an iterator of sample blocks (streaming)."""
    freqs = np.fft.rfftfreq(WIN, 1.0 / SAMPLE_RATE)
    masks = {k: (freqs >= lo) & (freqs < hi) for k, (lo, hi) in _BANDS.items()}
    window = np.hanning(WIN).astype(np.float32)
    wnorm = float(np.sum(window ** 2))
    out = {k: np.zeros(frames, np.float32) for k in ("db", "low", "f1", "f2", "hi")}

    half = WIN // 2
    buf = np.zeros(half, np.float32)  # zero padding before t=0
    buf_start = -half  # sample index of buf[0]
    i = 0
    exhausted = False
    it = iter(blocks)
    while i < frames:
        centre = int(round((i + 0.5) / fps * SAMPLE_RATE))
        need_end = centre + half
        while not exhausted and buf_start + len(buf) < need_end:
            try:
                blk = next(it)
            except StopIteration:
                exhausted = True
                break
            buf = np.concatenate([buf, blk])
        # frames whose window is available (pad zeros after the end of the audio)
        batch = []
        while i < frames:
            centre = int(round((i + 0.5) / fps * SAMPLE_RATE))
            s = centre - half - buf_start
            if s + WIN > len(buf) and not exhausted:
                break
            seg = buf[max(s, 0):s + WIN]
            if len(seg) < WIN:
                seg = np.concatenate([seg, np.zeros(WIN - len(seg), np.float32)])
            batch.append(seg)
            i += 1
        if batch:
            seg = np.stack(batch) * window
            spec = np.abs(np.fft.rfft(seg, axis=1)) ** 2
            j0 = i - len(batch)
            power = np.sum(seg ** 2, axis=1) / wnorm
            out["db"][j0:i] = 10.0 * np.log10(power + 1e-10)
            for k, m in masks.items():
                out[k][j0:i] = np.sum(spec[:, m], axis=1)
        # drop samples no later frame needs
        if i < frames:
            centre = int(round((i + 0.5) / fps * SAMPLE_RATE))
            keep_from = centre - half - buf_start
            if keep_from > 0:
                buf = buf[keep_from:]
                buf_start += keep_from
    # drain the decoder so its exit status is checked
    for _ in it:
        pass
    return out


def attack_release(x: np.ndarray, fps: float, attack_s: float, release_s: float) -> np.ndarray:
    a_up = 1.0 - math.exp(-1.0 / (fps * attack_s)) if attack_s > 0 else 1.0
    a_dn = 1.0 - math.exp(-1.0 / (fps * release_s)) if release_s > 0 else 1.0
    y = np.empty_like(x)
    v = float(x[0]) if len(x) else 0.0
    for k in range(len(x)):
        t = float(x[k])
        v += (t - v) * (a_up if t > v else a_dn)
        y[k] = v
    return y


def advance(x: np.ndarray, frames: float) -> np.ndarray:
    """Shift a sequence earlier in time by a (fractional) number of frames."""
    if len(x) < 2 or frames <= 0:
        return x
    idx = np.arange(len(x), dtype=np.float64) + frames
    return np.interp(idx, np.arange(len(x)), x).astype(x.dtype)


def mouth_targets(feat: dict, fps: float) -> MouthTrack:
    db = feat["db"]
    n = len(db)
    if n == 0:
        z = np.zeros(0, np.float32)
        return MouthTrack(fps, z, z, z, z)
    peak = float(np.percentile(db, 95))
    noise = float(np.percentile(db, 5))
    # speech level ~ peak; floor at most 40 dB under it, at least 6 dB above the noise
    floor = max(noise + 6.0, peak - 40.0)
    if peak - floor < 10.0 or peak < -70.0:
        # silence (or a constant tone at the floor): keep the mouth closed
        env = np.zeros(n, np.float32)
    else:
        env = np.clip((db - floor) / (peak - floor), 0.0, 1.0).astype(np.float32)
    env = np.where(db < -70.0, 0.0, env).astype(np.float32)

    eps = 1e-12
    total = feat["low"] + feat["f1"] + feat["f2"] + feat["hi"] + eps
    hi_ratio = feat["hi"] / total                      # sibilants/fricatives
    low_ratio = feat["low"] / total                    # nasals/voicing bar (m, n)
    f1_ratio = feat["f1"] / (feat["f1"] + feat["f2"] + eps)  # open vowels: more F1 energy
    f2_ratio = feat["f2"] / (feat["f1"] + feat["f2"] + eps)

    # shape factors (0..1), centred on the speech frames' typical values
    speech = env > 0.3
    ref_f1 = float(np.median(f1_ratio[speech])) if np.any(speech) else 0.5
    shape = 0.8 + 0.6 * (f1_ratio - ref_f1)            # open vowels a bit wider open
    shape *= 1.0 - 0.55 * np.clip((hi_ratio - 0.25) / 0.5, 0.0, 1.0)  # s, sh, f: near closed
    shape *= 1.0 - 0.35 * np.clip((low_ratio - 0.55) / 0.35, 0.0, 1.0)  # m, n: lips together
    shape = np.clip(shape, 0.35, 1.15)
    # opening follows loudness with a gentle knee so quiet breaths stay closed
    loud = np.clip((env - 0.08) / 0.92, 0.0, 1.0) ** 0.9
    open_raw = np.clip(loud * shape, 0.0, 1.0).astype(np.float32)

    ref_f2 = float(np.median(f2_ratio[speech])) if np.any(speech) else 0.5
    width_raw = np.clip((f2_ratio - ref_f2) * 4.0, -1.0, 1.0) * np.clip(env * 2.0, 0.0, 1.0)

    open_s = attack_release(open_raw, fps, attack_s=0.025, release_s=0.06)
    open_s = advance(open_s, 0.02 * fps)  # lips lead the sound slightly (20 ms)
    width_s = attack_release(width_raw.astype(np.float32), fps, attack_s=0.06, release_s=0.08)
    return MouthTrack(fps=fps, envelope=env, open=np.clip(open_s, 0, 1).astype(np.float32),
                      width=np.clip(width_s, -1, 1).astype(np.float32), raw_db=db.astype(np.float32))


def analyse(path: str, fps: float, frames: int) -> MouthTrack:
    """Read the audio at `path` and return mouth targets for `frames` frames at `fps`."""
    feat = frame_features(iter_audio_blocks(path), fps, frames)
    return mouth_targets(feat, fps)


def analyse_samples(samples: np.ndarray, fps: float, frames: int | None = None) -> MouthTrack:
    """Same as :func:`analyse` for in-memory 16 kHz mono samples (tests, tools)."""
    if frames is None:
        frames = int(math.ceil(len(samples) / SAMPLE_RATE * fps - 1e-9))
    blocks = (samples[k:k + SAMPLE_RATE * 5].astype(np.float32) for k in range(0, len(samples), SAMPLE_RATE * 5))
    return mouth_targets(frame_features(blocks, fps, frames), fps)
