"""Video I/O, sample media and the score maths (no worker)."""
from __future__ import annotations

import subprocess

import numpy as np

import video_io
from score import pearson
from media_samples import TEMPLATE_NAMES


def test_pingpong_index_has_no_jump():
    n = 5
    seq = [video_io.pingpong_index(k, n) for k in range(20)]
    assert seq[:13] == [0, 1, 2, 3, 4, 3, 2, 1, 0, 1, 2, 3, 4]
    assert all(abs(a - b) == 1 for a, b in zip(seq, seq[1:]))
    assert [video_io.pingpong_index(k, 1) for k in range(3)] == [0, 0, 0]


def _decode_all(path, info):
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", path, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout
    return np.frombuffer(out, np.uint8).reshape(-1, info.height, info.width, 3)


def test_frame_source_loops_forward_and_back_exactly(media):
    info = video_io.probe(media["short"])
    assert (info.width, info.height, float(info.fps)) == (512, 512, 25.0)
    ref = [f.copy() for _, f in video_io.FrameSource(media["short"], info, 30)]
    n = len(ref)
    assert n == 30
    # the engine's decode matches ffmpeg's own RGB conversion to within rounding
    ff = _decode_all(media["short"], info)
    assert len(ff) == n and np.abs(ff[5].astype(int) - ref[5]).mean() < 2.5
    # small chunks so the backward pass needs several seeks
    src = video_io.FrameSource(media["short"], info, 3 * n, chunk_bytes=7 * 512 * 512 * 3)
    got = 0
    for k, (i, f) in enumerate(src):
        assert i == video_io.pingpong_index(k, n)
        assert np.array_equal(f, ref[i]), f"frame {k} (template frame {i}) differs"
        got += 1
    assert got == 3 * n


def test_frame_source_cuts_a_long_template(media):
    info = video_io.probe(media["closeup"])
    idx = [i for i, _ in video_io.FrameSource(media["closeup"], info, 10)]
    assert idx == list(range(10))


def test_sample_media_shapes(media):
    assert set(TEMPLATE_NAMES) >= {"closeup-512", "closeup-720", "wide-512", "noface-512"}
    info = video_io.probe(media["closeup"])
    assert info.frames_hint == 75
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=sample_rate,channels",
                          "-of", "csv=p=0", media["zh"]], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "16000,1"


def test_pearson():
    a = np.arange(20, dtype=float)
    assert abs(pearson(a, 2 * a + 1) - 1.0) < 1e-9
    assert abs(pearson(a, -a) + 1.0) < 1e-9
    assert pearson(a, np.ones(20)) == 0.0
    b = a.copy()
    b[3] = np.nan
    assert abs(pearson(b, a) - 1.0) < 1e-9
    assert pearson(a[:3], a[:3]) is None
