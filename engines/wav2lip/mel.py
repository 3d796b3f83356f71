"""Audio front ends of the Wav2Lip engine (numpy + scipy only; no librosa).

Two front ends, selected by the render parameter ``mel``:

``wav2lip`` (default) - the original Wav2Lip ``audio.py`` / ``hparams.py``:
    16 kHz, pre-emphasis 0.97 (``lfilter([1, -0.97], [1])``), STFT as librosa 0.7
    computes it (n_fft 800, hop 200, win 800, periodic Hann, ``center=True`` with
    reflect padding), magnitude, 80 Slaney-style mel filters 55-7600 Hz with
    Slaney area normalisation (``librosa.filters.mel`` defaults), amplitude to dB
    with a floor of min_level_db -100 (``20*log10(max(1e-5, x))``), minus
    ref_level_db 20, then the symmetric normalisation
    ``clip(8 * (S + 100) / 100 - 4, -4, 4)``.

``facefusion`` - FaceFusion's ``audio.py`` + ``lip_syncer.prepare_audio_frame``:
    the waveform scaled to a peak of 1, pre-emphasis 0.97, ``scipy.signal.stft``
    (nperseg = nfft 800, noverlap 600, Hann, zero boundary, padded, ``spectrum``
    scaling), magnitude, FaceFusion's own 80 filters 55-7600 Hz (HTK mel points,
    a triangle over bins [idx[i], idx[i+1]) each), then
    ``clip(log10(max(1e-5, x)) * 1.6 + 3.2, -4, 4)`` (its wav2lip weight factor
    ``lip_syncer_weight * 2`` is 1 at FaceFusion's default weight 0.5).

Both return float32 arrays of shape (80, T), T = about 80 columns per second.
:func:`frame_chunk` cuts the 16-column window of one video frame the way
Wav2Lip's inference.py does.
"""
from __future__ import annotations

import math

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 800
HOP = 200
WIN = 800
N_MELS = 80
FMIN = 55.0
FMAX = 7600.0
PREEMPHASIS = 0.97
MIN_LEVEL_DB = -100.0
REF_LEVEL_DB = 20.0
MAX_ABS = 4.0
MEL_STEP = 16            # mel columns per video frame window
MEL_PER_SECOND = SAMPLE_RATE / HOP  # 80

FRONT_ENDS = ("wav2lip", "facefusion")


class MelError(Exception):
    pass


# --- shared pieces ---------------------------------------------------------------
def preemphasis(wav: np.ndarray, k: float = PREEMPHASIS) -> np.ndarray:
    """y[n] = x[n] - k x[n-1] (what scipy.signal.lfilter([1, -k], [1], x) computes)."""
    x = np.asarray(wav, np.float64)
    y = x.copy()
    y[1:] -= k * x[:-1]
    return y


def hann_periodic(n: int) -> np.ndarray:
    """scipy.signal.get_window('hann', n) (fftbins=True), as librosa and scipy.stft use."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def _stft_mag(y: np.ndarray, win: np.ndarray, block: int = 2048) -> np.ndarray:
    """|rfft| of the windowed frames of y (n_fft = len(win), hop HOP), (n_fft//2+1, T).

    Computed in blocks of frames, so memory stays small for long narrations.
    """
    n_fft = len(win)
    count = max(0, 1 + (len(y) - n_fft) // HOP)
    out = np.empty((n_fft // 2 + 1, count), np.float64)
    base = np.arange(n_fft)[None, :]
    for s in range(0, count, block):
        e = min(count, s + block)
        fr = y[base + HOP * np.arange(s, e)[:, None]] * win[None, :]
        out[:, s:e] = np.abs(np.fft.rfft(fr, n=n_fft, axis=1)).T
    return out


# --- the original Wav2Lip front end ---------------------------------------------------
def hz_to_mel_slaney(f):
    f = np.asarray(f, np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    lin = f / f_sp
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, lin)


def mel_to_hz_slaney(m):
    m = np.asarray(m, np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def slaney_mel_filters(sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS,
                       fmin: float = FMIN, fmax: float = FMAX) -> np.ndarray:
    """librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax) with htk=False, norm='slaney'."""
    fft_freqs = np.linspace(0.0, sr / 2.0, 1 + n_fft // 2)
    mel_pts = np.linspace(hz_to_mel_slaney(fmin), hz_to_mel_slaney(fmax), n_mels + 2)
    f = mel_to_hz_slaney(mel_pts)
    fdiff = np.diff(f)
    ramps = f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    enorm = 2.0 / (f[2:n_mels + 2] - f[:n_mels])
    return weights * enorm[:, None]


_SLANEY = None


def stft_librosa(y: np.ndarray) -> np.ndarray:
    """|librosa.stft(y, n_fft=800, hop_length=200, win_length=800)| (center, reflect pad), (401, T)."""
    y = np.asarray(y, np.float64)
    pad = N_FFT // 2
    if len(y) <= pad:  # reflect padding needs more samples than the pad
        y = np.concatenate([y, np.zeros(pad + 1 - len(y))])
    yp = np.pad(y, pad, mode="reflect")
    return _stft_mag(yp, hann_periodic(WIN))


def wav2lip_mel(wav: np.ndarray) -> np.ndarray:
    """The original Wav2Lip melspectrogram of 16 kHz float audio in [-1, 1]: (80, T) in [-4, 4]."""
    global _SLANEY
    if _SLANEY is None:
        _SLANEY = slaney_mel_filters()
    mag = stft_librosa(preemphasis(wav))
    mel = _SLANEY @ mag
    min_level = math.exp(MIN_LEVEL_DB / 20.0 * math.log(10))
    s = 20.0 * np.log10(np.maximum(min_level, mel)) - REF_LEVEL_DB
    s = np.clip((2 * MAX_ABS) * ((s - MIN_LEVEL_DB) / (-MIN_LEVEL_DB)) - MAX_ABS, -MAX_ABS, MAX_ABS)
    return s.astype(np.float32)


# --- FaceFusion's front end ---------------------------------------------------------
def facefusion_filters() -> np.ndarray:
    """FaceFusion's create_mel_filter_bank(): (80, 401)."""
    def h2m(h):
        return 2595.0 * np.log10(1.0 + np.asarray(h, np.float64) / 700.0)

    def m2h(m):
        return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)

    bank = np.zeros((N_MELS, N_FFT // 2 + 1))
    pts = np.linspace(h2m(FMIN), h2m(FMAX), N_MELS + 2)
    idx = np.floor((N_FFT + 1) * m2h(pts) / SAMPLE_RATE).astype(np.int64)
    for i in range(N_MELS):
        a, b = int(idx[i]), int(idx[i + 1])
        n = b - a
        if n <= 0:
            continue
        # scipy.signal.windows.triang(n)
        k = np.arange(1, (n + 1) // 2 + 1)
        if n % 2 == 0:
            w = (2 * k - 1.0) / n
            w = np.concatenate([w, w[::-1]])
        else:
            w = 2 * k / (n + 1.0)
            w = np.concatenate([w, w[-2::-1]])
        bank[i, a:b] = w
    return bank


_FF = None


def stft_scipy(x: np.ndarray) -> np.ndarray:
    """|scipy.signal.stft(x, nperseg=800, nfft=800, noverlap=600)[2]| (zero boundary, padded), (401, T)."""
    x = np.asarray(x, np.float64)
    half = N_FFT // 2
    x = np.concatenate([np.zeros(half), x, np.zeros(half)])
    nadd = (-(len(x) - N_FFT) % HOP) % N_FFT
    if len(x) < N_FFT:
        nadd = N_FFT - len(x)
    x = np.concatenate([x, np.zeros(nadd)])
    win = hann_periodic(N_FFT)
    return _stft_mag(x, win) / win.sum()


def facefusion_mel(wav: np.ndarray) -> np.ndarray:
    """FaceFusion's spectrogram + prepare_audio_frame normalisation: (80, T) in [-4, 4]."""
    global _FF
    if _FF is None:
        _FF = facefusion_filters()
    x = np.asarray(wav, np.float64)
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    if peak > 0:
        x = x / peak
    spec = _FF @ stft_scipy(preemphasis(x))
    s = np.log10(np.maximum(1e-5, spec)) * 1.6 + 3.2
    return np.clip(s, -4.0, 4.0).astype(np.float32)


def melspectrogram(wav: np.ndarray, front_end: str = "wav2lip") -> np.ndarray:
    if front_end == "wav2lip":
        return wav2lip_mel(wav)
    if front_end == "facefusion":
        return facefusion_mel(wav)
    raise MelError(f"unknown mel front end {front_end!r} (use one of {', '.join(FRONT_ENDS)})")


# --- per-frame windows -------------------------------------------------------------
def frame_start(i: int, fps: float) -> int:
    """Wav2Lip inference.py: start_idx = int(i * (80. / fps))."""
    return int(i * (80.0 / fps))


def frame_chunk(mel: np.ndarray, i: int, fps: float, pad_value: float | None = None) -> np.ndarray:
    """The (80, 16) window of video frame i.

    As in inference.py, a window that would run past the end is the last 16
    columns of the spectrogram; a spectrogram shorter than 16 columns is padded
    at the end with silence (-4, the floor of both front ends).
    """
    n = mel.shape[1]
    if n < MEL_STEP:
        fill = -MAX_ABS if pad_value is None else pad_value  # -4 is silence in both front ends
        mel = np.concatenate([mel, np.full((mel.shape[0], MEL_STEP - n), fill, mel.dtype)], axis=1)
        n = MEL_STEP
    start = frame_start(i, fps)
    if start + MEL_STEP > n:
        start = n - MEL_STEP
    return mel[:, start:start + MEL_STEP]


def load_audio(path: str) -> np.ndarray:
    """The narration as float32 mono 16 kHz in [-1, 1] (decoded by ffmpeg)."""
    import audio as classic_audio  # engines/classic/audio.py

    try:
        blocks = list(classic_audio.iter_audio_blocks(path))
    except classic_audio.AudioError as e:
        raise MelError(str(e))
    if not blocks:
        return np.zeros(0, np.float32)
    return np.concatenate(blocks).astype(np.float32)
