"""The face2face engine against a stand-in HeyGem service: a real worker subprocess, real ffmpeg."""
from __future__ import annotations

import json
import os
import threading
import time

import pytest

from conftest import ENGINES, Worker, ffprobe_duration, ffprobe_streams
from face2face_standin import Standin

WORKER = os.path.join(ENGINES, "face2face", "worker.py")
SHARE_AS = "/code/data/talkie"  # as the service in its container would see the share


def f2f_worker(params: dict) -> Worker:
    """The face2face worker as a subprocess speaking the protocol."""
    return Worker(WORKER, env={"TALKIE_ENGINE_PARAMS": json.dumps(params)}, timeout=30.0)


@pytest.fixture
def setup(tmp_path):
    """A stand-in service (share mounted at SHARE_AS, results in its temp folder) and the params for it."""
    share, temp = tmp_path / "share", tmp_path / "temp"
    share.mkdir()
    temp.mkdir()
    svc = Standin(str(temp), {SHARE_AS: str(share)})
    params = {"url": svc.url, "share": str(share), "share_as": SHARE_AS, "results": str(temp), "poll": 0.05,
              "gone_timeout": 1.0}
    workers = []

    def start(**over):
        w = f2f_worker({**params, **over})
        workers.append(w)
        w.hello = w.recv()
        assert w.hello is not None, w.stderr
        assert w.hello["type"] == "hello", w.hello
        return w

    yield {"svc": svc, "params": params, "start": start, "share": str(share), "temp": str(temp), "dir": tmp_path}
    for w in workers:
        w.close(timeout=10)
    svc.close()


def request(media, st, rid, audio="en", duration=4.0, **params):
    return {"id": rid, "video": media["closeup"], "audio": media[audio],
            "output": os.path.join(str(st["dir"]), f"{rid}.engine.mp4"), "item_key": f"key{rid}-0123456789abcdef",
            "video_key": "vk", "audio_key": "ak", "params": params, "cache_dir": str(st["dir"] / "cache"),
            "duration": duration}


def check_output(path, duration):
    kinds = [s["codec_type"] for s in ffprobe_streams(path)]
    assert sorted(kinds) == ["audio", "video"]
    assert abs(ffprobe_duration(path) - duration) < 0.1
    assert abs(ffprobe_duration(path, "v:0") - duration) < 0.1


def fatal_of(params: dict) -> tuple[dict, int]:
    w = f2f_worker(params)
    msg = w.recv()
    rc = w.proc.wait(timeout=20)
    return msg, rc


# --- handshake -------------------------------------------------------------------------------

def test_hello(setup):
    w = setup["start"]()
    assert w.hello["protocol"] == 1 and w.hello["name"] == "face2face"
    caps = w.hello["capabilities"]
    assert caps["progress"] is True and caps["device"] == f"face2face {setup['svc'].url}"
    assert "audio_sample_rate" not in caps


def test_fatal_when_service_down(setup):
    url = setup["svc"].url
    setup["svc"].go_away()
    msg, rc = fatal_of(setup["params"])
    assert msg["type"] == "fatal" and url in msg["message"], msg
    assert rc == 1


def test_fatal_without_url_or_share(setup):
    msg, rc = fatal_of({k: v for k, v in setup["params"].items() if k != "url"})
    assert msg["type"] == "fatal" and "url=" in msg["message"] and rc == 1
    msg, rc = fatal_of(dict(setup["params"], results=str(setup["dir"] / "nope")))
    assert msg["type"] == "fatal" and "nope" in msg["message"] and rc == 1


def test_fatal_when_not_face2face(setup, tmp_path):
    # a plain HTTP server that is not HeyGem: the probe query gets a 404 page
    import http.server

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        msg, rc = fatal_of(dict(setup["params"], url=f"http://127.0.0.1:{srv.server_address[1]}"))
    finally:
        srv.shutdown()
        srv.server_close()
    assert msg["type"] == "fatal" and "face2face" in msg["message"] and rc == 1


# --- items -----------------------------------------------------------------------------------

def test_success_with_progress(setup, media):
    w = setup["start"]()
    req = request(media, setup, "ok1")
    final, seen = w.render(req)
    assert final["type"] == "done", (final, w.stderr[-3000:])
    assert final["frames"] == 100  # 4 s at 25 fps
    progress = [m for m in seen if m["type"] == "progress"]
    assert all(m["unit"] == "percent" and m["frames"] == 100 and m["stage"] for m in progress)
    pcts = [m["frame"] for m in progress]
    assert pcts == sorted(pcts) and pcts[-1] == 100 and len(pcts) >= 4
    # HeyGem sets 90 % and done back to back, so "video rendered" is seldom seen
    assert {"inputs ready", "audio features extracted", "finished"} <= {m["stage"] for m in progress}
    pairs = [(m["frame"], m["stage"]) for m in progress]
    assert all(a != b for a, b in zip(pairs, pairs[1:])), "progress repeats itself"
    check_output(req["output"], 4.0)
    body = setup["svc"].submits[0]
    assert body["video_url"].startswith(SHARE_AS + "/talkie-keyok10123") and body["code"].startswith("talkie-")
    assert body["audio_url"].startswith(SHARE_AS + "/") and body["chaofen"] == 0 and body["pn"] == 1
    assert os.listdir(setup["share"]) == [] and os.listdir(setup["temp"]) == []
    assert not os.path.exists(req["output"] + ".part.mp4")
    # the next item on the same worker, shorter than the template
    req2 = request(media, setup, "ok2", audio="zh", duration=2.0)
    final2, _ = w.render(req2)
    assert final2["type"] == "done", final2
    check_output(req2["output"], 2.0)


def test_result_reencoded_when_not_copyable(setup, media):
    """An MPEG-4 Part 2 result whose video is 0.5 s short: re-encoded to H.264, last frame held."""
    svc = setup["svc"]
    svc.result_vcodec, svc.result_trim = "mpeg4", 0.5
    w = setup["start"]()
    req = request(media, setup, "reenc1")
    final, _ = w.render(req)
    assert final["type"] == "done", (final, w.stderr[-3000:])
    check_output(req["output"], 4.0)
    v = [s for s in ffprobe_streams(req["output"]) if s["codec_type"] == "video"][0]
    assert v["codec_name"] == "h264" and v["pix_fmt"] == "yuv420p"


def test_busy_then_success(setup, media):
    svc = setup["svc"]
    svc.busy_times = 3
    w = setup["start"]()
    final, seen = w.render(request(media, setup, "busy1"))
    assert final["type"] == "done", final
    assert len(svc.submits) == 4 and svc.busy_answers == 3 and svc.max_running == 1
    assert any(m.get("stage") == "waiting for the service" for m in seen)


def test_busy_timeout(setup, media):
    setup["svc"].busy_times = 10 ** 6
    w = setup["start"](busy_timeout=0.5)
    final, _ = w.render(request(media, setup, "busy2"))
    assert final["type"] == "error" and final["kind"] == "transient" and "busy" in final["message"], final
    assert os.listdir(setup["share"]) == []


@pytest.mark.parametrize("code,msg,kind", [
    (10002, "audio_url参数缺失", "input"),
    (10003, "获取锁异常", "transient"),
    (9999, "系统异常", "transient"),
])
def test_submit_refused(setup, media, code, msg, kind):
    setup["svc"].submit_code, setup["svc"].submit_msg = code, msg
    w = setup["start"]()
    final, _ = w.render(request(media, setup, f"refused{code}"))
    assert final["type"] == "error" and final["kind"] == kind, final
    assert str(code) in final["message"] and msg in final["message"]
    assert os.listdir(setup["share"]) == []


@pytest.mark.parametrize("msg,kind", [
    ("存在多人脸", "input"),
    ("[x]预处理失败，异常信息:[cannot open video]", "input"),
    ("CUDA out of memory", "transient"),
    ("**生成视频失败", "transient"),
])
def test_task_failed(setup, media, msg, kind):
    setup["svc"].fail_msg = msg
    w = setup["start"]()
    final, _ = w.render(request(media, setup, "failed"))
    assert final["type"] == "error" and final["kind"] == kind and msg in final["message"], final


def test_forgotten_with_result_file(setup, media):
    svc = setup["svc"]
    svc.forget, svc.forget_with_result = True, True
    w = setup["start"]()
    req = request(media, setup, "forgot1")
    final, seen = w.render(req)
    assert final["type"] == "done", (final, w.stderr[-3000:])
    check_output(req["output"], 4.0)
    assert any("forgot" in m["message"] for m in seen if m["type"] == "log")
    assert os.listdir(setup["temp"]) == [] and os.listdir(setup["share"]) == []


def test_forgotten_without_result_file(setup, media):
    svc = setup["svc"]
    svc.forget, svc.forget_with_result = True, False
    w = setup["start"]()
    final, _ = w.render(request(media, setup, "forgot2"))
    assert final["type"] == "error" and final["kind"] == "transient", final
    assert "lost the task" in final["message"] and "retried" in final["message"]


def test_service_gone_mid_item(setup, media):
    setup["svc"].vanish_at = 20
    w = setup["start"](gone_timeout=1.0)
    t0 = time.monotonic()
    final, seen = w.render(request(media, setup, "gone1"))
    elapsed = time.monotonic() - t0
    assert final["type"] == "error" and final["kind"] == "transient", final
    assert "stopped answering" in final["message"] and setup["svc"].url in final["message"]
    assert 1.0 < elapsed < 6.0, elapsed
    assert os.listdir(setup["share"]) == []


def test_never_finishes(setup, media):
    setup["svc"].never_finish = True
    w = setup["start"](timeout=1.0)
    t0 = time.monotonic()
    final, _ = w.render(request(media, setup, "slow1"))
    assert final["type"] == "error" and final["kind"] == "transient", final
    assert "did not finish within 1 s" in final["message"]
    assert time.monotonic() - t0 < 6.0


def test_two_workers_one_service(setup, media):
    svc = setup["svc"]
    a, b = setup["start"](), setup["start"]()
    reqs = [request(media, setup, "two-a"), request(media, setup, "two-b", audio="zh", duration=2.0)]
    results = {}

    def go(w, req):
        results[req["id"]] = w.render(req, timeout=60)

    threads = [threading.Thread(target=go, args=(w, r)) for w, r in zip((a, b), reqs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert results["two-a"][0]["type"] == "done" and results["two-b"][0]["type"] == "done", results
    assert svc.max_running == 1 and len({s["code"] for s in svc.submits}) == 2
    check_output(reqs[0]["output"], 4.0)
    check_output(reqs[1]["output"], 2.0)
    waited = [m for r in results.values() for m in r[1] if m.get("stage") == "waiting for the service"]
    assert waited, "one of the two must have waited for the other"
