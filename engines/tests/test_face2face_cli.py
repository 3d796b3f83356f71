"""The face2face engine end to end through the real `talkie` binary, against the stand-in HeyGem service.

`talkie run --engine face2face` starts engines/face2face/worker.py (plain python3) with the
--param values in TALKIE_ENGINE_PARAMS; the worker submits each item to the in-process
stand-in (engines/tests/face2face_standin.py), which renders with ffmpeg. These tests check
what the runner makes of it: exit codes, --json events, `talkie status --json`, the outputs,
resuming, slots sharing one service, and how the worker's error kinds drive retries.

The binary is not built here: the module is skipped when .build/debug/talkie is missing.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import ENGINES, ffprobe_duration, ffprobe_streams
from face2face_standin import Standin

ROOT = os.path.dirname(ENGINES)
TALKIE = os.environ.get("TALKIE_BIN") or os.path.join(ROOT, ".build", "debug", "talkie")
SHARE_AS = "/code/data/talkie"  # the share as the service in its container would see it

if not (os.path.isfile(TALKIE) and os.access(TALKIE, os.X_OK)):
    pytest.skip(f"the talkie binary is not built ({TALKIE} is missing; run `swift build`)",
                allow_module_level=True)
if not (shutil.which("ffmpeg") and shutil.which("ffprobe") and shutil.which("python3")):
    pytest.skip("ffmpeg, ffprobe and python3 are needed on PATH", allow_module_level=True)


class RecordingStandin(Standin):
    """The stand-in, also recording each accepted task's span (accepted -> status 2 or 3), and able to
    fail only the first N tasks."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.started: list[tuple[float, str]] = []  # (time, code) of every submit answered 10000
        self.ended: dict[str, float] = {}  # code -> when its status became done or failed
        self.fail_first = 0
        self.fail_first_msg: str | None = None

    def submit(self, body: dict) -> dict:
        t = time.monotonic()
        env = super().submit(body)
        if env["code"] == 10000:  # recorded before the answer goes out
            with self.lock:
                self.started.append((t, body["code"]))
        return env

    def _set(self, code: str, status: int, *rest) -> None:
        if status in (2, 3):  # recorded before a query can see it
            with self.lock:
                self.ended.setdefault(code, time.monotonic())
        super()._set(code, status, *rest)

    def work(self, body: dict) -> None:
        # tasks never overlap on the stand-in (run_flag), so setting fail_msg per task is safe
        with self.lock:
            failing = self.fail_first > 0
            if failing:
                self.fail_first -= 1
        if self.fail_first_msg is not None:
            self.fail_msg = self.fail_first_msg if failing else None
        super().work(body)

    @property
    def accepted(self) -> list[str]:
        """The codes of the tasks the service accepted (10001-busy resubmits are not tasks)."""
        return [code for _, code in sorted(self.started)]

    def spans(self) -> list[tuple[float, float | None, str]]:
        return sorted((t, self.ended.get(code), code) for t, code in self.started)


@pytest.fixture(scope="module")
def template_files(media, tmp_path_factory):
    """Three templates with a face and different content (items are keyed by content):
    the close-up as it is, and two re-encoded cuts of it (2.5 s and 2 s)."""
    d = tmp_path_factory.mktemp("f2f-templates")
    a = d / "anna.mp4"
    shutil.copyfile(media["closeup"], a)
    out = [str(a)]
    for name, seconds in (("bert.mp4", 2.5), ("cleo.mp4", 2.0)):
        p = d / name
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", media["closeup"], "-t", str(seconds),
                        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-an", str(p)],
                       check=True, capture_output=True)
        out.append(str(p))
    return out


@pytest.fixture
def f2f(tmp_path, media, template_files):
    """A stand-in service (share mounted at SHARE_AS, results in its temp folder) and a `run` helper."""
    share, temp = tmp_path / "share", tmp_path / "temp"
    share.mkdir()
    temp.mkdir()
    # Each stage lasts five of the worker's polls (0.05 s), so a busy machine that delays a
    # poll still sees every stage (at 0.05 s a stage a poll missed was never reported).
    svc = RecordingStandin(str(temp), {SHARE_AS: str(share)}, stage_seconds=0.25)
    out = tmp_path / "out"

    def templates(n: int) -> str:
        d = tmp_path / f"templates{n}"
        if not d.exists():
            d.mkdir()
            for src in template_files[:n]:
                shutil.copyfile(src, d / os.path.basename(src))
        return str(d)

    runs = itertools.count(1)

    def run(n_templates: int, *extra: str, url: str | None = None):
        return talkie_run(["--audio", media["en"], "--videos", templates(n_templates), "--out", str(out),
                           "--engine", "face2face", "--param", f"url={url or svc.url}", "--param", f"share={share}",
                           "--param", f"share_as={SHARE_AS}", "--param", f"results={temp}", "--param", "poll=0.05",
                           "--param", "gone_timeout=2", "--retry-delay", "0", "--json", *extra],
                          log=str(tmp_path / f"talkie-run-{next(runs)}.log"))

    yield {"svc": svc, "run": run, "out": str(out), "share": str(share), "temp": str(temp)}
    svc.close()


class Run:
    def __init__(self, proc: subprocess.CompletedProcess, log: str):
        self.rc = proc.returncode
        self.stderr = proc.stderr
        self.log = log  # the run's whole stdout and stderr, kept for a failing assertion
        with open(log, "w") as f:
            f.write(f"exit {self.rc}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
        self.events = []
        for line in proc.stdout.splitlines():
            if line.strip():
                ev = json.loads(line)  # with --json every stdout line is one event
                assert isinstance(ev, dict) and "event" in ev, line
                self.events.append(ev)

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["event"] == kind]

    def __repr__(self):  # what an assertion shows (pytest cuts it short without -vv: see self.log)
        died = f" (killed by signal {signal.Signals(-self.rc).name})" if self.rc < 0 else ""
        return (f"rc={self.rc}{died}; full output in {self.log}\nstderr:\n{self.stderr[-3000:]}\nevents:\n"
                + "\n".join(map(json.dumps, self.events)))


def talkie_run(args: list[str], log: str, timeout: float = 120) -> Run:
    return Run(subprocess.run([TALKIE, "run", *args], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL), log)


def talkie_status(out: str) -> dict:
    r = subprocess.run([TALKIE, "status", "--out", out, "--json"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def output_path(out: str, item: dict) -> str:
    p = item["state"]["output"]
    return p if os.path.isabs(p) else os.path.join(out, p)


def check_output(path: str, duration: float) -> None:
    kinds = sorted(s["codec_type"] for s in ffprobe_streams(path))
    assert kinds == ["audio", "video"], (path, kinds)
    assert abs(ffprobe_duration(path) - duration) <= 0.1, (path, ffprobe_duration(path), duration)
    assert abs(ffprobe_duration(path, "v:0") - duration) <= 0.1, (path, ffprobe_duration(path, "v:0"), duration)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------------------------

def test_happy_path_and_resume(f2f, media):
    svc = f2f["svc"]
    r = f2f["run"](2)
    assert r.rc == 0, r
    assert len(r.of("item_succeeded")) == 2 and not r.of("item_failed"), r
    fin = r.of("batch_finished")
    assert len(fin) == 1 and fin[0]["succeeded"] == 2 and fin[0]["failed"] == 0 and fin[0]["rendered"] == 2, r

    # where it ran: the worker's handshake device, naming the service
    started = r.of("item_started")
    assert len(started) == 2 and all(e["attempt"] == 1 for e in started), r
    assert all("face2face" in e["device"] and svc.url in e["device"] for e in started), r

    # the service's percent + stage progress reaches the events, per item never going back
    progress = r.of("item_progress")
    assert progress, r
    assert all(e.get("unit") == "percent" and e["frames"] == 100 and e.get("stage") for e in progress), r
    for key in {e["key"] for e in started}:
        pcts = [e["frame"] for e in progress if e["key"] == key]
        assert pcts and pcts == sorted(pcts) and pcts[-1] == 100, (key, pcts)
    assert {"inputs ready", "audio features extracted", "finished"} <= {e["stage"] for e in progress}, r

    # the state and the outputs: video + the narration, as long as the narration
    narration = ffprobe_duration(media["en"])
    items = talkie_status(f2f["out"])["items"]
    assert len(items) == 2
    for item in items:
        assert item["state"]["status"] == "success", item
        assert "face2face" in item.get("device", ""), item
        check_output(output_path(f2f["out"], item), narration)
    assert len(svc.accepted) == 2 and len(set(svc.accepted)) == 2
    assert os.listdir(f2f["share"]) == [] and os.listdir(f2f["temp"]) == []  # the worker cleaned up

    # a second run on the same folder renders nothing: the service sees no new task
    submits = len(svc.submits)
    again = f2f["run"](2)
    assert again.rc == 0, again
    assert not again.of("item_started") and not again.of("item_progress"), again
    assert again.of("batch_started")[0].get("to_render") == 0, again
    assert again.of("batch_finished")[0]["rendered"] == 0, again
    assert len(svc.submits) == submits
    assert all(i["state"]["status"] == "success" for i in talkie_status(f2f["out"])["items"])


def test_two_slots_take_turns_on_one_service(f2f, media):
    svc = f2f["svc"]
    r = f2f["run"](3, "--slots", "2")
    assert r.rc == 0, r
    assert len(r.of("item_succeeded")) == 3 and not r.of("item_failed"), r

    # two slots really ran at once on the runner's side...
    order = [e["event"] for e in r.events if e["event"] in ("item_started", "item_succeeded")]
    assert order[:2] == ["item_started", "item_started"], order
    # ...but the service never had two tasks: the second slot waited (the worker's lock)
    assert svc.max_running == 1
    assert len(svc.accepted) == 3 and len(set(svc.accepted)) == 3
    spans = svc.spans()
    assert all(end is not None for _, end, _ in spans), spans  # every task reported done
    for (_, end, _), (start, _, _) in zip(spans, spans[1:]):
        assert start >= end, spans  # each task accepted only after the previous one ended
    assert any(e.get("stage") == "waiting for the service" for e in r.of("item_progress")), r

    narration = ffprobe_duration(media["en"])
    items = talkie_status(f2f["out"])["items"]
    assert len(items) == 3 and all(i["state"]["status"] == "success" for i in items), items
    for item in items:
        check_output(output_path(f2f["out"], item), narration)


def test_service_down_is_a_setup_error(f2f):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.monotonic()
    r = f2f["run"](2, url=url)
    assert r.rc == 2, r
    assert url in r.stderr, r
    assert time.monotonic() - t0 < 30, "the probe at the handshake should fail fast"
    assert not r.of("item_started") and not r.of("item_succeeded") and not r.of("item_failed"), r
    items = talkie_status(f2f["out"])["items"]
    assert len(items) == 2
    for item in items:
        assert item["state"]["status"] == "pending" and item["state"].get("attempts", 0) == 0, item
    assert f2f["svc"].submits == []


def test_input_failure_is_not_retried(f2f):
    svc = f2f["svc"]
    svc.fail_msg = "存在多人脸"  # HeyGem: several faces in the template
    r = f2f["run"](1, "--max-attempts", "3")
    assert r.rc == 1, r
    failed = r.of("item_failed")
    assert len(failed) == 1, r
    assert failed[0]["kind"] == "input" and failed[0]["will_retry"] is False, r
    assert "存在多人脸" in failed[0]["message"], r
    assert len(r.of("item_started")) == 1 and not r.of("item_succeeded"), r
    assert len(svc.accepted) == 1
    (item,) = talkie_status(f2f["out"])["items"]
    assert item["state"]["status"] == "failed" and item["state"]["attempts"] == 1, item
    assert item["state"]["lastError"]["kind"] == "input", item


def test_transient_failure_retried_then_succeeds(f2f, media):
    svc = f2f["svc"]
    svc.fail_first, svc.fail_first_msg = 1, "CUDA error: out of memory"  # status 3, the first task only
    r = f2f["run"](1, "--max-attempts", "2")
    assert r.rc == 0, r
    failed = r.of("item_failed")
    assert len(failed) == 1 and failed[0]["kind"] == "transient" and failed[0]["will_retry"] is True, r
    assert "CUDA" in failed[0]["message"], r
    assert [e["attempt"] for e in r.of("item_started")] == [1, 2], r
    assert len(r.of("item_succeeded")) == 1, r
    assert len(svc.accepted) == 2 and len(set(svc.accepted)) == 2  # a fresh code for the retry
    (item,) = talkie_status(f2f["out"])["items"]
    assert item["state"]["status"] == "success" and item["state"]["attempts"] == 2, item
    check_output(output_path(f2f["out"], item), ffprobe_duration(media["en"]))


def test_transient_failure_gives_up_after_max_attempts(f2f):
    svc = f2f["svc"]
    svc.fail_msg = "**生成视频失败"  # HeyGem's generic "video generation failed": transient
    r = f2f["run"](1, "--max-attempts", "2")
    assert r.rc == 1, r
    failed = r.of("item_failed")
    assert [(e["kind"], e["will_retry"]) for e in failed] == [("transient", True), ("transient", False)], r
    assert len(svc.accepted) == 2  # exactly --max-attempts tasks reached the service
    (item,) = talkie_status(f2f["out"])["items"]
    assert item["state"]["status"] == "failed" and item["state"]["attempts"] == 2, item
    assert item["state"]["lastError"]["kind"] == "transient", item
