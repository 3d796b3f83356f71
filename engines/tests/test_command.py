"""The command engine (engines/command/worker.py): a real worker subprocess running
engines/tests/fake_model.sh (a stand-in for a model's inference script) and real ffmpeg."""
from __future__ import annotations

import functools
import json
import os
import shlex
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

from conftest import ENGINES, Worker

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(ENGINES, "command", "worker.py")
FAKE = os.path.join(HERE, "fake_model.sh")
FAKE_CMD = shlex.quote(FAKE) + " --face {video} --audio {audio} --outfile {output}"
FRAME_RX = r"Processing frame (?P<frame>\d+)/(?P<frames>\d+)"
FAST = {"x264_preset": "ultrafast"}  # the tests' encodes; the default is veryfast
WEIRD = "-dash 'single' \"double\" $(touch pwned) ü 视频 {video} ${HOME}"


def command_worker(params, raw_params: str | None = None) -> Worker:
    """A command-engine worker speaking the protocol (under an unbuffered interpreter)."""
    env = {"TALKIE_ENGINE_PARAMS": raw_params if raw_params is not None else json.dumps(params)}
    return Worker(WORKER, env=env, python_args=("-u",), timeout=60.0)


def start(params) -> Worker:
    w = command_worker(dict(FAST, **params))
    w.hello = w.recv(timeout=30)
    assert w.hello is not None and w.hello["type"] == "hello", w.stderr
    return w


@pytest.fixture(scope="module")
def cw():
    w = start({"command": FAKE_CMD, "progress": FRAME_RX, "audio_sample_rate": 16000, "audio_channels": 1})
    yield w
    w.close()


def request(media, tmp_path, rid, audio="en", video="closeup", **params):
    duration = {"en": 4.0, "zh": 2.0}[audio]
    return {"id": rid, "video": media[video], "audio": media[audio],
            "output": os.path.join(str(tmp_path), f"{rid}.engine.mp4"),
            "item_key": f"item-{rid}", "video_key": f"vk-{video}", "audio_key": f"ak-{audio}",
            "params": params, "cache_dir": os.path.join(str(tmp_path), "cache"), "duration": duration,
            "future_field": {"ignored": True}}


def fake(*args: str) -> str:
    return FAKE_CMD + "".join(" " + shlex.quote(a) for a in args)


def probe(path: str) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration:stream=codec_type,codec_name,"
                          "pix_fmt,duration", "-of", "json", path], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@functools.lru_cache(maxsize=None)
def envelope(path: str) -> np.ndarray:
    """The loudness of the first audio stream in 50 ms windows."""
    raw = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", path, "-map", "0:a:0", "-ac", "1", "-ar", "8000",
                          "-f", "s16le", "-"], capture_output=True, check=True).stdout
    x = np.frombuffer(raw, np.int16).astype(np.float64)
    k = len(x) // 400
    return np.sqrt((x[:k * 400].reshape(k, 400) ** 2).mean(axis=1))


def check_output(path: str, duration: float, narration: str):
    """One H.264 yuv420p video stream and the narration as the only (AAC) audio stream, `duration` long."""
    info = probe(path)
    st = info["streams"]
    assert [s["codec_type"] for s in st] == ["video", "audio"], st
    v, a = st
    assert v["codec_name"] == "h264" and v["pix_fmt"] == "yuv420p"
    assert a["codec_name"] == "aac"
    assert abs(float(info["format"]["duration"]) - duration) < 0.08
    assert abs(float(v["duration"]) - duration) < 0.06
    assert abs(float(a["duration"]) - duration) < 0.08
    e_out, e_ref = envelope(path), envelope(narration)
    n = min(len(e_out), len(e_ref))
    assert n >= int(duration * 20) - 2
    assert np.corrcoef(e_out[:n], e_ref[:n])[0, 1] > 0.9, "the output's audio is not the narration"
    assert not os.path.exists(path + ".part.mp4")
    leftovers = [f for f in os.listdir(os.path.dirname(path)) if ".work-" in f]
    assert not leftovers, leftovers


def progress_of(seen, rid):
    prog = [m for m in seen if m["type"] == "progress"]
    assert all(m["id"] == rid for m in prog)
    return prog


# handshake --------------------------------------------------------------------------------

def test_hello(cw):
    h = cw.hello
    assert h["protocol"] == 1 and h["name"] == "command"
    caps = h["capabilities"]
    assert caps["progress"] is True and caps["device"] == "command"
    assert caps["audio_sample_rate"] == 16000 and caps["audio_channels"] == 1


def test_hello_without_progress_regex():
    w = start({"command": FAKE_CMD})
    try:
        caps = w.hello["capabilities"]
        assert caps["progress"] is False and "audio_sample_rate" not in caps
    finally:
        w.close()


NOT_EXECUTABLE = os.path.join(HERE, "conftest.py")


@pytest.mark.parametrize("params, expected", [
    ({}, "needs the parameter command"),
    ({"command": "   "}, "needs the parameter command"),
    ({"command": FAKE + " --face {vidoe} --outfile {output}"}, "unknown placeholder {vidoe}"),
    ({"command": FAKE + " --face '{video}' --outfile '{ output }'"}, "unknown placeholder { output }"),
    ({"command": FAKE_CMD, "progress": "frame (\\d+"}, "progress regex"),
    ({"command": FAKE_CMD, "progress": "(\\d+)/(\\d+)"}, "(?P<frame>"),
    ({"command": FAKE_CMD, "progress": "of (?P<frames>\\d+)"}, "(?P<frame>"),
    ({"command": FAKE_CMD, "input_error": "[unclosed"}, "input_error regex"),
    ({"command": "/nonexistent/lipsync/inference.py --face {video}"}, "'/nonexistent/lipsync/inference.py' is not an executable file"),
    ({"command": NOT_EXECUTABLE + " {video}"}, "is not an executable file"),
    ({"command": "no-such-lipsync-tool-x9 --face {video}"}, "'no-such-lipsync-tool-x9' is not on the PATH"),
    ({"command": "python3 'unbalanced {video}"}, "cannot split the command"),
    ({"command": FAKE_CMD, "cwd": "/nonexistent/folder"}, "/nonexistent/folder does not exist"),
    ({"command": FAKE_CMD, "input_exit_codes": "2,x"}, "input_exit_codes"),
    ({"command": FAKE_CMD, "output_ext": "../mp4"}, "output_ext"),
    (None, "TALKIE_ENGINE_PARAMS is not JSON"),
])
def test_fatal_at_handshake(params, expected):
    w = command_worker(params, raw_params="{not json" if params is None else None)
    try:
        msg = w.recv(timeout=30)
        assert msg is not None and msg["type"] == "fatal", (msg, w.stderr)
        assert expected in msg["message"], msg["message"]
        assert w.proc.wait(timeout=10) != 0
    finally:
        w.close()


# success and progress ---------------------------------------------------------------------

def test_frame_progress_and_short_output_padded(cw, media, tmp_path):
    """frame/frames progress on stderr; the model's 3 s silent video is padded to the 4 s narration."""
    req = request(media, tmp_path, "frames-1", "en", command=fake("--progress", "frames"))
    final, seen = cw.render(req)
    assert final["type"] == "done", (final, cw.stderr[-3000:])
    assert final["frames"] == 100  # 4 s at the template's 25 fps
    prog = progress_of(seen, "frames-1")
    assert prog and prog[-1]["frame"] == prog[-1]["frames"] == 30
    frames = [m["frame"] for m in prog]
    assert frames == sorted(frames) and len(set(frames)) == len(frames)  # only changes are sent
    assert len(prog) < 15, prog  # 30 lines: at most ~10 messages a second
    check_output(req["output"], 4.0, media["en"])
    assert "Processing frame 1/30" in cw.stderr_once_it_has("Processing frame 1/30")  # the command's output is in the worker's log


@pytest.mark.parametrize("regex", [r"(\d+)%\|", r"(?P<percent>\d+)%"])
def test_percent_progress_from_tqdm_on_stdout(cw, media, tmp_path, regex):
    """tqdm-style bars redrawn with \\r, on stdout: percentages."""
    rid = "tqdm-" + str(len(regex))
    req = request(media, tmp_path, rid, "zh", command=fake("--progress", "tqdm"), progress=regex)
    final, seen = cw.render(req)
    assert final["type"] == "done", (final, cw.stderr[-3000:])
    prog = progress_of(seen, rid)
    assert prog and all(m["frames"] == 100 and m["unit"] == "percent" for m in prog), prog
    assert prog[-1]["frame"] == 100
    assert [m["frame"] for m in prog] == sorted(m["frame"] for m in prog)
    check_output(req["output"], 2.0, media["zh"])


@pytest.mark.parametrize("mode, audio, params", [
    ("ok", "zh", {}),                           # 3 s silent video under 2 s of narration: cut
    ("other-audio", "en", {}),                  # its own 48 kHz sine track: replaced by the narration
    ("avi", "zh", {"output_ext": "avi"}),       # an AVI (MPEG-4 part 2): re-encoded into an MP4
])
def test_output_normalised(cw, media, tmp_path, mode, audio, params):
    req = request(media, tmp_path, f"norm-{mode}", audio, command=fake("--mode", mode), **params)
    final, _ = cw.render(req)
    assert final["type"] == "done", (final, cw.stderr[-3000:])
    duration = req["duration"]
    assert final["frames"] == round(duration * 25)
    check_output(req["output"], duration, media[audio])


def test_names_with_spaces_quotes_unicode_and_dashes_pass_intact(cw, media, tmp_path):
    d = tmp_path / ("out dir 'q' \"dq\" é {output} $(x)")
    d.mkdir()
    video = str(d / (WEIRD + ".mp4"))
    audio = str(d / (WEIRD + " narration.wav"))
    shutil.copy(media["closeup"], video)
    shutil.copy(media["zh"], audio)
    record = str(tmp_path / "args.txt")
    req = request(media, tmp_path, "weird-1", "zh", command=fake("--record", record))
    req.update(video=video, audio=audio, output=str(d / (WEIRD + ".engine.mp4")))
    final, _ = cw.render(req)
    assert final["type"] == "done", (final, cw.stderr[-3000:])
    with open(record, encoding="utf-8") as f:
        args = f.read().split("\n")
    assert args[:4] == ["--face", video, "--audio", audio]
    assert args[4] == "--outfile"
    work = os.path.dirname(args[5])
    assert os.path.dirname(work) == str(d) and ".engine.mp4.work-" in os.path.basename(work)
    assert args[5].endswith("/output.mp4")
    assert not os.path.exists(work)  # the scratch folder is gone
    check_output(req["output"], 2.0, audio)
    assert not (tmp_path / "pwned").exists() and not os.path.exists("pwned")


def test_environment_and_literal_braces_for_sh_c(cw, media, tmp_path):
    d = tmp_path / "a b"
    d.mkdir()
    video = str(d / (WEIRD + ".mp4"))
    shutil.copy(media["closeup"], video)
    record = str(tmp_path / "env.txt")
    script = ('printf "%s\\n" "$TALKIE_VIDEO" "${TALKIE_AUDIO}" "$TALKIE_DURATION" "$TALKIE_FPS" "$TALKIE_FRAMES" '
              '"$TALKIE_ITEM_KEY" "$TALKIE_VIDEO_KEY" "$TALKIE_AUDIO_KEY" "$TALKIE_CACHE_DIR" "$1" "$2" '
              '"{{literal}}" > ' + shlex.quote(record) + '; '
              'test -d "$TALKIE_WORKDIR" && '
              'ffmpeg -nostdin -v error -i "$TALKIE_VIDEO" -map 0:v:0 -c:v copy -an "$TALKIE_OUTPUT"')
    command = "sh -c " + shlex.quote(script) + " sh {duration} {workdir}"
    req = request(media, tmp_path, "env-1", "zh", command=command)
    req["video"] = video
    final, _ = cw.render(req)
    assert final["type"] == "done", (final, cw.stderr[-3000:])
    with open(record, encoding="utf-8") as f:
        got = f.read().split("\n")
    assert got[:9] == [video, media["zh"], "2", "25", "50", "item-env-1", "vk-closeup", "ak-zh",
                       os.path.join(str(tmp_path), "cache")]
    assert got[9] == "2" and ".engine.mp4.work-" in got[10]
    assert got[11] == "{literal}"
    check_output(req["output"], 2.0, media["zh"])


# failures ---------------------------------------------------------------------------------

def test_nonzero_exit_is_transient_with_the_tail_of_the_output(cw, media, tmp_path):
    req = request(media, tmp_path, "fail-1", "zh", command=fake("--mode", "fail"))
    final, _ = cw.render(req)
    assert final["type"] == "error" and final["kind"] == "transient", final
    msg = final["message"]
    assert "exit status 3" in msg and "CUDA out of memory" in msg and "Traceback" in msg
    assert "loading checkpoint" in msg  # stdout lines too
    assert not os.path.exists(req["output"])
    assert not [f for f in os.listdir(tmp_path) if ".work-" in f]


def test_keep_workdir_keeps_the_scratch_folder_of_a_failed_attempt(cw, media, tmp_path):
    req = request(media, tmp_path, "keep-1", "zh", command=fake("--mode", "fail"), keep_workdir=True)
    final, _ = cw.render(req)
    assert final["type"] == "error", final
    kept = [f for f in os.listdir(tmp_path) if ".work-" in f]
    assert len(kept) == 1
    assert os.path.join(str(tmp_path), kept[0]) in cw.stderr_once_it_has(os.path.join(str(tmp_path), kept[0]))
    shutil.rmtree(tmp_path / kept[0])


def test_input_error_regex_makes_an_input_error(cw, media, tmp_path):
    req = request(media, tmp_path, "noface-1", "zh", command=fake("--mode", "noface"),
                  input_error=r"Face not detected")
    final, _ = cw.render(req)
    assert final["type"] == "error" and final["kind"] == "input", final
    assert final["message"] == "ValueError: Face not detected! Ensure the video contains a face in all the frames."
    # without the regex the same failure is transient
    req = request(media, tmp_path, "noface-2", "zh", command=fake("--mode", "noface"))
    final, _ = cw.render(req)
    assert final["type"] == "error" and final["kind"] == "transient", final
    assert "exit status 1" in final["message"] and "Face not detected" in final["message"]


@pytest.mark.parametrize("codes, args, kind", [
    ("3", ("--mode", "fail"), "input"),
    (3, ("--mode", "fail"), "input"),                 # --param input_exit_codes=3 arrives as a number
    ("2, 4", ("--mode", "fail"), "transient"),
    (None, ("--no-such-option",), "transient"),       # argparse's exit status 2 is not an input error by default
])
def test_input_exit_codes(cw, media, tmp_path, codes, args, kind):
    params = {"command": fake(*args)}
    if codes is not None:
        params["input_exit_codes"] = codes
    req = request(media, tmp_path, f"codes-{codes}-{args[0]}", "zh", **params)
    final, _ = cw.render(req)
    assert final["type"] == "error" and final["kind"] == kind, final
    if args[0] == "--no-such-option":
        assert "exit status 2" in final["message"] and "unrecognized argument" in final["message"]


@pytest.mark.parametrize("mode, expected", [("nooutput", "wrote no output at "), ("empty", "wrote an empty file at ")])
def test_no_output_is_transient(cw, media, tmp_path, mode, expected):
    req = request(media, tmp_path, f"{mode}-1", "zh", command=fake("--mode", mode))
    final, _ = cw.render(req)
    assert final["type"] == "error" and final["kind"] == "transient", final
    assert expected in final["message"] and "/output.mp4" in final["message"]


def test_killed_by_a_signal_is_transient(cw, media, tmp_path):
    req = request(media, tmp_path, "signal-1", "zh", command=fake("--mode", "signal"))
    final, _ = cw.render(req)
    assert final["type"] == "error" and final["kind"] == "transient", final
    assert "killed by SIGKILL" in final["message"] and "about to crash" in final["message"]


def _processes_with(arg: str) -> list[int]:
    found = []
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                with open(f"/proc/{e}/cmdline", "rb") as f:
                    if arg.encode() in f.read().split(b"\0"):
                        found.append(int(e))
            except OSError:
                pass
    return found


def test_timeout_kills_the_command_and_its_children(cw, media, tmp_path):
    req = request(media, tmp_path, "timeout-1", "zh", command=fake("--mode", "sleep", "--sleep", "31.25"), timeout=1)
    final, _ = cw.render(req)
    assert final["type"] == "error" and final["kind"] == "transient", final
    assert "timed out after 1s" in final["message"]
    assert cw.last_seconds < 8
    time.sleep(0.2)
    assert _processes_with("31.25") == []


def test_bad_request_params_fail_the_item_and_the_worker_goes_on(cw, media, tmp_path):
    req = request(media, tmp_path, "badparam-1", "zh", command=FAKE + " --face {face}")
    final, _ = cw.render(req)
    assert final["type"] == "error" and final["kind"] == "input", final
    assert "unknown placeholder {face}" in final["message"]
    req = request(media, tmp_path, "missing-1", "zh")
    req["video"] = str(tmp_path / "nope.mp4")
    final, _ = cw.render(req)
    assert final["type"] == "error" and final["kind"] == "input" and "template not found" in final["message"]
    req = request(media, tmp_path, "after-1", "zh")  # the start parameters again
    final, _ = cw.render(req)
    assert final["type"] == "done", final


# robustness -------------------------------------------------------------------------------

def _peak_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_output_flood_keeps_memory_bounded(media, tmp_path):
    """50 MB of output (and 1 MB without a newline): streamed, the log copy capped, RSS bounded."""
    w = start({"command": fake("--mode", "flood", "--flood-mb", "50"), "progress": FRAME_RX})
    try:
        before = _peak_rss_kb(w.proc.pid)
        req = request(media, tmp_path, "flood-1", "zh")
        final, _ = w.render(req, timeout=80)
        assert final["type"] == "done", (final, w.stderr[-3000:])
        peak = _peak_rss_kb(w.proc.pid)
        print(f'worker peak RSS {before} kB before, {peak} kB after the flood')
        assert peak < before + 30_000, (before, peak)
        assert w.err_bytes < 9 * 1024 * 1024, w.err_bytes  # 8 MiB copied to the log, then a note
        assert "the rest is not copied to this log" in w.stderr_once_it_has("the rest is not copied to this log")
        check_output(req["output"], 2.0, media["zh"])
    finally:
        w.close()


def test_sigterm_stops_the_command(media, tmp_path):
    w = start({"command": FAKE_CMD})
    try:
        record = str(tmp_path / "rec.txt")
        req = request(media, tmp_path, "term-1", "zh", command=fake("--mode", "sleep", "--sleep", "32.5",
                                                                     "--record", record))
        w.send(dict(req, type="render"))
        deadline = time.monotonic() + 20
        while not os.path.exists(record + ".pid") and time.monotonic() < deadline:
            time.sleep(0.05)
        with open(record + ".pid") as f:
            sh_pid = int(f.read())
        assert _processes_with("32.5")
        t0 = time.monotonic()
        w.proc.send_signal(signal.SIGTERM)
        assert w.proc.wait(timeout=10) == 128 + signal.SIGTERM
        assert time.monotonic() - t0 < 2.5  # not the 3 s grace before SIGKILL: the command obeyed SIGTERM
        time.sleep(0.2)
        assert _processes_with("32.5") == []
        assert not os.path.exists(f"/proc/{sh_pid}") or open(f"/proc/{sh_pid}/stat").read().split()[2] == "Z"
        assert not [f for f in os.listdir(tmp_path) if ".work-" in f]
    finally:
        w.close()


# other ways to give the command -----------------------------------------------------------

def test_command_as_a_list_and_relative_executable_in_cwd(cw, media, tmp_path):
    """A JSON array is the argv as is (placeholders still substituted); cwd resolves ./fake_model.sh."""
    record = str(tmp_path / "args.txt")
    req = request(media, tmp_path, "list-1", "zh", command=["./fake_model.sh", "--face", "{video}", "--audio",
                                                             "{audio}", "--outfile", "{output}", "--record", record],
                  cwd=HERE)
    final, _ = cw.render(req)
    assert final["type"] == "done", (final, cw.stderr[-3000:])
    with open(record, encoding="utf-8") as f:
        assert f.read().split("\n")[:2] == ["--face", media["closeup"]]
    check_output(req["output"], 2.0, media["zh"])


def test_odd_sized_output_is_made_even(cw, media, tmp_path):
    script = ('ffmpeg -nostdin -v error -i "$TALKIE_VIDEO" -map 0:v:0 -vf scale=301:257 -c:v libx264 -preset ultrafast '
              '-pix_fmt yuv444p -an "$TALKIE_OUTPUT"')
    req = request(media, tmp_path, "odd-1", "zh", command="sh -c " + shlex.quote(script))
    final, _ = cw.render(req)
    assert final["type"] == "done", (final, cw.stderr[-3000:])
    check_output(req["output"], 2.0, media["zh"])


def test_output_that_is_not_a_video_is_transient(cw, media, tmp_path):
    req = request(media, tmp_path, "notvideo-1", "zh", command="sh -c 'echo hello > \"$TALKIE_OUTPUT\"'")
    final, _ = cw.render(req)
    assert final["type"] == "error" and final["kind"] == "transient", final
    assert "is not a video ffmpeg can read" in final["message"]
    assert not os.path.exists(req["output"])
