"""A client for HeyGem's face2face service: POST /easy/submit, GET /easy/query (stdlib only).

Facts this relies on, and where they were read (see docs/engine-face2face.md):

- Answers are ``{"code", "success", "msg", "data"}`` with HTTP 200 whatever the code:
  9999 system error, 10000 ok, 10001 busy, 10002 bad parameter, 10003 "could not take
  the lock", 10004 task not found (HeyGem's app.py, ``ResponseCode``; copies read in
  meiwulang/heygem-face2face-source app.py and fengsam6/HeyGem-Linux-Python-Hack
  app_server.py).
- Submit body: audio_url, video_url, code, chaofen, watermark_switch, pn (+ digital_auth);
  while a task runs the service answers 10001 and starts nothing (app.py ``run_flag``).
- Query ``?code=``: data = {code, status (1 running, 2 done, 3 failed), progress, result,
  msg}; a done or failed task is deleted right after the query that reports it, so a
  second query answers 10004 (app.py ``del_flag``); tasks live in memory only.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

OK = 10000
BUSY = 10001
BAD_PARAMETER = 10002
LOCK_FAILED = 10003
NOT_FOUND = 10004
SYSTEM_ERROR = 9999

RUNNING, DONE, FAILED = 1, 2, 3

CODE_NAMES = {OK: "ok", BUSY: "busy", BAD_PARAMETER: "bad parameter", LOCK_FAILED: "could not take its lock",
              NOT_FOUND: "task not found", SYSTEM_ERROR: "system error"}


class Unreachable(Exception):
    """The service did not answer (refused, reset, timed out) or did not answer like face2face."""


def base_url(url: str) -> str:
    """The service's base URL; HeyGem's own client is configured with ".../easy", accept that too."""
    u = str(url).strip().rstrip("/")
    if u.endswith("/easy"):
        u = u[: -len("/easy")]
    return u


class Service:
    def __init__(self, url: str, http_timeout: float = 10.0):
        self.url = base_url(url)
        self.http_timeout = http_timeout

    def _call(self, req: urllib.request.Request) -> dict:
        try:
            with urllib.request.urlopen(req, timeout=self.http_timeout) as r:
                body = r.read()
        except urllib.error.HTTPError as e:
            body = e.read() or b""
            if not body.strip().startswith(b"{"):
                raise Unreachable(f"HTTP {e.code} from {req.full_url}") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise Unreachable(f"{req.full_url}: {reason}") from None
        try:
            env = json.loads(body.decode("utf-8", "replace"))
        except ValueError:
            raise Unreachable(f"{req.full_url} did not answer JSON: {body[:120]!r}") from None
        if not isinstance(env, dict) or not isinstance(env.get("code"), int):
            raise Unreachable(f"{req.full_url} did not answer a face2face envelope: {body[:120]!r}")
        if not isinstance(env.get("data"), dict):
            env["data"] = {}
        env["msg"] = "" if env.get("msg") is None else str(env.get("msg"))
        return env

    def submit(self, audio_url: str, video_url: str, code: str, chaofen: int = 0, pn: int = 1) -> dict:
        body = {"audio_url": audio_url, "video_url": video_url, "code": code, "chaofen": int(chaofen),
                "watermark_switch": 0, "digital_auth": 0, "pn": int(pn)}
        req = urllib.request.Request(self.url + "/easy/submit", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        return self._call(req)

    def query(self, code: str) -> dict:
        q = urllib.parse.urlencode({"code": code})
        return self._call(urllib.request.Request(f"{self.url}/easy/query?{q}", method="GET"))
