"""End-to-end tests with a real worker subprocess speaking the protocol."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import CLASSIC, ffprobe_duration, ffprobe_streams

FPS = 25


def request(media, tmp_path, rid, video, audio, duration, video_key, **params):
    return {"id": rid, "video": media[video], "audio": media[audio],
            "output": os.path.join(str(tmp_path), f"{rid}.engine.mp4"),
            "item_key": f"item-{rid}", "video_key": video_key, "audio_key": f"audio-{audio}",
            "params": params, "cache_dir": os.path.join(media["dir"], "cache"), "duration": duration,
            "future_field": {"ignored": True}}


def check_output(path, duration):
    streams = ffprobe_streams(path)
    kinds = {s["codec_type"]: s for s in streams}
    assert set(kinds) == {"video", "audio"}
    assert kinds["video"]["codec_name"] == "h264" and kinds["video"]["pix_fmt"] == "yuv420p"
    assert kinds["audio"]["codec_name"] == "aac"
    assert abs(ffprobe_duration(path) - duration) < 0.08
    assert abs(ffprobe_duration(path, "v:0") - duration) < 0.06


def test_hello(worker):
    h = worker.hello
    assert h["type"] == "hello" and h["protocol"] == 1 and h["name"] == "classic"
    caps = h["capabilities"]
    assert caps["audio_sample_rate"] == 16000 and caps["audio_channels"] == 1
    assert caps["progress"] is True


def test_render_closeup_scores_and_loops(worker, media, tmp_path):
    """Close-up, template (3 s) shorter than the audio (4 s): ping-pong loop, score >= 0.8."""
    req = request(media, tmp_path, "closeup-1", "closeup", "en", 4.0, "vk-closeup", contact_sheet=True)
    final, seen = worker.render(req)
    assert final["type"] == "done", final
    assert final["frames"] == 100
    progress = [m for m in seen if m["type"] == "progress"]
    assert progress and progress[-1]["frame"] == progress[-1]["frames"] == 100
    assert all(m["id"] == "closeup-1" for m in seen if "id" in m)
    frames = [m["frame"] for m in progress]
    assert frames == sorted(frames)
    assert final["score"] >= 0.8, final
    check_output(req["output"], 4.0)
    sheet = os.path.splitext(req["output"])[0] + ".contact.png"
    assert os.path.getsize(sheet) > 10000
    logs = " ".join(m["message"] for m in seen if m["type"] == "log")
    assert "cache miss" in logs and sheet in logs
    assert not os.path.exists(req["output"] + ".part.mp4")


def test_face_track_cache_hit_and_cut(worker, media, tmp_path):
    """Same template, new audio (2 s, shorter than the template: cut) -> cache hit."""
    cache_file = [f for f in os.listdir(os.path.join(media["dir"], "cache")) if "vk-closeup" in f]
    assert cache_file, "the first render must have stored the face track"
    req = request(media, tmp_path, "closeup-2", "closeup", "zh", 2.0, "vk-closeup")
    final, seen = worker.render(req)
    assert final["type"] == "done", final
    assert final["frames"] == 50
    logs = [m["message"] for m in seen if m["type"] == "log"]
    assert any("cache hit" in m for m in logs), logs
    assert any("tracked 0 new template frames" in m for m in logs), logs
    check_output(req["output"], 2.0)
    assert final["score"] >= 0.7, final


def test_no_face_fails_with_input_and_worker_goes_on(worker, media, tmp_path):
    req = request(media, tmp_path, "noface-1", "noface", "en", 4.0, "vk-noface")
    final, _ = worker.render(req)
    assert final["type"] == "error" and final["kind"] == "input", final
    assert "no face found at 00:00:0" in final["message"]
    assert not os.path.exists(req["output"])
    assert not os.path.exists(req["output"] + ".part.mp4")
    # the worker keeps serving: a short (1.2 s) template looped under 4 s of audio
    req2 = request(media, tmp_path, "short-1", "short", "en", 4.0, "vk-short")
    final2, _ = worker.render(req2)
    assert final2["type"] == "done", final2
    assert final2["frames"] == 100
    check_output(req2["output"], 4.0)
    assert final2["score"] >= 0.8, final2


def test_wide_shot(worker, media, tmp_path):
    req = request(media, tmp_path, "wide-1", "wide", "en", 4.0, "vk-wide")
    final, _ = worker.render(req)
    assert final["type"] == "done", final
    assert final["score"] >= 0.6, final
    check_output(req["output"], 4.0)


def test_missing_template_is_input_error(worker, media, tmp_path):
    req = request(media, tmp_path, "missing-1", "closeup", "en", 4.0, "vk-missing")
    req["video"] = os.path.join(str(tmp_path), "nope.mp4")
    final, _ = worker.render(req)
    assert final["type"] == "error" and final["kind"] == "input"


def test_untouched_template_scores_about_zero(media):
    """The score is a real measurement: the template itself does not correlate with the speech."""
    import audio
    import video_io
    from facetrack import ApertureMeter, FaceTracker
    from score import lipsync_score

    info = video_io.probe(media["closeup"])
    tr = audio.analyse(media["en"], FPS, 100)
    tracker, meter = FaceTracker(), ApertureMeter()
    ap = np.full(100, np.nan)
    for k, (_, frame) in enumerate(video_io.FrameSource(media["closeup"], info, 100)):
        lm = tracker.track(frame)
        a = meter.measure(frame, lm)
        if a is not None:
            ap[k] = a
    assert np.isfinite(ap).sum() > 90
    s = lipsync_score(ap, tr.envelope)
    assert abs(s) < 0.35, s


def test_shutdown_and_stdin_close():
    for how in ("shutdown", "eof"):
        p = subprocess.Popen([sys.executable, os.path.join(CLASSIC, "worker.py")], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        hello = json.loads(p.stdout.readline())
        assert hello["type"] == "hello"
        if how == "shutdown":
            p.stdin.write('{"type":"shutdown"}\n')
            p.stdin.flush()
        p.stdin.close()
        assert p.wait(timeout=10) == 0
        assert p.stdout.read() == ""


def test_brief_face_loss_passes_through(worker, media, tmp_path):
    """Frames where the face is lost (here: 0.4 s of black) pass through; the item succeeds."""
    lossy = os.path.join(str(tmp_path), "lossy.mp4")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", media["closeup"], "-vf",
                    "drawbox=x=0:y=0:w=iw:h=ih:color=black:t=fill:enable='between(t,1,1.4)'",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", lossy], check=True)
    req = request(media, tmp_path, "lossy-1", "closeup", "en", 3.0, "vk-lossy")
    req["video"] = lossy
    final, _ = worker.render(req)
    assert final["type"] == "done", final
    check_output(req["output"], 3.0)
    # the black frames stayed black
    raw = subprocess.run(["ffmpeg", "-v", "error", "-ss", "1.2", "-i", req["output"], "-frames:v", "1",
                          "-f", "rawvideo", "-pix_fmt", "gray", "-"], capture_output=True, check=True).stdout
    assert np.frombuffer(raw, np.uint8).mean() < 20


def test_several_faces_pick_the_largest_central_one(media):
    """Two faces: a big one in the middle and a small one in a corner -> the big one, every frame."""
    import cv2
    import media_samples
    from facetrack import FaceTracker, idx

    src = media_samples.astronaut()
    big = cv2.warpAffine(src, media_samples._affine(225, 126, 1.6, 960, 540), (960, 540), flags=cv2.INTER_CUBIC,
                         borderMode=cv2.BORDER_REFLECT101)
    small = cv2.resize(src[50:210, 150:300], None, fx=1.5, fy=1.5, interpolation=cv2.INTER_AREA)
    tracker = FaceTracker()
    h, w = small.shape[:2]
    first = big.copy()
    first[20:20 + h, 10:10 + w] = small
    assert len(tracker._finder.faces(first)) == 2  # both faces are visible to the detector
    centres = []
    for k in range(6):
        frame = big.copy()
        frame[20 + 2 * k:20 + 2 * k + h, 10:10 + w] = small  # the small face moves a little
        if k == 3:
            tracker.reset()  # a re-acquisition must pick the same face
        lm = tracker.track(frame)
        assert lm is not None
        centres.append(lm[idx(13)])
    for c in centres:
        assert 380 < c[0] < 580 and c[1] > 280, centres
