#!/usr/bin/env python3
"""Talkie's face2face engine: a protocol-1 worker that has a running HeyGem face2face
service (the ``guiji2025/heygem.ai`` image, port 8383) render each item.

    TALKIE_ENGINE_PARAMS='{"url":"http://127.0.0.1:8383","share":"/home/me/heygem_data/face2face/talkie",
                           "share_as":"/code/data/talkie","results":"/home/me/heygem_data/face2face/temp"}' \\
        python3 engines/face2face/worker.py

Standard library only (plus ffmpeg/ffprobe on PATH).  Full guide: docs/engine-face2face.md.

Parameters: read at start from TALKIE_ENGINE_PARAMS (a JSON object); a render request's
``params`` override them for that item.

  url           (required) the service, e.g. http://127.0.0.1:8383 (a trailing /easy, as
                in HeyGem's own client settings, is accepted).
  share         (required) a folder on this machine that the service can read: each item's
                template and narration are hard-linked (or copied) there as
                talkie-<item>-<random>.<ext> and removed afterwards.
  share_as      the same folder as the service sees it (its path inside the container, e.g.
                /code/data/talkie when ~/heygem_data/face2face is mounted on /code/data);
                default = share (service on this machine, no container).
  results       the folder on this machine where the service writes its results
                ``<code>-r.mp4``: its data/temp folder (~/heygem_data/face2face/temp with
                HeyGem's docker-compose).  Default = share.
  poll          seconds between queries (default 1).
  timeout       seconds a submitted task may run before the item fails "transient"
                (default 3600).
  busy_timeout  seconds to wait for the service to be free (other Talkie workers' tasks via
                the lock, or someone else's task answering 10001) before failing
                "transient"; 0 = wait until the runner's own timeout (default 0).
  gone_timeout  seconds to keep retrying while the service does not answer (refused,
                reset, timed out) before failing "transient" (default 60).
  chaofen       1 = ask HeyGem for its face super-resolution (default 0).
  pn            1 = template loops forward-backward ("ping-pong"), 0 = plain loop (default 1,
                as HeyGem's own client).
  keep_results  true = leave the service's <code>-r.mp4 in `results` (default false:
                deleted once muxed; a result outside `results` is never deleted).

Per item: link the inputs into `share`, take an fcntl lock named after the URL (in the
request's cache_dir, else /tmp) so workers of several slots never submit to the same
service at once, submit with a fresh code, poll /easy/query, release the lock when the
task is done or failed, then mux the result's video with the narration into the
protocol's output (video copied when it is H.264 yuv420p of the right length, else
re-encoded; AAC audio; exactly `duration` seconds).

Progress: the service reports a percentage and a stage message, not frames, so progress
messages carry {"frame": P, "frames": 100, "unit": "percent", "stage": ...}, sent when P
or the stage changes.

Answer codes (what they mean in HeyGem's app.py, and what this worker does):
  10001 busy                -> wait (backoff up to 10 s) and submit again, up to busy_timeout
  10002 bad parameter       -> error "input" (the same request can never succeed)
  10003 lock failure, 9999  -> error "transient"
  10004 after our submit    -> the service forgot the task (it deletes a finished task after
                               the first query that reports it, and forgets all on restart):
                               use <code>-r.mp4 from `results` if it is a valid video, else
                               error "transient" (the item will be retried)
  status 3 (failed)         -> error with the service's msg; "input" when the msg says the
                               inputs are at fault (multiple faces, no face, unreadable
                               template or audio), else "transient"
Where each fact was read: heygem.py and docs/engine-face2face.md.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
_CLASSIC = os.path.join(os.path.dirname(_HERE), "classic")
for _p in (_CLASSIC, _HERE):  # _HERE first on the path
    if _p in sys.path:
        sys.path.remove(_p)
    sys.path.insert(0, _p)

import heygem  # noqa: E402
from params import env_params, flag, number  # noqa: E402  (engines/classic/params.py)
from protocol import claim_stdout, serve  # noqa: E402  (engines/classic/protocol.py)

NAME = "face2face"
VERSION = "1.0.0"
MAX_BACKOFF = 10.0

# Stage messages of HeyGem's TransDhTask.work (change_task_status), shown in English.
STAGES = {
    "文件下载完成": "inputs ready",
    "音频特征提取完成": "audio features extracted",
    "视频处理完成": "video rendered",
    "任务完成": "finished",
}

# status-3 messages that blame the inputs (TransDhTask.work): several faces, preprocessing
# (reading the template / audio) and audio feature extraction.  Anything else (CUDA out of
# memory, "**生成视频失败", a crashed writer) is transient.
INPUT_FAULTS = re.compile(r"多人脸|人脸|预处理失败|音频特征提取失败|入参|no face|multiple faces|"
                          r"format (video|audio) error", re.IGNORECASE)


class InputError(Exception):
    """The item's inputs are at fault (kind "input")."""


class Face2FaceError(Exception):
    """Anything else (kind "transient"): the runner retries the item."""


def _log(msg: str) -> None:
    print(f"face2face: {msg}", file=sys.stderr, flush=True)


class Settings:
    def __init__(self, params: dict):
        self.url = heygem.base_url(params.get("url") or "")
        self.share = str(params.get("share") or "")
        self.share_as = str(params.get("share_as") or self.share).rstrip("/") or "/"
        self.results = str(params.get("results") or self.share)
        self.poll = number(params.get("poll"), 1.0, 0.01, 60.0)
        self.timeout = number(params.get("timeout"), 3600.0, 0.1, 7 * 86400.0)
        self.busy_timeout = number(params.get("busy_timeout"), 0.0, 0.0, 7 * 86400.0)
        self.gone_timeout = number(params.get("gone_timeout"), 60.0, 0.1, 86400.0)
        self.chaofen = 1 if flag(params.get("chaofen")) else 0
        self.pn = 1 if flag(params.get("pn"), True) else 0
        self.keep_results = flag(params.get("keep_results"))

    def problem(self) -> str | None:
        """What keeps this configuration from working, naming the parameter, or None."""
        if not self.url:
            return ("the face2face engine needs the parameter url=http://HOST:8383 "
                    "(the HeyGem face2face service)")
        if not self.url.startswith(("http://", "https://")):
            return f"url={self.url!r} is not an http:// URL of the HeyGem face2face service"
        if not self.share:
            return ("the face2face engine needs the parameter share=FOLDER: a folder on this machine the "
                    "service can read (with share_as=its path inside the service's container)")
        for name, path in (("share", self.share), ("results", self.results)):
            if not os.path.isdir(path):
                return f"the folder {name}={path} does not exist"
        if not os.access(self.share, os.W_OK | os.X_OK):
            return f"the folder share={self.share} is not writable"
        return None


def check_service(s: Settings) -> str | None:
    """None when the service answers a query for a code that cannot exist like face2face does (10004)."""
    try:
        env = heygem.Service(s.url, http_timeout=10.0).query("talkie-probe-" + secrets.token_hex(6))
    except heygem.Unreachable as e:
        return f"cannot reach the HeyGem face2face service at {s.url}: {e}"
    if env["code"] != heygem.NOT_FOUND:
        return (f"{s.url} does not answer like a HeyGem face2face service (a query for an unknown task "
                f"answered {env['code']} {env['msg']!r}, expected 10004)")
    return None


# ----------------------------------------------------------------------------------------------
# media

def ffprobe(path: str) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries",
                          "stream=codec_type,codec_name,pix_fmt,duration,nb_frames,avg_frame_rate:format=duration",
                          "-of", "json", path], capture_output=True, text=True)
    if out.returncode != 0:
        raise Face2FaceError(f"ffprobe cannot read {path}: {out.stderr.strip()[-300:]}")
    return json.loads(out.stdout or "{}")


def video_stream(info: dict) -> dict | None:
    return next((st for st in info.get("streams", []) if st.get("codec_type") == "video"), None)


def _float(v, default=0.0) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


def valid_result(path: str) -> bool:
    """A finished video: readable, with a video stream and a duration (not a half-written file)."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return False
    try:
        info = ffprobe(path)
    except Face2FaceError:
        return False
    return video_stream(info) is not None and _float(info.get("format", {}).get("duration")) > 0


def mux(result: str, audio: str, duration: float, output: str) -> int:
    """Write `output`: the result's video (copied when possible) + the narration in AAC, `duration` long."""
    info = ffprobe(result)
    v = video_stream(info)
    if v is None:
        raise Face2FaceError(f"the service's result {result} has no video stream")
    vdur = _float(v.get("duration")) or _float(info.get("format", {}).get("duration"))
    copy = (v.get("codec_name") == "h264" and v.get("pix_fmt") == "yuv420p" and vdur >= duration - 0.04)
    part = output + ".part.mp4"
    args = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", result, "-i", audio, "-map", "0:v:0", "-map", "1:a:0"]
    if copy:
        args += ["-c:v", "copy"]
    else:
        pad = max(0.0, duration - vdur) + 0.1
        args += ["-vf", f"tpad=stop_mode=clone:stop_duration={pad:.3f}", "-c:v", "libx264", "-preset", "veryfast",
                 "-crf", "18", "-pix_fmt", "yuv420p"]
    args += ["-c:a", "aac", "-b:a", "192k", "-t", f"{duration:.3f}", "-movflags", "+faststart", part]
    try:
        r = subprocess.run(args, capture_output=True, text=True)
        if r.returncode != 0:
            raise Face2FaceError(f"ffmpeg could not mux the result: {r.stderr.strip()[-400:]}")
        os.replace(part, output)
    finally:
        if os.path.exists(part):
            os.unlink(part)
    out = video_stream(ffprobe(output)) or {}
    frames = int(_float(out.get("nb_frames")))
    if frames <= 0:
        num, _, den = str(out.get("avg_frame_rate", "25/1")).partition("/")
        frames = round(duration * _float(num, 25.0) / (_float(den, 1.0) or 1.0))
    return frames


def link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
    os.chmod(dst, 0o644)


# ----------------------------------------------------------------------------------------------
# one item

class ServiceLock:
    """An exclusive fcntl lock per service URL, shared by every worker on this machine."""

    def __init__(self, folder: str, url: str):
        os.makedirs(folder, exist_ok=True)
        tag = hashlib.sha1(url.encode()).hexdigest()[:16]
        self.path = os.path.join(folder, f"face2face-{tag}.lock")
        self.fd: int | None = None

    def try_acquire(self) -> bool:
        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class Item:
    def __init__(self, req: dict, s: Settings, chan):
        self.req, self.s, self.chan = req, s, chan
        self.rid = req.get("id")
        self.service = heygem.Service(s.url, http_timeout=min(10.0, max(1.0, s.gone_timeout)))
        key = re.sub(r"[^A-Za-z0-9]", "", str(req.get("item_key") or self.rid or "item"))[:12] or "item"
        self.code = f"talkie-{key}-{secrets.token_hex(4)}"
        self.shared: list[str] = []
        self.pct = -1
        self.stage = None

    def progress(self, pct: int, stage: str) -> None:
        pct = max(self.pct, min(100, int(pct)))  # the service's numbers never make the bar go back
        if pct != self.pct or stage != self.stage:
            self.pct, self.stage = pct, stage
            self.chan.send({"type": "progress", "id": self.rid, "frame": pct, "frames": 100, "unit": "percent",
                            "stage": stage})

    def info(self, msg: str) -> None:
        _log(f"[{self.rid}] {msg}")
        self.chan.log(self.rid, msg)

    # -- the service ---------------------------------------------------------------------------
    def _gone(self, since: float, err: Exception) -> None:
        if time.monotonic() - since > self.s.gone_timeout:
            raise Face2FaceError(f"the face2face service at {self.s.url} stopped answering for "
                                 f"{self.s.gone_timeout:g} s ({err}); the item will be retried")

    def wait_for_lock(self, lock: ServiceLock, t0: float) -> None:
        waited = False
        while not lock.try_acquire():
            if not waited:
                self.info(f"another worker is using the service at {self.s.url}; waiting")
                waited = True
            self.progress(0, "waiting for the service")
            self._check_busy_timeout(t0)
            time.sleep(min(0.2, self.s.poll))

    def _check_busy_timeout(self, t0: float) -> None:
        if self.s.busy_timeout > 0 and time.monotonic() - t0 > self.s.busy_timeout:
            raise Face2FaceError(f"the face2face service at {self.s.url} stayed busy for "
                                 f"{self.s.busy_timeout:g} s (busy_timeout)")

    def submit(self, audio_url: str, video_url: str, t0: float) -> None:
        backoff = self.s.poll
        gone_since = None
        while True:
            try:
                env = self.service.submit(audio_url, video_url, self.code, self.s.chaofen, self.s.pn)
            except heygem.Unreachable as e:
                gone_since = gone_since or time.monotonic()
                self._gone(gone_since, e)
                # the request may have arrived before the connection broke: ask before resubmitting
                try:
                    if self.service.query(self.code)["code"] == heygem.OK:
                        return
                except heygem.Unreachable:
                    pass
                time.sleep(self.s.poll)
                continue
            gone_since = None
            code, msg = env["code"], env["msg"]
            if code == heygem.OK:
                return
            if code == heygem.BUSY:
                self.progress(0, "waiting for the service")
                self._check_busy_timeout(t0)
                time.sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)
                continue
            what = heygem.CODE_NAMES.get(code, "unexpected answer")
            text = f"the face2face service refused the task: {code} {what}" + (f": {msg}" if msg else "")
            if code == heygem.BAD_PARAMETER:
                raise InputError(text)
            raise Face2FaceError(text)

    def follow(self) -> dict | None:
        """Poll until the task ends; the final query's data, or None when the service forgot the task."""
        started = time.monotonic()
        gone_since = None
        while True:
            if time.monotonic() - started > self.s.timeout:
                raise Face2FaceError(f"the face2face task {self.code} did not finish within {self.s.timeout:g} s "
                                     f"(timeout); the item will be retried")
            try:
                env = self.service.query(self.code)
            except heygem.Unreachable as e:
                gone_since = gone_since or time.monotonic()
                self._gone(gone_since, e)
                time.sleep(self.s.poll)
                continue
            code, data = env["code"], env["data"]
            if code == heygem.NOT_FOUND:
                return None
            if code != heygem.OK:  # 9999 from the query handler: a hiccup, like a dropped connection
                gone_since = gone_since or time.monotonic()
                self._gone(gone_since, Exception(f"{code} {env['msg']}"))
                time.sleep(self.s.poll)
                continue
            gone_since = None
            status = data.get("status")
            msg = str(data.get("msg") or "")
            pct = int(_float(data.get("progress")))
            if status == heygem.DONE:
                self.progress(pct or 100, STAGES.get(msg, msg or "finished"))
                return data
            if status == heygem.FAILED:
                text = f"the face2face service failed the task: {msg or 'no reason given'}"
                if INPUT_FAULTS.search(msg):
                    raise InputError(text)
                raise Face2FaceError(text)
            self.progress(pct, STAGES.get(msg, msg[:80] or ("starting" if pct == 0 else "rendering")))
            time.sleep(self.s.poll)

    # -- files ---------------------------------------------------------------------------------
    def to_service(self, host_path: str) -> str:
        rel = os.path.relpath(host_path, self.s.share)
        return self.s.share_as.rstrip("/") + "/" + rel

    def share_input(self, src: str, suffix: str) -> str:
        ext = os.path.splitext(src)[1].lower()
        if not re.fullmatch(r"\.[a-z0-9]{1,5}", ext):
            ext = ".mp4" if suffix == "v" else ".wav"
        dst = os.path.join(self.s.share, f"{self.code}-{suffix}{ext}")
        link_or_copy(src, dst)
        self.shared.append(dst)
        return self.to_service(dst)

    def result_candidates(self, data: dict | None) -> list[str]:
        """Where the result may be on this machine: HeyGem's query gives it relative to its temp folder
        (its client joins it to that folder); an absolute path under share_as is mapped back."""
        out = []
        res = str((data or {}).get("result") or "")
        if res:
            sa = self.s.share_as.rstrip("/")
            if sa and (res == sa or res.startswith(sa + "/")):
                out.append(os.path.join(self.s.share, res[len(sa):].lstrip("/")))
            out.append(os.path.join(self.s.results, res.lstrip("/")))
            out.append(os.path.join(self.s.results, os.path.basename(res)))
            if os.path.isabs(res):
                out.append(res)
        out.append(os.path.join(self.s.results, f"{self.code}-r.mp4"))
        return list(dict.fromkeys(out))

    def cleanup(self, result: str | None) -> None:
        for p in self.shared:
            try:
                os.unlink(p)
            except OSError:
                pass
        # only HeyGem's own leftovers: a service that keeps its outputs elsewhere (Talkie's studio) keeps them
        in_results = result and os.path.dirname(os.path.realpath(result)) == os.path.realpath(self.s.results)
        if in_results and not self.s.keep_results:
            try:
                os.unlink(result)
            except OSError as e:
                _log(f"[{self.rid}] could not delete the service's result {result}: {e}")

    # -- all of it -----------------------------------------------------------------------------
    def run(self) -> tuple[int, None]:
        req = self.req
        video, audio, output = req.get("video"), req.get("audio"), req.get("output")
        if not video or not audio or not output:
            raise InputError("render request needs video, audio and output")
        for what, p in (("template", video), ("audio", audio)):
            if not os.path.isfile(p):
                raise InputError(f"{what} not found: {p}")
        duration = _float(req.get("duration"))
        if not duration > 0:
            duration = _float(ffprobe(audio).get("format", {}).get("duration"))
        if not duration > 0:
            raise InputError(f"cannot tell the duration of the audio {audio}")

        result = None
        try:
            video_url = self.share_input(video, "v")
            audio_url = self.share_input(audio, "a")
            lock = ServiceLock(req.get("cache_dir") or "/tmp", self.s.url)
            t0 = time.monotonic()
            try:
                self.wait_for_lock(lock, t0)
                self.submit(audio_url, video_url, t0)
                self.info(f"submitted task {self.code} to {self.s.url} (video_url={video_url}, audio_url={audio_url})")
                self.progress(0, "submitted")
                data = self.follow()
            finally:
                lock.release()
            cands = self.result_candidates(data)
            if data is None:
                # the service forgot the task: finished and deleted by an earlier query whose answer
                # we lost, or restarted.  Its result file may be all that is left.
                found = next((c for c in cands if valid_result(c)), None)
                if found is None:
                    raise Face2FaceError(f"the face2face service lost the task {self.code} (restarted?) and "
                                         f"left no result in {self.s.results}; the item will be retried")
                self.info(f"the service forgot task {self.code}; using its result file {found}")
                self.progress(100, "finished")
                result = found
            else:
                # a shared folder (a Docker Desktop bind mount, NFS) may show the file a moment later
                deadline = time.monotonic() + min(5.0, self.s.gone_timeout)
                while (result := next((c for c in cands if os.path.isfile(c)), None)) is None \
                        and time.monotonic() < deadline:
                    time.sleep(0.1)
                if result is None:
                    raise Face2FaceError(f"the face2face task {self.code} finished with result "
                                         f"{data.get('result')!r} but it is not in results={self.s.results} "
                                         f"(looked for {', '.join(cands)})")
            self.progress(100, "muxing")
            frames = mux(result, audio, duration, output)
            return frames, None
        finally:
            self.cleanup(result)


def main() -> int:
    chan = claim_stdout()
    try:
        start = env_params()
    except ValueError as e:
        chan.fatal(f"the face2face engine cannot start: {e}")
        return 1
    s = Settings(start)
    problem = s.problem()
    if problem is None and not (shutil.which("ffmpeg") and shutil.which("ffprobe")):
        problem = "ffmpeg/ffprobe are not installed (the face2face engine muxes the service's result with them)"
    problem = problem or check_service(s)
    if problem:
        _log(problem)
        chan.fatal(problem)
        return 1
    _log(f"service {s.url} answers; share={s.share} (as {s.share_as}), results={s.results}")
    chan.hello(NAME, VERSION, {"progress": True, "device": f"face2face {s.url}"})

    def render(msg):
        params = dict(start)
        if isinstance(msg.get("params"), dict):
            params.update({k: v for k, v in msg["params"].items() if v is not None})
        s_item = Settings(params)
        problem = s_item.problem()
        if problem:
            raise Face2FaceError(problem)
        return Item(msg, s_item, chan).run()

    return serve(chan, NAME, render, InputError, Face2FaceError)


if __name__ == "__main__":
    sys.exit(main())
