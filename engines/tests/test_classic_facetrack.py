"""The classic engine's face mesh shortcuts give the same landmarks as mediapipe's public API."""
from __future__ import annotations

import numpy as np

import facetrack
import pipeline
import video_io


def test_xy_reads_the_wire_form_and_falls_back_to_parsing():
    from mediapipe.framework.formats import landmark_pb2

    rng = np.random.default_rng(1)
    pts = rng.random((468, 3)).astype(np.float32)
    pts[5] = 0.0  # a zero coordinate is still written (proto2 optional fields)
    lms = landmark_pb2.NormalizedLandmarkList()
    for x, y, z in pts:
        lms.landmark.add(x=float(x), y=float(y), z=float(z))
    got = facetrack._xy(lms.SerializeToString())
    assert got.dtype == np.float32 and got.shape == (468, 2)
    assert np.array_equal(got, pts[:, :2])
    # another layout (visibility set on one landmark) takes the message parser: same values
    lms.landmark[7].visibility = 0.5
    got = facetrack._xy(lms.SerializeToString())
    assert np.array_equal(got, pts[:, :2])


def test_direct_mesh_path_matches_the_public_process(media):
    info = video_io.probe(media["closeup"])
    frames = [f for _, f in video_io.FrameSource(media["closeup"], info, 30)]
    fast, public = facetrack.FaceTracker(), facetrack.FaceTracker()
    fast_meter, public_meter = facetrack.ApertureMeter(), facetrack.ApertureMeter()
    assert fast._tracker._direct and fast._finder._direct and fast_meter._mesh._direct
    for m in (public._tracker, public._finder, public_meter._mesh):
        m._direct = False
    for f in frames:
        a, b = fast.track(f), public.track(f)
        assert a is not None and np.array_equal(a, b)
        assert fast_meter.measure(f, a) == public_meter.measure(f, b)


def test_score_stride_keeps_enough_samples():
    assert pipeline.SCORE_STRIDE == 2 and pipeline.SCORE_MIN_SAMPLES == 125
    assert pipeline.score_stride(100) == 1  # a 4 s render at 25 fps: every frame
    assert pipeline.score_stride(249) == 1
    assert pipeline.score_stride(250) == 2  # 10 s: every 2nd frame, 125 samples
    assert pipeline.score_stride(90000) == 2


def test_frame_source_closed_early_stops_its_decoder(media):
    info = video_io.probe(media["closeup"])
    it = iter(video_io.FrameSource(media["closeup"], info, 50))
    next(it)
    proc = it.gi_frame.f_locals["dec"].proc
    assert proc.poll() is None
    it.close()  # what the reader thread does when the item fails
    assert proc.poll() is not None


def test_bad_audio_fails_before_rendering_and_leaves_nothing(media, tmp_path):
    import threading

    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all" * 64)
    out = tmp_path / "bad.mp4"

    class Chan:
        def log(self, *a):
            pass

        def progress(self, *a):
            pass

    before = {t for t in threading.enumerate()}
    try:
        pipeline.render_item({"id": "bad", "video": media["closeup"], "audio": str(bad), "output": str(out),
                              "duration": 2.0, "params": {}}, pipeline.Models(), Chan())
    except video_io.InputError as e:
        assert "audio" in str(e)
    else:
        raise AssertionError("a bad audio file must fail the item")
    assert not out.exists() and not (tmp_path / "bad.mp4.part.mp4").exists()
    for t in set(threading.enumerate()) - before:
        t.join(timeout=5)
        assert not t.is_alive(), t.name
