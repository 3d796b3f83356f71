"""Helpers for the studio's browser test: a real `talkie serve`, free ports, screenshots.

Deliberately not a conftest.py: engines/tests does `from conftest import …`, and scripts/test.sh
runs both folders in one pytest process, where a second conftest module would shadow theirs.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MEDIA_SAMPLES = REPO / "engines" / "media_samples.py"


def talkie_binary() -> Path:
    """The talkie executable: $TALKIE_BINARY, or the debug build."""
    return Path(os.environ.get("TALKIE_BINARY") or REPO / ".build" / "debug" / "talkie")


def free_port() -> int:
    """A TCP port nobody listens on right now (on 127.0.0.1)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_json(method: str, url: str, body=None, timeout: float = 10.0):
    """(status, parsed JSON or None) for a request; never raises on HTTP errors."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data is not None else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            return response.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            return error.code, json.loads(raw)
        except ValueError:
            return error.code, None


class StudioServer:
    """`talkie serve` on a free loopback port, with its output in a log file.

    start() waits until GET /api/state answers; stop() sends SIGTERM and waits (the server
    shuts down gracefully); both can be called again, so a test can restart the server on
    the same port and workspace.
    """

    def __init__(self, binary: Path, workspace: Path, log_path: Path, port: int | None = None):
        self.binary = binary
        self.workspace = workspace
        self.log_path = log_path
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> "StudioServer":
        assert self.process is None, "already running"
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [str(self.binary), "serve", "--workspace", str(self.workspace), "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(REPO))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"talkie serve exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                status, _ = http_json("GET", self.url + "/api/state", timeout=2)
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"talkie serve did not answer GET /api/state within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.process is None:
            return None
        process, self.process = self.process, None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log:
            self._log.close()
            self._log = None
        return process.returncode

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])


def make_demo_media(out: Path) -> dict:
    """Small demo inputs from engines/media_samples.py: one narration (4 s), two templates (3 s)."""
    venv_python = REPO / ".venv" / "bin" / "python"
    python = str(venv_python) if venv_python.is_file() else sys.executable
    command = [python, str(MEDIA_SAMPLES), "--out", str(out), "--seconds", "3",
               "--narration-seconds", "4", "--templates", "closeup-512,wide-512"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"media_samples.py failed:\n{result.stdout}\n{result.stderr}"
    media = {
        "narration": out / "narration-en.wav",
        "templates": [out / "templates" / "closeup-512.mp4", out / "templates" / "wide-512.mp4"],
    }
    for path in [media["narration"], *media["templates"]]:
        assert path.is_file(), f"media_samples.py did not write {path}"
    return media


def screenshot_dir() -> Path:
    """Where tests save screenshots: $TALKIE_SCREENSHOTS or /tmp/talkie-screenshots."""
    folder = Path(os.environ.get("TALKIE_SCREENSHOTS") or "/tmp/talkie-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def chromium_paths() -> tuple[str | None, str | None]:
    """Debian's chromium and chromium-driver (overridable with $CHROMIUM / $CHROMEDRIVER)."""
    browser = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    driver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
    return (browser if os.access(browser, os.X_OK) else None, driver if os.access(driver, os.X_OK) else None)
