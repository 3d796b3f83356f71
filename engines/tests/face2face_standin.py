"""A stand-in for HeyGem's face2face service, for the face2face engine's tests.

It speaks the same API (POST /easy/submit, GET /easy/query, {code, success, msg, data})
and behaves like HeyGem's app.py: one task at a time (a submit while one runs answers
10001), progress in stages (0, 10, 20, 90, 100 with HeyGem's stage messages), the result
``<code>-r.mp4`` written into its temp folder (made with ffmpeg from the submitted video,
looped, and audio) and reported relative to that folder, a finished task answered once
and then deleted (10004 afterwards), everything forgotten on restart.

Failure modes, set as attributes before (or during) a test:
  busy_times       answer 10001 to the next N submits even when idle (someone else's task)
  submit_code      answer this code (10002, 10003, 9999) to every submit, msg submit_msg
  fail_msg         the task ends with status 3 and this msg after the 20 % stage
  vanish_at        stop listening when the task reaches this progress (the service died)
  never_finish     the task stays at 20 % forever
  forget           restart right after a submit; forget_with_result says whether the
                   result file was written before
  result_vcodec    the result's video codec (default libx264); result_trim makes its
                   video that many seconds shorter than the audio
Observations: submits (bodies), busy_answers, max_running.
"""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

STAGES = [(10, "文件下载完成"), (20, "音频特征提取完成"), (90, "视频处理完成")]


class Standin:
    def __init__(self, temp_dir: str, path_map: dict[str, str] | None = None, stage_seconds: float = 0.2):
        self.temp_dir = temp_dir
        self.path_map = dict(path_map or {})
        self.stage_seconds = stage_seconds
        self.lock = threading.Lock()
        self.tasks: dict[str, list] = {}  # code -> [status, progress, result, msg]
        self.run_flag = False
        self.running = 0
        self.max_running = 0
        self.submits: list[dict] = []
        self.busy_answers = 0
        self.busy_times = 0
        self.submit_code: int | None = None
        self.submit_msg = ""
        self.fail_msg: str | None = None
        self.vanish_at: int | None = None
        self.never_finish = False
        self.forget = False
        self.forget_with_result = False
        self.result_vcodec = "libx264"
        self.result_trim = 0.0
        self._stop = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        self.gone = False

    # -- lifecycle -------------------------------------------------------------------------------
    def go_away(self) -> None:
        """Stop listening (connections are refused from now on) and stop working."""
        if self.gone:
            return
        self.gone = True
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()

    close = go_away

    def restart(self) -> None:
        """What a restart of HeyGem's container does to its API: every task forgotten."""
        with self.lock:
            self.tasks.clear()
            self.run_flag = False

    # -- the API ---------------------------------------------------------------------------------
    @staticmethod
    def envelope(code: int, msg="", data=None) -> dict:
        return {"code": code, "success": code in (10000, 10001, 10004), "msg": msg, "data": data or {}}

    def submit(self, body: dict) -> dict:
        self.submits.append(body)
        for k in ("audio_url", "video_url", "code"):
            if not body.get(k):
                return self.envelope(10002, f"{k}参数缺失")
        if self.submit_code is not None:
            return self.envelope(self.submit_code, self.submit_msg)
        with self.lock:
            if self.busy_times > 0 or self.run_flag:
                self.busy_times = max(0, self.busy_times - 1)
                self.busy_answers += 1
                return self.envelope(10001, "忙碌中")
            self.run_flag = True
            self.tasks[body["code"]] = [1, 0, "", ""]
        threading.Thread(target=self.work, args=(body,), daemon=True).start()
        return self.envelope(10000, 10000)  # HeyGem really puts the number in msg

    def query(self, code: str) -> dict:
        with self.lock:
            t = self.tasks.get(code)
            if t is None:
                return self.envelope(10004, "任务不存在")
            status, progress, result, msg = t
            if status in (2, 3):
                del self.tasks[code]
        return self.envelope(10000, "", {"code": code, "status": status, "progress": progress, "result": result,
                                         "msg": msg})

    # -- the work --------------------------------------------------------------------------------
    def local(self, path: str) -> str:
        for inside, host in self.path_map.items():
            if path == inside or path.startswith(inside.rstrip("/") + "/"):
                return os.path.join(host, path[len(inside):].lstrip("/"))
        return path

    def _set(self, code: str, status: int, progress: int, result: str, msg: str) -> None:
        with self.lock:
            if code in self.tasks:
                self.tasks[code] = [status, progress, result, msg]

    def _sleep(self, seconds: float) -> bool:
        return not self._stop.wait(seconds)

    def make_result(self, code: str, video: str, audio: str) -> str:
        dur = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of",
                              "default=nw=1:nk=1", audio], capture_output=True, text=True, check=True)
        out = os.path.join(self.temp_dir, f"{code}-r.mp4")
        tmp = os.path.join(self.temp_dir, f"{code}-t.mp4")
        seconds = float(dur.stdout.strip())
        vcodec = ["-c:v", "libx264", "-preset", "ultrafast"] if self.result_vcodec == "libx264" else \
            ["-c:v", self.result_vcodec]
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-stream_loop", "-1",
                        "-t", f"{seconds - self.result_trim:.3f}", "-i", video, "-i", audio,
                        "-map", "0:v:0", "-map", "1:a:0", *vcodec, "-pix_fmt", "yuv420p", "-c:a", "aac",
                        "-t", f"{seconds:.3f}", tmp], check=True, capture_output=True)
        os.replace(tmp, out)
        return out

    def work(self, body: dict) -> None:
        code = body["code"]
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            video, audio = self.local(body["video_url"]), self.local(body["audio_url"])
            if self.forget:
                if self.forget_with_result:
                    self.make_result(code, video, audio)
                self.restart()
                return
            if not (os.path.isfile(video) and os.path.isfile(audio)):
                self._set(code, 3, 0, "", "视频入参或音频入参下载处理异常")
                return
            for progress, msg in STAGES:
                if not self._sleep(self.stage_seconds):
                    return
                if self.vanish_at is not None and progress >= self.vanish_at:
                    threading.Thread(target=self.go_away, daemon=True).start()
                    return
                if progress == 90:
                    self.make_result(code, video, audio)
                    result = f"/{code}-r.mp4"
                else:
                    result = ""
                self._set(code, 1, progress, result, msg)
                if progress == 20 and self.fail_msg is not None:
                    self._set(code, 3, 0, "", self.fail_msg)
                    return
                if progress == 20 and self.never_finish:
                    self._stop.wait()
                    return
            self._set(code, 2, 100, f"/{code}-r.mp4", "任务完成")
        except Exception as e:  # noqa: BLE001
            self._set(code, 3, 0, "", f"stand-in error: {e}")
        finally:
            with self.lock:
                self.running -= 1
            time.sleep(0.05)  # HeyGem clears run_flag only after sweeping its temp folder
            with self.lock:
                self.run_flag = False

    def _handler(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, env: dict) -> None:
                body = json.dumps(env, ensure_ascii=False, indent=4).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n)
                if urlparse(self.path).path != "/easy/submit":
                    self.send_error(404)
                    return
                try:
                    body = json.loads(raw)
                except ValueError:
                    self._answer(standin.envelope(9999, "系统异常"))
                    return
                self._answer(standin.submit(body))

            def do_GET(self):
                u = urlparse(self.path)
                if u.path != "/easy/query":
                    self.send_error(404)
                    return
                code = parse_qs(u.query).get("code", [""])[0]
                if not code:
                    self._answer(standin.envelope(10002, "code参数缺失"))
                    return
                self._answer(standin.query(code))

        return Handler
