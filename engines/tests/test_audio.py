"""Unit tests of audio -> mouth targets (no worker, no video)."""
from __future__ import annotations

import os
import wave

import numpy as np
import pytest

import audio

SR = audio.SAMPLE_RATE
FPS = 25.0


def vowel(seconds, f1, f2, f0=120.0, amp=0.3):
    """A crude voiced vowel: harmonics of f0 shaped by two formant resonances."""
    t = np.arange(int(seconds * SR)) / SR
    x = np.zeros_like(t)
    for k in range(1, int(7000 / f0)):
        f = k * f0
        g = 1.0 / (1.0 + ((f - f1) / 90.0) ** 2) + 0.7 / (1.0 + ((f - f2) / 120.0) ** 2) + 0.01
        x += g * np.sin(2 * np.pi * f * t + k)
    return (amp * x / np.max(np.abs(x))).astype(np.float32)


def hiss(seconds, amp=0.3, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(int(seconds * SR))
    # crude high-pass: first difference twice
    x = np.diff(np.diff(x, prepend=0), prepend=0)
    return (amp * x / np.max(np.abs(x))).astype(np.float32)


def silence(seconds):
    return np.zeros(int(seconds * SR), np.float32)


def frames_of(t0, t1):
    return slice(int(t0 * FPS) + 2, int(t1 * FPS) - 1)


def test_silence_keeps_the_mouth_closed():
    tr = audio.analyse_samples(silence(3.0), FPS)
    assert tr.frames == 75
    assert np.all(tr.open == 0.0)
    assert np.all(tr.envelope == 0.0)
    assert np.all(np.abs(tr.width) < 1e-6)


def test_frame_count_and_ranges():
    x = np.concatenate([silence(0.5), vowel(1.0, 750, 1200), silence(0.5)])
    tr = audio.analyse_samples(x, FPS)
    assert tr.frames == 50
    for arr in (tr.open, tr.envelope):
        assert arr.dtype == np.float32 and arr.min() >= 0.0 and arr.max() <= 1.0
    assert tr.width.min() >= -1.0 and tr.width.max() <= 1.0


def test_speech_opens_and_silence_closes():
    x = np.concatenate([silence(0.6), vowel(0.8, 750, 1200), silence(0.8), vowel(0.8, 750, 1200), silence(0.6)])
    tr = audio.analyse_samples(x, FPS)
    assert tr.open[frames_of(0.6, 1.4)].mean() > 0.5
    assert tr.open[frames_of(2.2, 3.0)].mean() > 0.5
    assert tr.open[frames_of(1.6, 2.1)].max() < 0.1
    assert tr.open[:10].max() < 0.05


def test_attack_is_fast_and_release_is_slower():
    x = np.concatenate([silence(1.0), vowel(1.0, 750, 1200), silence(1.0)])
    tr = audio.analyse_samples(x, FPS)
    on, off = 25, 50
    peak = tr.open[on + 5:off - 2].mean()
    # reaches most of the level within 3 frames of the onset (120 ms)
    assert tr.open[on + 2] > 0.6 * peak
    # closes again within 6 frames of the offset
    assert tr.open[off + 6] < 0.15 * peak
    # but not instantly (smoothing, no jitter): the frame right after the offset is still partly open
    rise = np.argmax(tr.open[on - 3:] > 0.5 * peak)
    fall = np.argmax(tr.open[off - 3:] < 0.5 * peak)
    assert fall >= rise


def test_sibilants_open_less_than_vowels():
    x = np.concatenate([silence(0.5), vowel(0.8, 750, 1200), silence(0.5), hiss(0.8), silence(0.5)])
    tr = audio.analyse_samples(x, FPS)
    a = tr.open[frames_of(0.5, 1.3)].mean()
    s = tr.open[frames_of(1.8, 2.6)].mean()
    assert s < 0.75 * a


def test_width_spread_vs_rounded():
    ee = vowel(0.8, 300, 2300)
    oo = vowel(0.8, 320, 800)
    x = np.concatenate([silence(0.4), ee, silence(0.4), oo, silence(0.4), ee, silence(0.4), oo, silence(0.4)])
    tr = audio.analyse_samples(x, FPS)
    w_ee = tr.width[frames_of(0.4, 1.2)].mean()
    w_oo = tr.width[frames_of(1.6, 2.4)].mean()
    assert w_ee > 0.2 and w_oo < -0.2


def test_open_vowel_opens_wider_than_closed_vowel():
    aa = vowel(0.8, 800, 1300)
    ii = vowel(0.8, 280, 2300)
    x = np.concatenate([silence(0.4), aa, silence(0.4), ii, silence(0.4)])
    tr = audio.analyse_samples(x, FPS)
    assert tr.open[frames_of(0.4, 1.2)].mean() > tr.open[frames_of(1.6, 2.4)].mean()


def test_streaming_file_matches_in_memory(tmp_path):
    x = np.concatenate([silence(0.3), vowel(0.7, 700, 1100), hiss(0.4), silence(0.3)])
    p = os.path.join(tmp_path, "a.wav")
    with wave.open(p, "wb") as wf:
        wf.setnchannels(1)
        wf.setsampwidth(2)
        wf.setframerate(SR)
        wf.writeframes((x * 32767).astype("<i2").tobytes())
    a = audio.analyse(p, FPS, 43)
    b = audio.analyse_samples((x * 32767).astype("<i2").astype(np.float32) / 32768.0, FPS, 43)
    assert a.frames == b.frames == 43
    np.testing.assert_allclose(a.open, b.open, atol=1e-4)
    np.testing.assert_allclose(a.envelope, b.envelope, atol=1e-4)


def test_unreadable_audio_is_an_error(tmp_path):
    p = os.path.join(tmp_path, "bad.wav")
    with open(p, "wb") as f:
        f.write(b"not audio at all")
    with pytest.raises(audio.AudioError):
        audio.analyse(p, FPS, 10)
