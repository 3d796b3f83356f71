"""Bad inputs: every kind of broken, odd or hostile input either fails its own item with a
message a user can act on, or succeeds where it should, and the batch goes on.

How: every input is made on the spot (reliability/suites/bad_media.py: ffmpeg, espeak-ng,
Python; faces from scikit-image's public-domain astronaut photo). The template problems go
into ONE batch with good templates sorted before and after them, rendered by the test
engine; the face problems into one batch rendered by the classic engine. For each kind the
expected outcome is written down (kinds(), FACE_KINDS, narrations()) and checked against `talkie status`:
status, error kind, message words, no Swift or Python dump in the message, a valid output
(video + audio + talkie_key tag) for every success, the batch's exit code. Narration
problems are a batch each: usually a refusal at start (exit 2, a clear message, nothing
rendered). Then the time-dependent ones: a template deleted while the batch runs, a
template (and, in full, a narration) that keeps changing while it is hashed, and a 3-hour
narration, which must be refused or warned about up front rather than silently taking
days; it is stopped after a short wait and must stop cleanly.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import harness
from . import bad_media as media

TITLE = "bad templates and narrations fail alone with a clear message"
BUDGET = (150, 600)

VENV_PYTHON = harness.ROOT / ".venv" / "bin" / "python"

# Words that mean "this file is damaged or not media" in a failure message.
UNREADABLE = ("not a media file", "truncated", "incomplete", "damaged", "corrupt", "cannot be read", "unreadable")
# Signs of a message written for a programmer, not a user.
DUMP_MARKERS = ("Traceback (most recent call last)", 'File "/', "Fatal error", ".swift:", "Error Domain=",
                "Optional(", "StoreError", "MediaError", "RunSetupError", "EngineFailure", "NSError", "errno:")
# Advice that only fits a broken output folder; wrong for an input that is a folder or is changing.
DISK_ADVICE = "disk is not full"


@dataclass
class Kind:
    """One kind of template and what Talkie must do with it."""

    label: str
    file: str                          # its name in the templates folder
    make: Callable[[Path], object]     # makes it at the given path
    expect: str                        # "success", "fail", or "either" (success, or a failure saying why)
    words: tuple[str, ...] = ()        # a failure message must contain one of these (lowercase)
    full_only: bool = False
    check: Callable[[harness.Case, dict, Path], None] | None = None  # more checks on a success (item, output)


def _name_kept(stem: str):
    def check(case: harness.Case, item: dict, output: Path) -> None:
        case.check(output.name.startswith(stem) or output.name.startswith("_" + stem),
                   f"output {output.name!r} is not named after the template {stem!r}")
        case.check(not output.name.startswith("-"), f"output {output.name!r} starts with '-' (read as an option by tools)")
    return check


def _dash_safe(case: harness.Case, item: dict, output: Path) -> None:
    case.check(not output.name.startswith("-"), f"output {output.name!r} starts with '-' (read as an option by tools)")


def _portrait(case: harness.Case, item: dict, output: Path) -> None:
    width, height = display_size(output)
    case.check(height > width, f"a portrait phone video came out {width}x{height} (landscape): its rotation was lost")


def _uhd(case: harness.Case, item: dict, output: Path) -> None:
    width, height = display_size(output)
    case.check((width, height) == (3840, 2160), f"a 4K template came out {width}x{height}")


def _symlink_loops(videos: Path) -> None:
    (videos / "loop.mp4").symlink_to("loop.mp4")      # a link to itself
    (videos / "nested").mkdir()
    (videos / "nested" / "up").symlink_to("..")       # a folder link back to its parent
    (videos / "nested" / "self").symlink_to(".")


def _symlink_to_template(target_folder: Path):
    def make(path: Path) -> None:
        real = media.video(target_folder / "linked-target.mp4", hue=250)
        path.symlink_to(real)
    return make


def kinds(work: Path) -> list[Kind]:
    """The template kinds of the test-engine batch, with what each must do."""
    video = media.video
    out = [
        Kind("good template (first)", "aa good first.mp4", lambda p: video(p, hue=0), "success"),
        Kind("zero bytes", "zero-bytes.mp4", media.zero_bytes, "fail", ("empty", "0 bytes")),
        Kind("truncated MP4 (index lost)", "truncated-no-index.mp4",
             lambda p: media.truncated(p, 0.5, faststart=False, hue=10), "fail", UNREADABLE),
        Kind("truncated MP4 (index kept)", "truncated-with-index.mp4",
             lambda p: media.truncated(p, 0.6, faststart=True, hue=15), "either", UNREADABLE),
        Kind("a PNG named .mp4", "png-named.mp4", media.png_named_mp4, "fail", ("still image",)),
        Kind("a text file named .mp4", "text-named.mp4", media.text_named_mp4, "fail", UNREADABLE),
        Kind("audio-only MP4", "audio-only.mp4", media.audio_only_mp4, "fail", ("no video",)),
        Kind("video without audio", "video-without-audio.mp4", lambda p: video(p, hue=30), "success"),
        Kind("video with its own audio", "video-with-audio.mp4", lambda p: video(p, hue=35, audio=True), "success"),
        Kind("variable frame rate", "variable-frame-rate.mp4", media.variable_frame_rate, "success"),
        Kind("rotated phone video", "rotated-phone.mp4", media.rotated, "success", check=_portrait),
        Kind("4K", "uhd-4k.mp4", lambda p: media.uhd(p, seconds=0.5), "success", check=_uhd),
        Kind("8x8 pixels", "tiny-8x8.mp4", media.tiny, "fail", ("frame size", "too small")),
        Kind("one frame", "single-frame.mp4", media.single_frame, "fail", ("still image", "too short", "one frame")),
        Kind("VP9 in WebM", "vp9.webm", media.vp9_webm, "success"),
        Kind("unicode name", "模板 ünïcödé 🎬.mp4", lambda p: video(p, hue=40), "success",
             check=_name_kept("模板 ünïcödé 🎬")),
        Kind("spaces and quotes in the name", "it's a \"quoted\" name.mp4", lambda p: video(p, hue=45), "success",
             check=_name_kept("it's a \"quoted\" name")),
        Kind("name starting with a dash", "-rf --help.mp4", lambda p: video(p, hue=50), "success", check=_dash_safe),
        Kind("symlink to a template", "linked.mp4", _symlink_to_template(work), "success"),
        Kind("good template (last)", "zz good last.mp4", lambda p: video(p, hue=55), "success"),
        # full: more truncation points and more names
        Kind("truncated MP4 at 1%", "truncated-1pct.mp4", lambda p: media.truncated(p, 0.01, faststart=True, hue=60),
             "fail", UNREADABLE, full_only=True),
        Kind("truncated MP4 at 20% (index kept)", "truncated-20pct.mp4",
             lambda p: media.truncated(p, 0.2, faststart=True, hue=65), "either", UNREADABLE, full_only=True),
        Kind("truncated MP4 at 95% (index lost)", "truncated-95pct.mp4",
             lambda p: media.truncated(p, 0.95, faststart=False, hue=70), "fail", UNREADABLE, full_only=True),
        Kind("shell syntax in the name", "$(touch pwned); `id` | x.mp4", lambda p: video(p, hue=75), "success",
             full_only=True, check=_name_kept("$(touch pwned); `id` | x")),
        Kind("backslash and tab in the name", "back\\slash\tand tab.mp4", lambda p: video(p, hue=80), "success",
             full_only=True),
        Kind("newline in the name", "new\nline.mp4", lambda p: video(p, hue=85), "success", full_only=True),
        Kind("upper-case extension", "UPPER CASE.MP4", lambda p: video(p, hue=90), "success", full_only=True),
        Kind("printf and protocol syntax in the name", "file:%d%s%n concat:x.mp4", lambda p: video(p, hue=95),
             "success", full_only=True),
        Kind("a 240-byte name", "long-" + "ü" * 115 + ".mp4", lambda p: video(p, hue=100), "success", full_only=True),
        Kind("name starting with dashes and a dot", "--.-.mp4", lambda p: video(p, hue=105), "success", full_only=True,
             check=_dash_safe),
    ]
    return out


@dataclass
class FaceKind:
    label: str
    kind: str                  # bad_media.FACE_KINDS entry
    expect: str
    words: tuple[str, ...] = ()
    pattern: str | None = None  # a failure message must match this regex too
    full_only: bool = False


FACE_KINDS = [
    FaceKind("a face", "face", "success"),
    FaceKind("no face", "noface", "fail", ("no face",)),
    FaceKind("two faces", "two-faces", "success"),
    # the face pans out after 0.4 s and is gone from 0.8 s: the message must say when
    FaceKind("a face leaving the frame", "face-leaves", "fail", ("no face",), r"00:00:00\.[4-9]|00:00:01\.[0-2]"),
    FaceKind("a face leaving the frame briefly", "face-leaves-briefly", "success", full_only=True),
    FaceKind("odd frame size (255x257)", "odd-size-face", "success"),
]


# ---------------------------------------------------------------------------------------
# Helpers


def display_size(path: Path) -> tuple[int, int]:
    """Width and height as a player shows them (rotation applied)."""
    info = harness.probe(path)
    stream = next(s for s in info["streams"] if s.get("codec_type") == "video")
    width, height = int(stream.get("width", 0)), int(stream.get("height", 0))
    rotation = int(float((stream.get("tags") or {}).get("rotate", 0) or 0))
    for side in stream.get("side_data_list") or []:
        if "rotation" in side:
            rotation = int(float(side["rotation"]))
    return (height, width) if abs(rotation) % 180 == 90 else (width, height)


def dump_in(text: str) -> list[str]:
    """A Swift or Python dump in what a user is shown (a message, or a run's whole output)."""
    for marker in DUMP_MARKERS:
        if marker in text:
            at = text.index(marker)
            return [f"a program dump ({marker!r}) in what the user sees: {text[max(0, at - 150):at + 150]!r}"]
    return []


def message_problems(message: str) -> list[str]:
    """Why one message shown to a user is not one they can act on."""
    problems = dump_in(message)
    if not message.strip():
        problems.append("the message is empty")
    if len(message) > 700:
        problems.append(f"the message is {len(message)} characters long: {message[:200]!r}...")
    return problems


def items_by_file(state: dict) -> dict[str, dict]:
    """Template file name -> item (an item with several names appears under each)."""
    found = {}
    for item in state.get("items", []):
        for name in item.get("names", []):
            found[os.path.basename(name)] = item
    return found


def check_outcome(case: harness.Case, item: dict | None, expect: str, words: tuple[str, ...], out: Path,
                  pattern: str | None = None) -> dict | None:
    """Checks one item against what it must do; returns it when it succeeded."""
    case.require(item is not None, "the template is not in the batch at all")
    state = item.get("state", {})
    status = state.get("status")
    error = state.get("lastError") or {}
    message = error.get("message", "")
    if status == "success" and expect in ("success", "either"):
        problems = harness.output_problems(out, {"items": [item]})
        for problem in problems:
            case.fail(problem)
        return item if not problems else None
    if status == "failed" and expect in ("fail", "either"):
        case.check(error.get("kind") == "input",
                   f"failed with kind {error.get('kind')!r}, expected 'input' (it is the file's fault; retrying cannot help): {message[:200]!r}")
        case.check(state.get("attempts") == 1, f"tried {state.get('attempts')} times; a bad file needs no retries")
        case.check(any(word in message.lower() for word in words),
                   f"the message does not say what is wrong (expected one of {list(words)}): {message[:300]!r}")
        if pattern:
            case.check(re.search(pattern, message) is not None,
                       f"the message does not say when (expected /{pattern}/): {message[:300]!r}")
        for problem in message_problems(message):
            case.fail(problem)
        return None
    wanted = {"success": "success", "fail": "a failure", "either": "success or a clear failure"}[expect]
    case.fail(f"ended {status!r}, expected {wanted}" + (f": {message[:300]!r}" if message else ""))
    return None


def run_batch(ctx: harness.Context, audio: Path, videos: Path, out: Path, engine: str,
              timeout: float) -> subprocess.CompletedProcess:
    """`talkie run` to its end; the test engine logs its renders beside `out` (engine.log)."""
    engine_log = out.parent / "engine.log"
    args = ["run", "--audio", str(audio), "--videos", str(videos), "--out", str(out), "--engine", engine,
            "--retry-delay", "0.1"]
    return harness.run_talkie(args, env=ctx.env(TALKIE_TEST_ENGINE_LOG=str(engine_log)), timeout=timeout)


def start_talkie(args: list[str], env: dict[str, str], stdout: Path) -> subprocess.Popen:
    with open(stdout, "w") as sink:
        return subprocess.Popen([harness.talkie_bin(), *args], stdin=subprocess.DEVNULL, stdout=sink,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop(process: subprocess.Popen, seconds: float = 30) -> int | None:
    """SIGTERM, then SIGKILL after `seconds`; returns the exit code of the SIGTERM'ed run
    (None when it had to be killed)."""
    if process.poll() is not None:
        return process.returncode
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return None


class Writer:
    """Appends to a file without pause (a copy or download still in progress)."""

    def __init__(self, path: Path):
        self.path = path
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._write, daemon=True)

    def _write(self) -> None:
        with open(self.path, "ab") as file:
            while not self.stopped.is_set():
                file.write(b"\0" * 4096)
                file.flush()
                time.sleep(0.001)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.thread.join(timeout=10)


# ---------------------------------------------------------------------------------------
# The template batch (test engine)


def template_batch(ctx: harness.Context) -> None:
    folder = ctx.scratch("templates")
    videos = folder / "templates"
    videos.mkdir()
    chosen = [kind for kind in kinds(folder) if not (ctx.quick and kind.full_only)]
    not_made: dict[str, str] = {}
    for kind in chosen:
        try:
            kind.make(videos / kind.file)
        except Exception as error:  # reported in the kind's case below
            not_made[kind.file] = str(error)
    _symlink_loops(videos)
    audio = media.tone(folder / "narration.wav", 1.2)  # short: every success renders this long (4K too)
    out = folder / "outputs"

    state, text = None, ""
    with ctx.case("template batch: runs to its end, exit 1 (some failed)") as case:
        started = time.monotonic()
        result = run_batch(ctx, audio, videos, out, "test", timeout=300)
        text = result.stdout + result.stderr
        case.check(result.returncode == 1, f"exit {result.returncode}, expected 1 (some items failed): {result.stderr[-400:]}")
        for problem in dump_in(text):
            case.fail(problem)
        state = harness.status(out, env=ctx.env())
        ctx.note(f"template batch: {len(state.get('items', []))} items in {time.monotonic() - started:.0f} s")

    by_file = items_by_file(state or {})
    for kind in chosen:
        with ctx.case(f"template: {kind.label}") as case:
            case.require(kind.file not in not_made, f"could not make the input: {not_made.get(kind.file)}")
            case.require(state is not None, "the batch did not finish")
            item = check_outcome(case, by_file.get(kind.file), kind.expect, kind.words, out)
            if item is not None and kind.check:
                kind.check(case, item, out / item["state"]["output"])

    with ctx.case("template: symlink loops") as case:
        case.require(state is not None, "the batch did not finish")
        case.check("loop.mp4" in text, f"no note names the self-linked loop.mp4: {text[-600:]!r}")
        case.check("loop.mp4" not in by_file, "loop.mp4 (a link to itself) became an item")
        looped = [name for item in state.get("items", []) for name in item.get("names", []) if "/nested/" in name]
        case.check(not looped, f"the batch followed a folder link back into itself: {looped[:3]}")

    if not ctx.quick:
        with ctx.case("template: shell syntax in names runs nothing") as case:
            strays = [str(path) for path in [folder, videos, out, harness.ROOT, Path.cwd()] if (path / "pwned").exists()]
            case.check(not strays, f"a file name was run as a command: {strays}")


# ---------------------------------------------------------------------------------------
# The face batch (classic engine)


def face_batch(ctx: harness.Context) -> None:
    if not VENV_PYTHON.exists():
        ctx.note(f"face kinds not tried: no {VENV_PYTHON} (the classic engine's environment; scripts/setup.sh makes it)")
        return
    folder = ctx.scratch("faces")
    videos = folder / "templates"
    chosen = [kind for kind in FACE_KINDS if not (ctx.quick and kind.full_only)]
    made = subprocess.run([str(VENV_PYTHON), str(Path(media.__file__)), "faces", str(videos), *[k.kind for k in chosen]],
                          capture_output=True, text=True, timeout=120)
    if made.returncode != 0:
        with ctx.case("faces: make the templates") as case:
            case.fail(f"could not make the face templates: {made.stderr[-500:]}")
        return
    # 3.6 s: long enough that a face gone from about 0.7 s is missing for over 2 s of output
    # (a 2 s template plays forward, then backward)
    audio = harness.narration(folder, "Talkie never loses finished work, even when the power goes out.")
    out = folder / "outputs"
    state = None
    with ctx.case("face batch (classic engine): runs to its end, exit 1") as case:
        started = time.monotonic()
        result = run_batch(ctx, audio, videos, out, "classic", timeout=400)
        case.check(result.returncode == 1, f"exit {result.returncode}, expected 1 (two items fail): {result.stderr[-400:]}")
        state = harness.status(out, env=ctx.env())
        ctx.note(f"face batch (classic): {len(state.get('items', []))} items in {time.monotonic() - started:.0f} s")
    by_file = items_by_file(state or {})
    for kind in chosen:
        with ctx.case(f"face: {kind.label}") as case:
            case.require(state is not None, "the batch did not finish")
            check_outcome(case, by_file.get(f"{kind.kind}.mp4"), kind.expect, kind.words, out, kind.pattern)


# ---------------------------------------------------------------------------------------
# Narrations: one batch each


@dataclass
class Narration:
    label: str
    file: str
    make: Callable[[Path], object]
    expect: str                   # "refuse" (exit 2, nothing rendered) or "success"
    words: tuple[str, ...] = ()
    full_only: bool = False
    no_disk_advice: bool = False  # the refusal must not blame the output disk


def narrations() -> list[Narration]:
    return [
        Narration("zero bytes", "zero.wav", media.zero_bytes, "refuse", ("empty", "0 bytes")),
        Narration("0.1 s", "short.wav", lambda p: media.tone(p, 0.1), "refuse", ("too short", "at least", "0.10 s")),
        Narration("a video without audio as narration", "video-only.mp4", lambda p: media.video(p, hue=5),
                  "refuse", ("no audio",)),
        Narration("truncated WAV (header longer than the data)", "truncated.wav", media.truncated_wav, "success"),
        Narration("unicode, quotes and a leading dash in the name", "-narración 'x' \"y\".wav",
                  lambda p: media.tone(p, 1.5), "success"),
        Narration("a still image as narration", "picture.wav", media.png_named_mp4, "refuse", ("no audio",), True),
        Narration("a text file as narration", "notes.mp3", media.text_named_mp4, "refuse", UNREADABLE, True),
        Narration("silence", "silence.wav", lambda p: media.silence(p, 2.0), "success", full_only=True),
        Narration("a video with audio as narration", "talk.mp4", lambda p: media.video(p, seconds=2, hue=7, audio=True),
                  "success", full_only=True),
        Narration("a folder as narration", "folder.wav", lambda p: p.mkdir(), "refuse", ("directory", "folder"), True,
                  no_disk_advice=True),
        Narration("a missing file", "missing.wav", lambda p: None, "refuse", ("does not exist", "not found", "missing"), True),
    ]


def narration_cases(ctx: harness.Context) -> None:
    for narration in narrations():
        if narration.full_only and ctx.quick:
            continue
        if ctx.out_of_time():
            ctx.note("narration cases cut short: out of time")
            return
        with ctx.case(f"narration: {narration.label}") as case:
            folder = ctx.scratch("narration")
            audio = folder / narration.file
            narration.make(audio)
            videos = folder / "templates"
            media.video(videos / "template.mp4", hue=150)
            out = folder / "outputs"
            started = time.monotonic()
            result = run_batch(ctx, audio, videos, out, "test", timeout=120)
            seconds = time.monotonic() - started
            rendered = sum(harness.render_counts(folder / "engine.log").values())
            if narration.expect == "refuse":
                case.check(result.returncode == 2, f"exit {result.returncode}, expected 2 (refused at start): "
                                                   f"{(result.stderr or result.stdout)[-300:]!r}")
                case.check(rendered == 0, f"the engine rendered {rendered} items with an unusable narration")
                case.check(seconds < 30, f"the refusal took {seconds:.0f} s")
                message = result.stderr.strip()
                case.check(any(word in message.lower() for word in narration.words),
                           f"the refusal does not say what is wrong (expected one of {list(narration.words)}): {message[:300]!r}")
                if narration.no_disk_advice:
                    case.check(DISK_ADVICE not in message,
                               f"the refusal blames the output disk for a bad --audio: {message[:300]!r}")
                for problem in message_problems(message):
                    case.fail(problem)
            else:
                case.check(result.returncode == 0, f"exit {result.returncode}, expected 0: {result.stderr[-300:]!r}")
                state = harness.status(out, env=ctx.env())
                case.check(list(harness.statuses(state).values()) == ["success"],
                           f"items ended {list(harness.statuses(state).values())}, expected one success")
                for problem in harness.output_problems(out, state):
                    case.fail(problem)


# ---------------------------------------------------------------------------------------
# A path that disappears mid-batch


def disappearing_template(ctx: harness.Context) -> None:
    with ctx.case("a template deleted while the batch runs") as case:
        folder = ctx.scratch("vanishing")
        videos = folder / "templates"
        for index, name in enumerate(["a-first.mp4", "b-second.mp4", "c-vanishes.mp4"]):
            media.video(videos / name, hue=200 + 10 * index)
        audio = harness.narration(folder)
        out = folder / "outputs"
        engine_log = folder / "engine.log"
        env = ctx.env(TALKIE_TEST_ENGINE_LOG=str(engine_log), TALKIE_TEST_ENGINE_DELAY="0.15")
        process = start_talkie(["run", "--audio", str(audio), "--videos", str(videos), "--out", str(out),
                                "--engine", "test", "--retry-delay", "0.1"], env, folder / "run.out")
        try:
            case.require(harness.wait_for(lambda: harness.render_counts(engine_log), 60), "the batch never started rendering")
            (videos / "c-vanishes.mp4").unlink()
            process.wait(timeout=120)
        finally:
            code = stop(process)
        text = (folder / "run.out").read_text(errors="replace")
        case.check(code == 1, f"exit {code}, expected 1 (one item failed): {text[-400:]!r}")
        state = harness.status(out, env=ctx.env())
        by_file = items_by_file(state)
        check_outcome(case, by_file.get("a-first.mp4"), "success", (), out)
        check_outcome(case, by_file.get("b-second.mp4"), "success", (), out)
        check_outcome(case, by_file.get("c-vanishes.mp4"), "fail", ("no longer there", "disappeared", "missing",
                                                                     "does not exist", "not found"), out)
        rendered = {line.split(" ", 2)[2] for line in engine_log.read_text().splitlines() if line.startswith("render ")}
        case.check("c-vanishes.mp4" not in rendered, "the engine was started on a template that was gone")

    if ctx.quick or ctx.out_of_time():
        return
    with ctx.case("the templates folder moved away mid-batch, then back: retry renders the rest") as case:
        folder = ctx.scratch("folder-vanishes")
        videos = folder / "templates"
        names = ["a.mp4", "b.mp4", "c.mp4"]
        for index, name in enumerate(names):
            media.video(videos / name, hue=230 + 10 * index)
        audio = harness.narration(folder)
        out = folder / "outputs"
        engine_log = folder / "engine.log"
        env = ctx.env(TALKIE_TEST_ENGINE_LOG=str(engine_log), TALKIE_TEST_ENGINE_DELAY="0.15")
        process = start_talkie(["run", "--audio", str(audio), "--videos", str(videos), "--out", str(out),
                                "--engine", "test", "--retry-delay", "0.1"], env, folder / "run.out")
        try:
            # a is done once b starts; b is being rendered when its folder goes
            case.require(harness.wait_for(lambda: len(harness.render_counts(engine_log)) >= 2, 60), "the batch never reached b.mp4")
            videos.rename(folder / "moved-away")
            process.wait(timeout=120)
        finally:
            code = stop(process)
        case.check(code == 1, f"exit {code}, expected 1")
        state = harness.status(out, env=ctx.env())
        by_file = items_by_file(state)
        gone_words = ("no longer there", "missing", "does not exist")
        check_outcome(case, by_file.get("a.mp4"), "success", (), out)
        in_flight = by_file.get("b.mp4", {}).get("state", {})
        if in_flight.get("status") != "success":  # its engine lost the file mid-render: it may fail, saying why
            message = (in_flight.get("lastError") or {}).get("message", "")
            case.check(in_flight.get("status") == "failed" and any(word in message for word in gone_words),
                       f"b.mp4 (rendering when its folder went) ended {in_flight.get('status')!r}: {message[:300]!r}")
        check_outcome(case, by_file.get("c.mp4"), "fail", gone_words, out)
        (folder / "moved-away").rename(videos)
        again = harness.run_talkie(["retry", "--out", str(out), "--failed", "--retry-delay", "0.1"],
                                   env=ctx.env(TALKIE_TEST_ENGINE_LOG=str(engine_log)), timeout=120)
        case.check(again.returncode == 0, f"retry --failed exited {again.returncode}: {again.stderr[-300:]}")
        state = harness.status(out, env=ctx.env())
        case.check(sorted(harness.statuses(state).values()) == ["success"] * 3,
                   f"after the folder came back: {sorted(harness.statuses(state).values())}")
        for problem in harness.output_problems(out, state):
            case.fail(problem)

    if ctx.out_of_time():
        return
    with ctx.case("the narration deleted mid-batch: the batch still completes") as case:
        folder = ctx.scratch("narration-vanishes")
        videos = folder / "templates"
        for index in range(3):
            media.video(videos / f"t{index}.mp4", hue=270 + 10 * index)
        audio = harness.narration(folder)
        out = folder / "outputs"
        engine_log = folder / "engine.log"
        env = ctx.env(TALKIE_TEST_ENGINE_LOG=str(engine_log), TALKIE_TEST_ENGINE_DELAY="0.1")
        process = start_talkie(["run", "--audio", str(audio), "--videos", str(videos), "--out", str(out),
                                "--engine", "test", "--retry-delay", "0.1"], env, folder / "run.out")
        try:
            case.require(harness.wait_for(lambda: harness.render_counts(engine_log), 60), "the batch never started rendering")
            audio.unlink()
            process.wait(timeout=120)
        finally:
            code = stop(process)
        text = (folder / "run.out").read_text(errors="replace")
        case.check(code == 0, f"exit {code}, expected 0 (the narration was already prepared): {text[-300:]!r}")
        state = harness.status(out, env=ctx.env())
        case.check(sorted(harness.statuses(state).values()) == ["success"] * 3,
                   f"items ended {sorted(harness.statuses(state).values())}")
        for problem in harness.output_problems(out, state):
            case.fail(problem)


# ---------------------------------------------------------------------------------------
# A file that changes while it is being hashed


def changing_while_hashed(ctx: harness.Context) -> None:
    with ctx.case("a template that changes while it is hashed") as case:
        folder = ctx.scratch("changing")
        videos = folder / "templates"
        media.video(videos / "good.mp4", hue=300)
        growing = media.video(videos / "growing.mp4", hue=310, faststart=True)
        # a sparse tail makes the hash take a while (nothing is written to disk for it);
        # the MP4 index is at the front, so the file stays a valid template
        with open(growing, "r+b") as file:
            file.truncate(768 << 20)
        audio = harness.narration(folder)
        out = folder / "outputs"
        with Writer(growing):
            result = run_batch(ctx, audio, videos, out, "test", timeout=120)
        text = result.stdout + result.stderr
        case.check(result.returncode in (0, 1), f"exit {result.returncode}: a changing template must not stop the batch: {text[-400:]!r}")
        state = harness.status(out, env=ctx.env())
        by_file = items_by_file(state)
        check_outcome(case, by_file.get("good.mp4"), "success", (), out)
        growing_item = by_file.get("growing.mp4")
        if growing_item is None:  # skipped: a note must say why
            lines = [line for line in text.splitlines() if "growing.mp4" in line]
            case.check(any("chang" in line for line in lines),
                       f"growing.mp4 was left out without a note saying it was changing: {lines[:3]!r}")
            for line in lines:
                case.check(DISK_ADVICE not in line, f"the note about a file still being written blames the disk: {line[:300]!r}")
                for problem in message_problems(line):
                    case.fail(problem)
        else:  # taken: then as a failure saying it is changing (a success would mean half-old, half-new content)
            check_outcome(case, growing_item, "fail", ("chang", "being written", "incomplete"), out)
        # once the writer stopped, the same command takes it
        again = run_batch(ctx, audio, videos, out, "test", timeout=120)
        case.check(again.returncode == 0, f"the run after the writer stopped exited {again.returncode}: {again.stderr[-300:]}")
        state = harness.status(out, env=ctx.env())
        check_outcome(case, items_by_file(state).get("growing.mp4"), "success", (), out)

    if ctx.quick or ctx.out_of_time():
        return
    with ctx.case("a narration that changes while it is hashed") as case:
        folder = ctx.scratch("changing-narration")
        media.video(folder / "templates" / "t.mp4", hue=320)
        audio = media.tone(folder / "narration.wav", 2.0)
        with open(audio, "r+b") as file:
            file.truncate(768 << 20)
        out = folder / "outputs"
        with Writer(audio):
            result = run_batch(ctx, audio, folder / "templates", out, "test", timeout=120)
        message = result.stderr.strip()
        case.check(result.returncode == 2, f"exit {result.returncode}, expected 2 (refused at start): {message[-300:]!r}")
        case.check("chang" in message, f"the refusal does not say the narration is changing: {message[:300]!r}")
        case.check(DISK_ADVICE not in message, f"the refusal blames the disk for a narration still being written: {message[:300]!r}")
        for problem in message_problems(message):
            case.fail(problem)
        case.check(sum(harness.render_counts(folder / "engine.log").values()) == 0, "something was rendered")


# ---------------------------------------------------------------------------------------
# A 3-hour narration


LENGTH_WORDS = re.compile(r"\b3(\.0+)?\s*h\b|\b3:00:0\d|\b10,?80[01]\b|\b180(\.\d+)?\s*min|\bhours?\b", re.IGNORECASE)


def three_hour_narration(ctx: harness.Context) -> None:
    """Three hours of narration means every template becomes a 3-hour video: days of work
    with the CPU engine, under a per-item timeout of 2 min + 1 min per second (7.5 days).
    Expected: refused at start, or a warning up front that says how long it is. The run is
    stopped after a short wait either way, and must stop cleanly."""
    with ctx.case("narration: 3 hours") as case:
        folder = ctx.scratch("three-hours")
        audio = media.long_narration(folder / "lecture.m4a", 3.0, harness._CACHE)
        media.video(folder / "templates" / "t.mp4", hue=330)
        out = folder / "outputs"
        engine_log = folder / "engine.log"
        env = ctx.env(TALKIE_TEST_ENGINE_LOG=str(engine_log))
        process = start_talkie(["run", "--audio", str(audio), "--videos", str(folder / "templates"), "--out", str(out),
                                "--engine", "test"], env, folder / "run.out")
        wait = 8 if ctx.quick else 20
        said = lambda: LENGTH_WORDS.search((folder / "run.out").read_text(errors="replace")) is not None
        try:
            harness.wait_for(lambda: process.poll() is not None or said(), wait)
            early_exit = process.poll()
            text = (folder / "run.out").read_text(errors="replace")
            if early_exit is not None:
                case.check(early_exit == 2, f"exit {early_exit}; a refusal is exit 2: {text[-300:]!r}")
                case.check(said(), f"the refusal does not say how long the narration is: {text[-300:]!r}")
            else:
                case.check(said(), f"{wait} s into a 3-hour narration, no refusal and no warning about its length: "
                                   f"{text.strip()[-300:]!r}")
            for problem in dump_in(text):
                case.fail(problem)
        finally:
            code = stop(process)
        if early_exit is None:
            case.check(code == 3, f"stopped with SIGTERM, it exited {code}, expected 3 (interrupted)")
            leftovers = harness.wait_for_no_leftovers(ctx.tag)
            case.check(not leftovers, f"processes left behind after the stop: {leftovers}")
            audio_dir = out / ".talkie" / "audio"
            partial = [path.name for path in audio_dir.iterdir() if ".tmp-" in path.name] if audio_dir.exists() else []
            sizes = sum((audio_dir / name).stat().st_size for name in partial)
            case.check(not partial, f"the stopped run left {len(partial)} half-prepared narrations ({sizes >> 20} MB) "
                                    f"in {audio_dir}: {partial[:2]}")
        try:
            harness.status(out, env=ctx.env())
        except harness.StatusError as error:
            case.fail(str(error))


# ---------------------------------------------------------------------------------------


def run(ctx: harness.Context) -> None:
    steps = [template_batch, narration_cases, disappearing_template, changing_while_hashed, three_hour_narration,
             face_batch]
    for step in steps:
        if ctx.out_of_time():
            ctx.note(f"not tried (out of time): {', '.join(s.__name__ for s in steps[steps.index(step):])}")
            break
        step(ctx)
    leftovers = harness.wait_for_no_leftovers(ctx.tag)
    if leftovers:
        ctx.failures.append(("leftovers", f"processes left behind: {leftovers}"))
