#!/usr/bin/env python3
"""Talkie's command engine ("command"): renders each item by running a command line.

    TALKIE_ENGINE_PARAMS='{"command":"python3 inference.py --face {video} --audio {audio} --outfile {output}"}' \\
        .venv/bin/python -u engines/command/worker.py

Plugs an existing lip-sync program (Wav2Lip's inference.py, MuseTalk, an in-house
script) into Talkie without writing a protocol worker.  docs/engine-command.md is
the user's guide; in short:

Parameters come from the JSON object in the environment variable
TALKIE_ENGINE_PARAMS at start (checked there: a bad one is a ``fatal`` at the
handshake) and from every render request's ``params``, which win.

  command           the command template (required); split with shlex and run
                    WITHOUT a shell; placeholders ({video} {audio} {output}
                    {duration} {fps} {frames} {item_key} {video_key} {audio_key}
                    {workdir} {cache_dir}; {{ and }} are literal braces; ${...} is
                    left alone for sh -c scripts) are substituted inside each
                    argument.  A JSON array of strings is taken as the argv as is
                    (placeholders still substituted).  The same values are in the
                    command's environment as TALKIE_VIDEO, TALKIE_AUDIO, ...
  progress          regex over each output line (stdout and stderr, lines split
                    on \\n and \\r): named groups frame [+ frames], or percent, or
                    exactly one unnamed group (a percentage)
  input_error       regex: a failed command whose output has a matching line
                    fails the item with kind "input" (the line is the message)
  input_exit_codes  exit statuses that mean "the input is at fault" (default none)
  timeout           seconds before the command is killed (default: none)
  cwd               the command's working folder
  output_ext        extension of the file the command writes at {output} (mp4)
  audio_sample_rate, audio_channels   what the command wants the narration
                    resampled to (passed into the handshake's capabilities)
  x264_preset, crf  encoder settings of the final re-encode (veryfast, 18)
  keep_workdir      keep the per-attempt scratch folder of a failed attempt

The command's output (any container ffmpeg reads) is re-encoded into the
protocol's output: one H.264 yuv420p video stream (cut, or padded by repeating
its last frame, to the request's duration) and the narration as the only (AAC)
audio stream.  Standard library only, plus the ffmpeg/ffprobe executables.
"""
from __future__ import annotations

import collections
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
_CLASSIC = os.path.join(os.path.dirname(_HERE), "classic")
for _p in (_CLASSIC, _HERE):  # _HERE first on the path
    if _p in sys.path:
        sys.path.remove(_p)
    sys.path.insert(0, _p)

from params import env_params, flag, number  # noqa: E402  (engines/classic/params.py)
from protocol import claim_stdout, serve  # noqa: E402  (engines/classic/protocol.py)

NAME = "command"
VERSION = "1.0.0"
PARAMS = ["command", "progress", "input_error", "input_exit_codes", "timeout", "cwd", "output_ext",
          "audio_sample_rate", "audio_channels", "x264_preset", "crf", "keep_workdir"]
PLACEHOLDERS = ("video", "audio", "output", "duration", "fps", "frames", "item_key", "video_key", "audio_key",
                "workdir", "cache_dir")
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower")

TAIL_LINES = 20            # output lines kept for an error message
TAIL_LINE_CHARS = 500      # each cut to this length
MAX_LINE = 64 * 1024       # a "line" longer than this (no newline) is split
MATCH_CHARS = 4096         # the progress / input_error regexes see a line's first characters only
LOG_LIMIT = 8 * 1024 * 1024  # bytes of the command's output copied to the worker's stderr per item
CR_FORWARD_SECONDS = 1.0   # \r-terminated lines (progress bars) copied to stderr at most this often
PROGRESS_SECONDS = 0.1     # progress messages at most 10 per second
KILL_GRACE = 5.0           # SIGTERM -> SIGKILL

_TOKEN = re.compile(r"\{\{|\}\}|\$\{[^}]*\}|\{([^{}]*)\}")
_LINE_END = re.compile(rb"(\r\n|\n|\r)")


class InputError(Exception):
    """The item's fault (or its parameters'): the runner does not retry it."""


class TransientError(Exception):
    """Anything else: retried by the runner."""


class ConfigError(Exception):
    """Bad engine parameters: fatal at start, an input error in a request."""


# parameters ----------------------------------------------------------------------------

def _text(value) -> str | None:
    """A string parameter (numbers as the user typed them: 3.0 -> "3"); None when absent."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    s = str(value)
    return s if s.strip() != "" else None


def _regex(params: dict, key: str):
    src = _text(params.get(key))
    if src is None:
        return None
    try:
        return re.compile(src)
    except re.error as e:
        raise ConfigError(f"the {key} regex {src!r} is not valid: {e}")


def _exit_codes(value) -> frozenset:
    if value is None or value == "":
        return frozenset()
    items = value if isinstance(value, (list, tuple)) else re.split(r"[\s,]+", _text(value) or "")
    codes = set()
    for item in items:
        if str(item).strip() == "":
            continue
        try:
            f = float(item)
            if not f.is_integer():
                raise ValueError
            codes.add(int(f))
        except (TypeError, ValueError):
            raise ConfigError(f"input_exit_codes must be exit statuses separated by commas, got {value!r}")
    return frozenset(codes)


def substitute(arg: str, values: dict) -> str:
    """Replaces {name} in one argument; {{ and }} are braces, ${...} is left for a shell."""
    def repl(m):
        tok = m.group(0)
        if tok == "{{":
            return "{"
        if tok == "}}":
            return "}"
        if tok.startswith("$"):
            return tok
        return values[m.group(1)]
    return _TOKEN.sub(repl, arg)


def placeholders_in(arg: str) -> list:
    return [m.group(1) for m in _TOKEN.finditer(arg) if m.group(1) is not None]


def _executable(exe: str, cwd: str | None) -> str | None:
    """The resolved executable, or None when it cannot be run."""
    if os.sep in exe:
        path = exe if os.path.isabs(exe) else os.path.join(cwd or os.getcwd(), exe)
        return path if os.path.isfile(path) and os.access(path, os.X_OK) else None
    return shutil.which(exe)


class Settings:
    """The checked parameters of one render (or of the start)."""

    def __init__(self, params: dict):
        cmd = params.get("command")
        if isinstance(cmd, (list, tuple)):
            argv = [str(int(a)) if isinstance(a, float) and a.is_integer() else str(a) for a in cmd]
        else:
            src = _text(cmd)
            if src is None:
                raise ConfigError("the command engine needs the parameter command (the command line to run, "
                                  "e.g. --param command='python3 inference.py --face {video} --audio {audio} "
                                  "--outfile {output}')")
            try:
                argv = shlex.split(src)
            except ValueError as e:
                raise ConfigError(f"cannot split the command {src!r}: {e}")
        if not argv:
            raise ConfigError("the command is empty")
        for arg in argv:
            for name in placeholders_in(arg):
                if name not in PLACEHOLDERS:
                    raise ConfigError(
                        f"unknown placeholder {{{name}}} in the command; known: "
                        + " ".join("{" + p + "}" for p in PLACEHOLDERS) + " (write {{ and }} for literal braces)")
        self.argv = argv

        cwd = _text(params.get("cwd"))
        if cwd is not None:
            cwd = os.path.abspath(os.path.expanduser(cwd))
            if not os.path.isdir(cwd):
                raise ConfigError(f"the cwd folder {cwd} does not exist")
        self.cwd = cwd
        if not placeholders_in(argv[0]) and "${" not in argv[0]:
            if _executable(argv[0], cwd) is None:
                where = "is not an executable file" if os.sep in argv[0] else "is not on the PATH"
                raise ConfigError(f"the command's executable {argv[0]!r} {where}")

        self.progress = _regex(params, "progress")
        self.progress_key = None
        if self.progress is not None:
            names = self.progress.groupindex
            if "percent" in names:
                self.progress_key = "percent"
            elif "frame" in names:
                self.progress_key = "frame"
            elif self.progress.groups == 1 and not names:
                self.progress_key = "percent1"
            else:
                raise ConfigError(f"the progress regex {self.progress.pattern!r} needs the named groups "
                                  "(?P<frame>...) and (?P<frames>...), or (?P<percent>...), or exactly one group "
                                  "(a percentage)")
        self.input_error = _regex(params, "input_error")
        self.input_exit_codes = _exit_codes(params.get("input_exit_codes"))
        t = number(params.get("timeout"), 0.0, 0.0, 1e9)
        self.timeout = t if t > 0 else None
        ext = (_text(params.get("output_ext")) or "mp4").strip().lstrip(".")
        if not re.fullmatch(r"[A-Za-z0-9]{1,10}", ext):
            raise ConfigError(f"output_ext must be a file extension such as mp4 or avi, got {ext!r}")
        self.output_ext = ext
        preset = _text(params.get("x264_preset")) or "veryfast"
        self.preset = preset if preset in PRESETS else "veryfast"
        self.crf = int(number(params.get("crf"), 18, 0, 51))
        self.keep_workdir = flag(params.get("keep_workdir"), False)


def start_params() -> dict:
    try:
        return env_params()
    except ValueError as e:
        raise ConfigError(str(e))


# processes -------------------------------------------------------------------------------

def _children_map() -> dict:
    """{ppid: [pid, ...]} of every process (from /proc, else ps)."""
    kids = collections.defaultdict(list)
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        entries = None
    if entries is not None:
        for e in entries:
            try:
                with open(f"/proc/{e}/stat", "rb") as f:
                    stat = f.read()
                ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids[ppid].append(int(e))
        return kids
    try:
        out = subprocess.run(["ps", "-A", "-o", "pid=,ppid="], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return kids
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            kids[int(parts[1])].append(int(parts[0]))
    return kids


def _tree(pid: int) -> list:
    kids = _children_map()
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo.extend(kids.get(p, ()))
    return seen


def _signal_all(pids, sig) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _exited(proc: subprocess.Popen) -> bool:
    """Whether the command has ended, without reaping it (safe in a signal handler that interrupted
    proc.wait(), which holds the Popen's wait lock, so proc.poll() would say "running")."""
    if proc.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True
    except (OSError, AttributeError):
        return proc.poll() is not None


def kill_tree(proc: subprocess.Popen, grace: float = KILL_GRACE) -> None:
    """SIGTERM the command and everything it started, SIGKILL what is left after `grace`."""
    if _exited(proc):
        return
    pids = _tree(proc.pid)
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while not _exited(proc) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not _exited(proc):
        pids = list(dict.fromkeys(pids + _tree(proc.pid)))
    alive = []
    for p in pids:
        try:
            os.kill(p, 0)
            alive.append(p)
        except (ProcessLookupError, PermissionError):
            pass
    _signal_all(alive, signal.SIGKILL)


def _signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


# the command's output --------------------------------------------------------------------

class OutputReader:
    """Streams the command's output: progress, the input-error line, a bounded tail, the log copy."""

    def __init__(self, fd: int, settings: Settings, chan, rid: str, frames: int):
        self.fd, self.s, self.chan, self.rid, self.frames = fd, settings, chan, rid, frames
        self.tail: collections.deque = collections.deque(maxlen=TAIL_LINES)
        self.tail_cr = False
        self.input_line: str | None = None
        self.forwarded = 0
        self.truncated = False
        self.last_cr_forward = 0.0
        self.sent = None          # (frame, frames) last sent
        self.pending = None       # latest value not yet sent
        self.last_sent_at = 0.0
        self.detached = False
        self.thread = threading.Thread(target=self._run, name="command-output", daemon=True)

    def start(self):
        self.thread.start()

    # reading -----------------------------------------------------------------------------
    def _run(self):
        buf = b""
        try:
            while not self.detached:
                try:
                    data = os.read(self.fd, 65536)
                except InterruptedError:
                    continue
                except OSError:
                    break
                if not data:
                    break
                buf += data
                out = []
                cut = max(buf.rfind(b"\n"), buf.rfind(b"\r"))
                if cut >= 0:  # split only up to the last line end: linear in the output's size
                    parts = _LINE_END.split(buf[:cut + 1])
                    buf = buf[cut + 1:]
                    for i in range(0, len(parts) - 1, 2):
                        self._line(parts[i], parts[i + 1] == b"\r", out)
                while len(buf) > MAX_LINE:
                    self._line(buf[:MAX_LINE], False, out)
                    buf = buf[MAX_LINE:]
                self._forward(out)
            if buf and not self.detached:
                out = []
                self._line(buf, False, out)
                self._forward(out)
        except Exception as e:  # noqa: BLE001 - never let a reader crash silently
            print(f"command: reading the command's output failed: {type(e).__name__}: {e}", file=sys.stderr,
                  flush=True)
            # keep draining so the command never blocks on a full pipe
            try:
                while os.read(self.fd, 65536):
                    pass
            except OSError:
                pass
        finally:
            try:
                os.close(self.fd)
            except OSError:
                pass

    def _line(self, raw: bytes, cr: bool, out: list):
        if not raw.strip():
            return
        text = raw.decode("utf-8", "replace").rstrip()
        probe = text[:MATCH_CHARS]
        if self.s.progress is not None:
            m = self.s.progress.search(probe)
            if m:
                self._progress(m)
        if self.s.input_error is not None and self.input_line is None and self.s.input_error.search(probe):
            self.input_line = text.strip()[:TAIL_LINE_CHARS]
        short = text[:TAIL_LINE_CHARS]
        if cr and self.tail_cr and self.tail:
            self.tail[-1] = short  # a progress bar redrawn with \r: keep its last state only
        else:
            self.tail.append(short)
        self.tail_cr = cr
        # the log copy: bounded, \r redraws at most once a second
        if self.forwarded >= LOG_LIMIT:
            if not self.truncated:
                self.truncated = True
                out.append(f"command: more than {LOG_LIMIT // (1024 * 1024)} MiB of output; the rest is not "
                           f"copied to this log (the last lines are kept for the error message)\n".encode())
            return
        if cr:
            now = time.monotonic()
            if now - self.last_cr_forward < CR_FORWARD_SECONDS:
                return
            self.last_cr_forward = now
        out.append(raw + b"\n")
        self.forwarded += len(raw) + 1

    def _forward(self, out: list):
        if not out or self.detached:
            return
        data = b"".join(out)
        try:
            sys.stderr.flush()
            sys.stderr.buffer.write(data)
            sys.stderr.buffer.flush()
        except (OSError, ValueError):
            pass

    # progress ----------------------------------------------------------------------------
    def _progress(self, m):
        key = self.s.progress_key
        try:
            if key == "frame":
                frame = m.group("frame")
                if frame is None:
                    return
                total = m.groupdict().get("frames")
                value = (int(float(frame)), int(float(total)) if total is not None else self.frames, None)
            else:
                p = m.group("percent") if key == "percent" else m.group(1)
                if p is None:
                    return
                value = (int(float(p)), 100, "percent")
        except (ValueError, OverflowError):
            return
        if value[1] <= 0:
            return
        value = (min(max(value[0], 0), value[1]), value[1], value[2])
        self.pending = value
        now = time.monotonic()
        if now - self.last_sent_at >= PROGRESS_SECONDS:
            self.flush_progress(now)

    def flush_progress(self, now: float | None = None):
        value = self.pending
        if value is None or value == self.sent or self.detached:
            return
        msg = {"type": "progress", "id": self.rid, "frame": value[0], "frames": value[1]}
        if value[2]:
            msg["unit"] = value[2]
        self.chan.send(msg)
        self.sent = value
        self.last_sent_at = time.monotonic() if now is None else now

    def tail_text(self) -> str:
        lines = list(self.tail)
        if not lines:
            return ""
        text = "\n".join(lines)
        if len(text) > 4000:
            text = "…" + text[-4000:]
        return "; last output:\n" + text


# one render ------------------------------------------------------------------------------

class Renderer:
    def __init__(self, chan, base_params: dict, base: Settings):
        self.chan = chan
        self.base_params = base_params
        self.base = base
        self._cache: tuple | None = None
        self.current: subprocess.Popen | None = None
        self.cleanup: list = []

    def settings(self, req: dict) -> Settings:
        params = req.get("params") or {}
        if not isinstance(params, dict):
            params = {}
        merged = dict(self.base_params)
        merged.update({k: v for k, v in params.items() if v is not None})
        if merged == self.base_params:
            return self.base
        key = json.dumps(merged, sort_keys=True, default=str)
        if self._cache and self._cache[0] == key:
            return self._cache[1]
        try:
            s = Settings(merged)
        except ConfigError as e:
            raise InputError(f"engine parameters: {e}")
        self._cache = (key, s)
        return s

    def render(self, req: dict):
        rid = str(req.get("id"))
        s = self.settings(req)
        video, audio, output = req.get("video"), req.get("audio"), req.get("output")
        if not video or not audio or not output:
            raise InputError("render request needs video, audio and output")
        video, audio, output = os.path.abspath(video), os.path.abspath(audio), os.path.abspath(output)
        if not os.path.isfile(video):
            raise InputError(f"template not found: {video}")
        if not os.path.isfile(audio):
            raise InputError(f"audio not found: {audio}")
        fps = probe_fps(video)
        try:
            duration = float(req.get("duration"))
        except (TypeError, ValueError):
            duration = 0.0
        if not (duration > 0 and math.isfinite(duration)):
            duration = probe_duration(audio)
        if not (duration > 0):
            raise InputError("the audio is empty")
        frames = max(1, int(math.ceil(duration * fps - 1e-6)))

        out_dir = os.path.dirname(output)
        os.makedirs(out_dir, exist_ok=True)
        workdir = tempfile.mkdtemp(prefix=os.path.basename(output) + ".work-", dir=out_dir)
        part = output + ".part.mp4"
        self.cleanup = [workdir, part]
        ok = False
        try:
            model_out = os.path.join(workdir, "output." + s.output_ext)
            cache_dir = req.get("cache_dir") or ""
            values = {
                "video": video, "audio": audio, "output": model_out, "duration": _num(duration),
                "fps": _num(fps), "frames": str(frames), "item_key": str(req.get("item_key") or ""),
                "video_key": str(req.get("video_key") or ""), "audio_key": str(req.get("audio_key") or ""),
                "workdir": workdir, "cache_dir": os.path.abspath(cache_dir) if cache_dir else "",
            }
            argv = [substitute(a, values) for a in s.argv]
            env = dict(os.environ)  # CUDA_VISIBLE_DEVICES, PATH, ... as the runner set them
            for k, v in values.items():
                env["TALKIE_" + k.upper()] = v
            env.setdefault("PYTHONUNBUFFERED", "1")  # Python models print progress as it happens
            if _executable(argv[0], s.cwd) is None:
                raise InputError(f"engine parameters: the command's executable {argv[0]!r} cannot be run")
            print(f"command[{rid}]: running {shlex.join(argv)}" + (f" in {s.cwd}" if s.cwd else ""),
                  file=sys.stderr, flush=True)
            t0 = time.monotonic()
            self._run(rid, s, argv, env, frames, model_out)
            el = time.monotonic() - t0
            n = finish(model_out, audio, part, duration, s, self._run_ffmpeg)
            os.replace(part, output)
            ok = True
            print(f"command[{rid}]: the command took {el:.1f}s; output {n} frames, {duration:.2f}s",
                  file=sys.stderr, flush=True)
            return n, None
        finally:
            self.cleanup = []
            if os.path.exists(part):
                _remove(part)
            if ok or not s.keep_workdir:
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                print(f"command[{rid}]: kept the work folder {workdir}", file=sys.stderr, flush=True)

    def _run(self, rid, s: Settings, argv, env, frames, model_out):
        r, w = os.pipe()
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=w, stderr=w, cwd=s.cwd, env=env,
                                    close_fds=True)
        except OSError as e:
            os.close(r)
            os.close(w)
            raise TransientError(f"cannot start the command {argv[0]!r}: {e}")
        os.close(w)
        self.current = proc
        reader = OutputReader(r, s, self.chan, rid, frames)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=s.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            print(f"command[{rid}]: the command ran longer than {s.timeout:g}s; stopping it", file=sys.stderr,
                  flush=True)
            kill_tree(proc)
            proc.wait()
        finally:
            self.current = None
        reader.thread.join(timeout=10.0)
        if reader.thread.is_alive():
            reader.detached = True
            print(f"command[{rid}]: a process started by the command still holds its output open; not waiting "
                  "for it", file=sys.stderr, flush=True)
        else:
            reader.flush_progress()
        rc = proc.returncode
        tail = reader.tail_text()
        if timed_out:
            raise TransientError(f"the command timed out after {s.timeout:g}s{tail}")
        if rc < 0:
            raise TransientError(f"the command was killed by {_signal_name(-rc)}{tail}")
        if rc != 0:
            if reader.input_line is not None:
                raise InputError(reader.input_line)
            if rc in s.input_exit_codes:
                raise InputError(f"the command failed with exit status {rc} (an input error){tail}")
            hint = ""
            if 128 < rc <= 128 + 64:
                hint = f" (128+{rc - 128}: killed by {_signal_name(rc - 128)}?)"
            raise TransientError(f"the command failed with exit status {rc}{hint}{tail}")
        if not os.path.isfile(model_out) or os.path.getsize(model_out) == 0:
            if reader.input_line is not None:
                raise InputError(reader.input_line)
            what = "an empty file" if os.path.isfile(model_out) else "no output"
            raise TransientError(f"the command wrote {what} at {model_out}{tail}")

    def _run_ffmpeg(self, argv) -> tuple:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.current = proc  # a SIGTERM stops it too
        try:
            err = proc.communicate()[1]
        finally:
            self.current = None
        return proc.returncode, err.decode("utf-8", "replace")

    def on_sigterm(self, signum, frame):  # noqa: ARG002
        proc = self.current
        if proc is not None:
            kill_tree(proc, grace=3.0)
        for path in self.cleanup:
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.exists(path):
                _remove(path)
        os._exit(128 + signum)


def _num(x: float) -> str:
    s = f"{x:.6f}".rstrip("0").rstrip(".")
    return s or "0"


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


# ffmpeg ----------------------------------------------------------------------------------

def _ffprobe(args: list) -> subprocess.CompletedProcess:
    return subprocess.run(["ffprobe", "-v", "error"] + args, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, errors="replace", timeout=120)


def _rate(text: str | None) -> float:
    try:
        if text and "/" in text:
            a, b = text.split("/", 1)
            return float(a) / float(b) if float(b) else 0.0
        return float(text or 0)
    except ValueError:
        return 0.0


def probe_fps(video: str) -> float:
    """The template's frame rate; an InputError when ffprobe cannot read it or it has no video."""
    r = _ffprobe(["-select_streams", "v:0", "-show_entries", "stream=r_frame_rate,avg_frame_rate",
                  "-of", "json", video])
    if r.returncode != 0:
        raise InputError(f"cannot read the template {video}: {r.stderr.strip()[-500:]}")
    try:
        streams = json.loads(r.stdout).get("streams") or []
    except ValueError:
        streams = []
    if not streams:
        raise InputError(f"the template {video} has no video stream")
    fps = _rate(streams[0].get("avg_frame_rate")) or _rate(streams[0].get("r_frame_rate"))
    return fps if 0 < fps <= 1000 else 25.0


def probe_duration(audio: str) -> float:
    r = _ffprobe(["-show_entries", "format=duration", "-of", "default=nw=1:nk=1", audio])
    try:
        return float(r.stdout.strip().splitlines()[0])
    except (ValueError, IndexError):
        raise InputError(f"cannot read the audio {audio}: {r.stderr.strip()[-500:]}")


def finish(model_out: str, audio: str, part: str, duration: float, s: Settings, run) -> int:
    """The command's output -> the protocol's output at `part`; returns its number of frames.
    `run(argv)` runs ffmpeg and returns (exit status, stderr)."""
    r = _ffprobe(["-show_entries", "stream=codec_type,avg_frame_rate,r_frame_rate", "-of", "json", model_out])
    if r.returncode != 0:
        raise TransientError(f"the command's output {model_out} is not a video ffmpeg can read: "
                             f"{r.stderr.strip()[-500:]}")
    try:
        videos = [st for st in json.loads(r.stdout).get("streams") or [] if st.get("codec_type") == "video"]
    except ValueError:
        videos = []
    if not videos:
        raise TransientError(f"the command's output {model_out} has no video stream")
    fps = _rate(videos[0].get("avg_frame_rate")) or _rate(videos[0].get("r_frame_rate"))
    if not (0 < fps <= 1000):
        fps = 25.0
    d = _num(duration)
    vf = f"scale=trunc(iw/2)*2:trunc(ih/2)*2,tpad=stop_mode=clone:stop_duration={d},format=yuv420p"
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y", "-i", model_out, "-i", audio,
           "-map", "0:V:0", "-map", "1:a:0", "-vf", vf, "-af", "apad", "-t", d,
           "-c:v", "libx264", "-preset", s.preset, "-crf", str(s.crf), "-pix_fmt", "yuv420p",
           "-c:a", "aac", "-b:a", "160k", "-map_metadata", "-1", "-movflags", "+faststart", "-f", "mp4", part]
    rc, err = run(cmd)
    if rc != 0:
        raise TransientError(f"ffmpeg could not re-encode the command's output (exit status {rc}): "
                             f"{err.strip()[-1500:]}")
    return max(1, int(math.ceil(duration * fps - 1e-6)))


# main ------------------------------------------------------------------------------------

def main(argv=None) -> int:
    chan = claim_stdout()
    try:
        params = start_params()
        base = Settings(params)
        for tool in ("ffmpeg", "ffprobe"):
            if shutil.which(tool) is None:
                raise ConfigError(f"{tool} is not on the PATH (the command engine re-encodes with it)")
    except ConfigError as e:
        print(f"command: cannot start: {e}", file=sys.stderr, flush=True)
        chan.fatal(f"the command engine cannot start: {e}")
        return 1
    caps = {"progress": base.progress is not None, "device": "command", "params": PARAMS}
    for key in ("audio_sample_rate", "audio_channels"):
        v = number(params.get(key), 0, 0, 1e7)
        if v > 0:
            caps[key] = int(v)
    renderer = Renderer(chan, params, base)
    signal.signal(signal.SIGTERM, renderer.on_sigterm)
    print(f"command: {shlex.join(base.argv)}", file=sys.stderr, flush=True)
    chan.hello(NAME, VERSION, caps)
    return serve(chan, NAME, renderer.render, InputError, TransientError)


if __name__ == "__main__":
    sys.exit(main())
