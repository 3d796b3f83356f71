"""Crafted requests against the studio (`talkie serve`): none may read or write outside the
workspace, and the server's memory stays bounded.

Around a workspace the suite lays out canary files with secret content (`outside/`), an
allowed folder for face2face (`--allow-dir allowed/`) holding real media and a symlink out,
a sibling folder whose name starts like the allowed one, and symlinks inside the workspace
that point out. Then it sends requests over a raw socket (so every byte of the path is its
own): traversal in all its encodings, absolute paths, NUL bytes, symlinks, Range tricks,
upload names that are paths, oversized and endless uploads, face2face submissions naming
files outside the allowed folders, a missing or wrong token on a server bound to 0.0.0.0
(HTTP and WebSocket), and foreign Host headers (DNS rebinding).

Each crafted request is one case, and each is checked for: the expected refusal (a 4xx, or
HeyGem's code 10002 for face2face), no canary content (nor /etc/passwd) in the response,
no file outside the workspace created or changed (the tree around it is snapshotted before
and compared after every case, plus the absolute paths the request aimed at), the server
still up, and its resident memory (VmRSS) within 200 MiB of where it started.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import threading
import time
from pathlib import Path
from urllib.parse import quote

from .. import harness
from ..harness import wait_for
from .studio_client import Reply, Server, free_port, raw_request, stream_upload

TITLE = "crafted requests never reach outside the workspace"
BUDGET = (60, 300)

RSS_GROWTH_LIMIT_KIB = 200 << 10
PASSWD_MARKER = b"root:x:0:0"


class Memory:
    """Samples a server's VmRSS every 50 ms in the background; `peak` since `reset`."""

    def __init__(self, server: Server):
        self.server = server
        self.baseline = server.rss_kib()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.server.rss_kib())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class Layout:
    """The folders around the workspace, the canaries, and the snapshot of all that lies
    outside the workspace."""

    def __init__(self, root: Path):
        self.root = root
        self.token = secrets.token_hex(8)
        self.canary = f"TALKIE-CANARY-{self.token}".encode()
        self.outside = root / "outside"
        self.allowed = root / "allowed"
        self.sibling = root / "allowed-evil"  # starts like the allowed folder's name
        self.workspace = root / "ws"
        self.remote_workspace = root / "ws-remote"  # the server bound off loopback
        self.cwd = root / "cwd"  # the server's working folder
        self.logs = root / "logs"
        for folder in [self.outside, self.allowed, self.sibling, self.workspace / "outputs", self.cwd, self.logs]:
            folder.mkdir(parents=True, exist_ok=True)
        # Canaries: text, and "media" names whose bytes are the secret.
        secret = self.canary * 64 + b"\n"
        for name in ["secret.txt", "secret.mp4", "secret.wav", "secret.png"]:
            (self.outside / name).write_bytes(secret)
        (self.sibling / "secret.mp4").write_bytes(secret)
        (self.sibling / "secret.wav").write_bytes(secret)
        # Real media in the allowed folder (the accepted controls), and ways out of it.
        harness.narration(self.allowed, name="ok.wav")
        harness.template(self.allowed / "ok.mp4", variant=5)
        (self.allowed / "escape.mp4").symlink_to(self.outside / "secret.mp4")
        (self.allowed / "escape.wav").symlink_to(self.outside / "secret.wav")
        (self.allowed / "linkdir").symlink_to(self.outside)
        # Symlinks inside the workspace pointing out.
        outputs = self.workspace / "outputs"
        (outputs / "leak.mp4").symlink_to(self.outside / "secret.mp4")
        (outputs / "leak.png").symlink_to(self.outside / "secret.png")
        (outputs / "leakdir").symlink_to(self.outside)
        # A real output-like file, to aim Range tricks at something that exists.
        shutil.copyfile(self.allowed / "ok.mp4", outputs / "plain.mp4")
        # Where a path-following upload or submit would land outside.
        self.targets = [Path(f"/tmp/talkie-pwned-{self.token}{suffix}") for suffix in ["", ".mp4", ".wav"]]
        self.targets += [self.cwd / "pwned.mp4", self.root / "pwned.mp4", self.outside / "pwned.mp4"]
        self.before = self.snapshot()

    def snapshot(self) -> dict[str, tuple]:
        """Everything under the root except the workspace and the logs: type, size, mtime,
        content hash (or link target)."""
        found: dict[str, tuple] = {}
        skip = {self.workspace, self.remote_workspace, self.logs}
        for folder, dirs, files in os.walk(self.root, followlinks=False):
            here = Path(folder)
            dirs[:] = [name for name in dirs if here / name not in skip]
            for name in dirs + files:
                path = here / name
                info = path.lstat()
                if path.is_symlink():
                    found[str(path)] = ("link", os.readlink(path))
                elif path.is_dir():
                    found[str(path)] = ("dir",)
                else:
                    found[str(path)] = ("file", info.st_size, info.st_mtime_ns,
                                        hashlib.sha256(path.read_bytes()).hexdigest())
        return found

    def changes_outside(self) -> list[str]:
        """What changed outside the workspace since the layout was made."""
        after = self.snapshot()
        problems = [f"created outside the workspace: {path}" for path in after.keys() - self.before.keys()]
        problems += [f"removed outside the workspace: {path}" for path in self.before.keys() - after.keys()]
        problems += [f"changed outside the workspace: {path}" for path in self.before.keys() & after.keys()
                     if self.before[path] != after[path]]
        problems += [f"created outside the workspace: {path}" for path in self.targets if os.path.lexists(path)]
        return problems

    def leaks(self, reply: Reply) -> list[str]:
        """Canary (or /etc/passwd) content in a response, also base64-encoded."""
        problems = []
        for secret, what in [(self.canary, "the canary"), (PASSWD_MARKER, "/etc/passwd")]:
            if secret in reply.raw or base64.b64encode(secret)[:-4] in reply.raw:
                problems.append(f"the response carries {what}'s content")
        return problems


class Probe:
    """Sends crafted requests as cases and checks each."""

    def __init__(self, ctx: harness.Context, layout: Layout, server: Server, memory: Memory):
        self.ctx = ctx
        self.layout = layout
        self.server = server
        self.memory = memory

    def case(self, label: str, send, expect=None, refused: bool = True):
        """One crafted request: `send()` returns the Reply; `expect(case, reply)` adds checks;
        `refused` requires a 4xx."""
        if self.ctx.out_of_time():
            return None
        with self.ctx.case(label) as case:
            peak_before = self.memory.peak
            reply = send()
            if refused:
                case.check(400 <= reply.status < 500,
                           f"status {reply.status or reply.error}, expected a refusal (4xx): {reply.body[:200]!r}")
            for problem in self.layout.leaks(reply):
                case.fail(problem)
            if expect:
                expect(case, reply)
            changes = self.layout.changes_outside()
            for problem in changes:
                case.fail(problem)
            if changes:  # blame the next cases only for their own changes
                self.layout.before = self.layout.snapshot()
            case.check(self.server.alive(), f"the server died: {self.server.stderr_tail()}")
            time.sleep(0.06)  # one more sample
            growth = self.memory.peak - self.memory.baseline
            case.check(growth < RSS_GROWTH_LIMIT_KIB or self.memory.peak == peak_before,
                       f"server RSS reached {self.memory.peak >> 10} MiB during this request "
                       f"(from {self.memory.baseline >> 10} MiB at start)")
            return reply

    def get(self, target: str | bytes, **options) -> Reply:
        return self.server.request("GET", target, **options)


def run(ctx: harness.Context) -> None:
    layout = Layout(ctx.scratch("security"))
    cap_mb = 48 if ctx.quick else 512
    server = Server(ctx, layout.workspace, layout.logs, cwd=layout.cwd,
                    extra_args=["--allow-dir", str(layout.allowed), "--max-upload-mb", str(cap_mb)],
                    env=ctx.env(TALKIE_TEST_ENGINE_LOG=str(layout.logs / "engine.log")))
    server.start()
    memory = Memory(server)
    try:
        probe = Probe(ctx, layout, server, memory)
        setup_controls(ctx, layout, server)
        traversal_cases(probe, layout, server)
        range_cases(probe, layout)
        host_cases(probe, layout, server)
        face2face_cases(probe, layout, server)
        upload_cases(probe, layout, server, cap_mb)
        workspace_symlink_cases(probe, layout, server)
        memory.close()
        ctx.note(f"server RSS: {memory.baseline >> 10} MiB at start, peak {memory.peak >> 10} MiB "
                 f"(uploads of up to {cap_mb} MiB, an endless one cut at the cap)")
        with ctx.case("memory after the uploads") as case:
            time.sleep(0.5)
            after = server.rss_kib()
            case.check(after - memory.baseline < RSS_GROWTH_LIMIT_KIB,
                       f"server RSS is {after >> 10} MiB after the uploads, from {memory.baseline >> 10} MiB")
    finally:
        memory.close()
        server.stop()
    if not ctx.out_of_time():
        token_cases(ctx, layout)
    leftovers = harness.wait_for_no_leftovers(ctx.tag, 10)
    if leftovers:
        ctx.failures.append(("leftovers", f"processes left behind: {leftovers}"))


def setup_controls(ctx: harness.Context, layout: Layout, server: Server) -> None:
    """What must work, so that the refusals mean something: the test engine, an upload,
    a face2face task on allowed files that renders."""
    reply = server.api("PUT", "/api/settings", {"engine": "test"})
    if reply.status != 200:
        raise RuntimeError(f"PUT /api/settings answered {reply.status}: {reply.body[:300]!r}")
    for kind, path in [("audio", layout.allowed / "ok.wav"), ("videos", layout.allowed / "ok.mp4")]:
        reply = server.upload(kind, path, path.name)
        if reply.status != 201:
            raise RuntimeError(f"uploading {path.name} answered {reply.status}: {reply.body[:300]!r}")
    layout.video_key = server.api("GET", "/api/state").json()["videos"][0]["key"]
    # One finished item, so that there is a history, a backup and a run log to aim at.
    reply = server.api("POST", "/api/batch/start")
    if reply.status != 202:
        raise RuntimeError(f"POST /api/batch/start answered {reply.status}: {reply.body[:300]!r}")
    if not wait_for(lambda: server.api("GET", "/api/state").json()["summary"]["succeeded"] == 1, 60, 0.2):
        raise RuntimeError(f"the control batch did not finish within 60 s: {server.api('GET', '/api/state').body[:500]!r}")
    reply = server.api("POST", "/easy/submit", {"audio_url": str(layout.allowed / "ok.wav"),
                                                "video_url": str(layout.allowed / "ok.mp4"), "code": "control"})
    if reply.status != 200 or reply.json().get("code") != 10000:
        raise RuntimeError(f"the face2face control was refused: {reply.status} {reply.body[:300]!r}")
    if not wait_for(lambda: server.api("GET", "/easy/query?code=control").json()["data"].get("status") in (2, 3), 60, 0.2):
        raise RuntimeError("the face2face control did not finish within 60 s")
    data = server.api("GET", "/easy/query?code=control").json()["data"]
    if data["status"] != 2:
        raise RuntimeError(f"the face2face control failed: {data}")


# ---------------------------------------------------------------------------------------
# Paths


def traversal_cases(probe: Probe, layout: Layout, server: Server) -> None:
    outside = str(layout.outside)
    up = "/".join([".."] * 12)  # enough to reach / from anywhere under /tmp
    enc = lambda text: quote(text, safe="")
    targets = [
        ("outputs ../ raw", "/api/outputs/../../outside/secret.mp4"),
        ("outputs ..%2f", "/api/outputs/..%2f..%2foutside%2fsecret.mp4"),
        ("outputs %2e%2e%2f", "/api/outputs/%2e%2e%2f%2e%2e%2foutside%2fsecret.mp4"),
        ("outputs double-encoded", "/api/outputs/%252e%252e%252f%252e%252e%252foutside%252fsecret.mp4"),
        ("outputs backslashes", "/api/outputs/..\\..\\outside\\secret.mp4"),
        ("outputs %5c", "/api/outputs/..%5c..%5coutside%5csecret.mp4"),
        ("outputs overlong utf-8", "/api/outputs/%c0%ae%c0%ae%c0%af%c0%ae%c0%ae%c0%afoutside%c0%afsecret.mp4"),
        ("outputs NUL", "/api/outputs/leak.mp4%00.png"),
        ("outputs NUL before suffix", "/api/outputs/..%2f..%2foutside%2fsecret.txt%00.mp4"),
        ("outputs absolute", "/api/outputs/" + enc(outside + "/secret.mp4")),
        ("outputs /etc/passwd", "/api/outputs/%2fetc%2fpasswd%00.mp4"),
        ("outputs symlink", "/api/outputs/leak.mp4"),
        ("outputs symlinked folder", "/api/outputs/leakdir%2fsecret.mp4"),
        ("outputs dot-dot name", "/api/outputs/.."),
        ("inputs video traversal", "/api/inputs/videos/..%2f..%2f..%2foutside%2fsecret.mp4"),
        ("inputs audio absolute", "/api/inputs/audio/" + enc(outside + "/secret.wav")),
        ("page ../ to the canary", "/" + up + outside + "/secret.txt"),
        ("page %2e%2e to /etc/passwd", "/" + "/".join(["%2e%2e"] * 12) + "/etc/passwd"),
        ("page ..%2f to the canary", "/" + "..%2f" * 12 + enc(outside.lstrip("/")) + "%2fsecret.txt"),
        ("page // absolute", "//etc/passwd"),
        ("page overlong utf-8", "/" + "%c0%ae%c0%ae%c0%af" * 12 + "etc%c0%afpasswd"),
        ("page backslashes", "/" + "..\\" * 12 + "etc\\passwd"),
    ]
    for label, target in targets:
        probe.case(label, lambda target=target: probe.get(target))
    probe.case("outputs symlink with Range", lambda: probe.get("/api/outputs/leak.mp4", headers={"Range": "bytes=0-40"}))

    def unknown_task(case, reply: Reply) -> None:
        case.check(reply.status == 200 and json.loads(reply.body or b"{}").get("code") == 10004,
                   f"answer {reply.status} {reply.body[:200]!r}, expected code 10004")

    probe.case("easy/query code traversal", lambda: probe.get("/easy/query?code=" + enc("../../outside/secret.txt")),
               expect=unknown_task, refused=False)


def range_cases(probe: Probe, layout: Layout) -> None:
    """Range tricks on a real file: no crash, nothing past the file's end, no canary."""
    size = (layout.workspace / "outputs" / "plain.mp4").stat().st_size

    def bounded(case, reply: Reply) -> None:
        case.check(reply.status in (200, 206, 416), f"status {reply.status or reply.error} for a Range on a real file")
        case.check(len(reply.body) <= size, f"{len(reply.body)} bytes served from a {size}-byte file")

    for label, header in [("range past the end", "bytes=99999999-"), ("range overflowing", "bytes=0-99999999999999999999999"),
                          ("range int64 max", "bytes=9223372036854775807-9223372036854775807"),
                          ("range negative suffix", "bytes=--5"), ("range reversed", f"bytes={size - 1}-3")]:
        probe.case(label, lambda header=header: probe.get("/api/outputs/plain.mp4", headers={"Range": header}),
                   expect=bounded, refused=False)


def host_cases(probe: Probe, layout: Layout, server: Server) -> None:
    """DNS rebinding: a page on a foreign name that resolves to 127.0.0.1."""
    port = server.port

    def forbidden(case, reply: Reply) -> None:
        case.check(reply.status == 403, f"status {reply.status}, expected 403 for a foreign Host")

    for label, host in [("host evil.example", "evil.example"), ("host evil.example:port", f"evil.example:{port}"),
                        ("host 127.0.0.1.nip.io", f"127.0.0.1.nip.io:{port}"), ("host localhost.evil", "localhost.evil.example")]:
        probe.case(label, lambda host=host: probe.get("/api/state", host_header=host), expect=forbidden)
    probe.case("host foreign on outputs.zip", lambda: probe.get("/api/outputs.zip", host_header="evil.example"), expect=forbidden)
    probe.case("host foreign on a WebSocket", lambda: websocket(server, host=f"evil.example:{port}"), expect=not_upgraded)

    def history_kept(case, reply: Reply) -> None:
        forbidden(case, reply)
        summary = server.api("GET", "/api/state").json()["summary"]
        case.check(summary["succeeded"] == 1, f"the history was cleared: {summary}")

    probe.case("host foreign clears history", lambda: server.request("POST", "/api/batch/reset", body=b'{"confirm": true}',
                                                                     headers={"Content-Type": "application/json"},
                                                                     host_header="evil.example"), expect=history_kept)


def face2face_cases(probe: Probe, layout: Layout, server: Server) -> None:
    """HeyGem's /easy/submit naming files outside the allowed folders: code 10002, and the
    task is never recorded (a query says 10004)."""
    ok_audio, ok_video = str(layout.allowed / "ok.wav"), str(layout.allowed / "ok.mp4")
    outside = layout.outside
    attempts = [
        ("f2f audio outside", str(outside / "secret.wav"), ok_video),
        ("f2f video /etc/passwd", ok_audio, "/etc/passwd"),
        ("f2f allowed/../outside", ok_audio, str(layout.allowed) + "/../outside/secret.mp4"),
        ("f2f symlink out of allowed", ok_audio, str(layout.allowed / "escape.mp4")),
        ("f2f audio symlink out of allowed", str(layout.allowed / "escape.wav"), ok_video),
        ("f2f symlinked folder in allowed", ok_audio, str(layout.allowed / "linkdir" / "secret.mp4")),
        ("f2f workspace symlink out", ok_audio, str(layout.workspace / "outputs" / "leak.mp4")),
        ("f2f sibling with the allowed prefix", ok_audio, str(layout.sibling / "secret.mp4")),
        ("f2f relative path", ok_audio, "../outside/secret.mp4"),
        ("f2f file:// URL", ok_audio, "file://" + str(outside / "secret.mp4")),
        ("f2f http URL", ok_audio, f"http://127.0.0.1:{server.port}/api/outputs/plain.mp4"),
        ("f2f NUL in path", ok_audio, ok_video + "\u0000/../../outside/secret.mp4"),
        ("f2f reused code, other files", str(outside / "secret.wav"), str(outside / "secret.mp4")),
    ]
    for index, (label, audio, video) in enumerate(attempts):
        code = "control" if "reused" in label else f"crafted-{index}"

        def refused_10002(case, reply: Reply, code=code) -> None:
            answer = json.loads(reply.body or b"{}")
            case.check(reply.status == 200 and answer.get("code") == 10002 and answer.get("success") is False,
                       f"answer {reply.status} {reply.body[:200]!r}, expected code 10002")
            query = server.api("GET", f"/easy/query?code={quote(code)}")
            for problem in layout.leaks(query):
                case.fail(f"query: {problem}")
            data = json.loads(query.body or b"{}")
            if code == "control":
                case.check(data.get("data", {}).get("status") == 2, f"the control task changed: {query.body[:300]!r}")
            else:
                case.check(data.get("code") == 10004, f"the refused task was recorded: {query.body[:300]!r}")

        probe.case(label, lambda audio=audio, video=video, code=code: server.api(
            "POST", "/easy/submit", {"audio_url": audio, "video_url": video, "code": code}),
            expect=refused_10002, refused=False)

    def stays_inside(case, reply: Reply) -> None:
        answer = json.loads(reply.body or b"{}")
        case.check(answer.get("code") == 10000, f"a submission of allowed files was refused: {reply.body[:200]!r}")
        finished = wait_for(lambda: json.loads(server.api("GET", "/easy/query?code=" + quote(code, safe="")).body or b"{}")
                            .get("data", {}).get("status") in (2, 3), 60, 0.2)
        case.check(finished, "the task did not finish within 60 s")
        result = json.loads(server.api("GET", "/easy/query?code=" + quote(code, safe="")).body)["data"].get("result", "")
        case.check(result.startswith(str(layout.workspace) + "/"), f"the task's output {result!r} is not in the workspace")

    code = "../../../cwd/pwned"
    probe.case("f2f code that is a path", lambda: server.api("POST", "/easy/submit", {
        "audio_url": ok_audio, "video_url": ok_video, "code": code}), expect=stays_inside, refused=False)


def websocket(server: Server, host: str | None = None, token_query: str | None = None, cookie: str | None = None,
              port: int | None = None) -> Reply:
    headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()}
    if cookie:
        headers["Cookie"] = cookie
    target = "/ws" + (f"?token={quote(token_query)}" if token_query is not None else "")
    return raw_request(server.connect_host, port or server.port, "GET", target, headers=headers,
                       host_header=host or f"{server.connect_host}:{server.port}", timeout=5)


def not_upgraded(case, reply: Reply) -> None:
    case.check(reply.status != 101, "the WebSocket upgrade was accepted")
    case.check(b'"snapshot"' not in reply.raw, "the refused socket received the state")


# ---------------------------------------------------------------------------------------
# Uploads


def upload_cases(probe: Probe, layout: Layout, server: Server, cap_mb: int) -> None:
    inputs = layout.workspace / "inputs"
    sample = (layout.allowed / "ok.mp4").read_bytes()

    def safe_label(case, reply: Reply) -> None:
        case.check(reply.status == 201, f"status {reply.status}: {reply.body[:200]!r}")
        if reply.status == 201:
            name = reply.json().get("name", "")
            case.check("/" not in name and "\\" not in name and "\0" not in name and not name.startswith("."),
                       f"the stored name {name!r} is a path")
        stored = {path.name for path in (inputs / "videos").iterdir()} | {path.name for path in (inputs / "audio").iterdir()}
        case.check(all(len(name.split(".")[0]) == 32 for name in stored), f"an input is stored under a client's name: {sorted(stored)}")
        if reply.status == 201 and reply.json()["key"] != layout.video_key:
            # Keeps the batch at its one template (a 404 for the narration's key is fine).
            server.api("DELETE", f"/api/inputs/videos/{reply.json()['key']}")

    names = [
        ("upload name ../ to /tmp", "../" * 12 + f"tmp/talkie-pwned-{layout.token}.mp4"),
        ("upload name ../ to the cwd", "../../../cwd/pwned.mp4"),
        ("upload name absolute", str(layout.outside / "pwned.mp4")),
        ("upload name backslashes", "..\\..\\..\\pwned.mp4"),
        ("upload name NUL", "pwned.mp4\u0000/../../../pwned.mp4"),
        ("upload name dot-dot", ".."),
        ("upload name with a folder suffix", "x.mp4/../../../../pwned.mp4"),
    ]
    for index, (label, name) in enumerate(names):
        body = sample + index.to_bytes(4, "big") + layout.token.encode()  # new content each time
        probe.case(label, lambda name=name, body=body: server.request(
            "POST", "/api/inputs/videos?name=" + quote(name, safe=""), body=body,
            headers={"Content-Type": "application/octet-stream"}), expect=safe_label, refused=False)
    probe.case("upload audio name ../", lambda: server.request(
        "POST", "/api/inputs/audio?name=" + quote("../../../cwd/pwned.wav", safe=""),
        body=(layout.allowed / "ok.wav").read_bytes(), headers={"Content-Type": "application/octet-stream"}),
        expect=safe_label, refused=False)
    # The narration must be the real one again for later cases.
    server.upload("audio", layout.allowed / "ok.wav", "ok.wav")

    manifest_before = (inputs / "manifest.json").read_bytes()

    def nothing_kept(case, reply: Reply) -> None:
        wait_for(lambda: not any((inputs / "uploads").iterdir()), 5)
        leftovers = [path.name for path in (inputs / "uploads").iterdir()]
        case.check(not leftovers, f"the refused upload left {leftovers} in inputs/uploads")
        case.check((inputs / "manifest.json").read_bytes() == manifest_before, "the refused upload changed the manifest")

    def answered_or_closed(case, reply: Reply) -> None:
        case.check(400 <= reply.status < 500 or (reply.status == 0 and reply.error != "timeout"),
                   f"no answer within 5 s and the connection stays open ({reply.status or reply.error})")
        nothing_kept(case, reply)

    def too_large(case, reply: Reply) -> None:
        case.check(reply.status == 413, f"status {reply.status or reply.error}, expected 413")
        nothing_kept(case, reply)

    cap = cap_mb << 20
    host = f"{server.connect_host}:{server.port}"
    probe.case("upload Content-Length over the cap", lambda: stream_upload(
        server.connect_host, server.port, "/api/inputs/videos?name=big.mp4", 1 << 20, host, chunked=False,
        content_length=str(cap + 1))[0], expect=too_large)
    probe.case("upload Content-Length 2^63", lambda: stream_upload(
        server.connect_host, server.port, "/api/inputs/videos?name=big.mp4", cap + (2 << 20), host, chunked=False,
        content_length=str(1 << 63), timeout=60)[0], expect=too_large)
    # Framing a parser refuses: the server must answer 400 or close, not hold the connection.
    probe.case("upload Content-Length negative", lambda: server.request(
        "POST", "/api/inputs/videos?name=neg.mp4", body=b"abc", headers={"Content-Length": "-3"}, timeout=5),
        expect=answered_or_closed, refused=False)
    probe.case("upload empty", lambda: server.request("POST", "/api/inputs/videos?name=empty.mp4", body=b""),
               expect=nothing_kept)

    sent_total = {}

    def endless(case, reply: Reply) -> None:
        sent = sent_total["sent"]
        case.check(sent < 3 * cap, f"the server took {sent >> 20} MiB of an endless upload (cap {cap_mb} MiB)")
        case.check(reply.status == 413, f"status {reply.status or reply.error}, expected 413")
        nothing_kept(case, reply)

    def send_endless() -> Reply:
        reply, sent_total["sent"] = stream_upload(server.connect_host, server.port, "/api/inputs/videos?name=endless.mp4",
                                                  3 * cap, host, chunked=True, timeout=120)
        return reply

    probe.case("upload endless chunked", send_endless, expect=endless)

    probe.case("upload audio streamed past the cap", lambda: stream_upload(
        server.connect_host, server.port, "/api/inputs/audio?name=over.wav", cap + (1 << 20), host, chunked=True,
        timeout=120)[0], expect=too_large)

    def accepted_big(case, reply: Reply) -> None:
        case.check(reply.status == 201, f"an upload under the cap answered {reply.status or reply.error}: {reply.body[:200]!r}")
        if reply.status == 201:
            key = reply.json()["key"]
            case.check(server.api("DELETE", f"/api/inputs/videos/{key}").status == 204, "the big upload could not be removed")

    # JSON endpoints collect their bodies: a big one must be refused, not buffered.
    probe.case("settings body of 64 MiB", lambda: stream_upload(
        server.connect_host, server.port, "/api/settings", 64 << 20, host, chunked=False,
        timeout=60, method="PUT")[0], expect=nothing_kept)
    probe.case("f2f submit body of 64 MiB", lambda: stream_upload(
        server.connect_host, server.port, "/easy/submit", 64 << 20, host, chunked=True, timeout=60)[0],
        expect=nothing_kept)

    probe.case("upload just under the cap", lambda: stream_upload(
        server.connect_host, server.port, "/api/inputs/videos?name=big.mp4", cap - (1 << 20), host, chunked=True,
        timeout=240)[0], expect=accepted_big, refused=False)


# ---------------------------------------------------------------------------------------
# Files inside the workspace that are symlinks pointing out


def workspace_symlink_cases(probe: Probe, layout: Layout, server: Server) -> None:
    outputs = layout.workspace / "outputs"
    video = layout.workspace / "inputs" / "videos" / f"{layout.video_key}.mp4"

    def swapped(path: Path, send):
        """Replaces `path` by a symlink to the canary for one request."""
        def run() -> Reply:
            saved = path.with_name(path.name + ".saved")
            had = path.exists()
            if had:
                path.rename(saved)
            path.symlink_to(layout.outside / "secret.txt")
            try:
                return send()
            finally:
                path.unlink()
                if had:
                    saved.rename(path)
        return run

    probe.case("uploaded input replaced by a symlink", swapped(video, lambda: probe.get(f"/api/inputs/videos/{layout.video_key}")))
    probe.case("backup is a symlink", swapped(outputs / "task_status.json", lambda: probe.get("/api/backup")))
    probe.case("run log is a symlink: read", swapped(outputs / "talkie.log", lambda: probe.get("/api/log?lines=50")),
               expect=lambda case, reply: None, refused=False)

    def run_batch() -> Reply:
        reply = server.api("POST", "/api/batch/start")
        time.sleep(1)
        wait_for(lambda: not server.api("GET", "/api/state").json()["running"], 30, 0.1)
        return reply

    def started(case, reply: Reply) -> None:
        case.check(reply.status == 202, f"the batch did not start: {reply.status} {reply.body[:200]!r}")

    probe.case("run log is a symlink: a batch appends", swapped(outputs / "talkie.log", run_batch),
               expect=started, refused=False)


# ---------------------------------------------------------------------------------------
# A server off loopback: the token


def token_cases(ctx: harness.Context, layout: Layout) -> None:
    """A server bound to 0.0.0.0 without --token generates one; nothing works without it."""
    workspace = layout.remote_workspace
    server = Server(ctx, workspace, layout.logs, host="0.0.0.0", port=free_port("0.0.0.0"), cwd=layout.cwd)
    server.start()
    memory = Memory(server)
    try:
        banner = server.stdout_path.read_text()
        token = banner.split("?token=", 1)[1].split()[0] if "?token=" in banner else ""
        with ctx.case("a token is generated off loopback") as case:
            case.require(len(token) >= 16, f"no token in the banner: {banner!r}")
            case.check(server.api("GET", "/api/state", token=token).status == 200, "the right token is refused")
            case.check(websocket(server, token_query=token).status == 101, "a WebSocket with the right token is refused")
        if not token:
            return
        probe = Probe(ctx, layout, server, memory)

        def unauthorized(case, reply: Reply) -> None:
            case.check(reply.status == 401, f"status {reply.status}, expected 401")

        wrong = secrets.token_hex(16)
        cases = [
            ("no token", lambda: server.request("GET", "/api/state")),
            ("wrong bearer", lambda: server.request("GET", "/api/state", headers={"Authorization": f"Bearer {wrong}"})),
            ("wrong cookie", lambda: server.request("GET", "/api/state", headers={"Cookie": f"talkie_token={wrong}"})),
            ("wrong query", lambda: server.request("GET", f"/api/state?token={wrong}")),
            ("token prefix", lambda: server.request("GET", "/api/state", headers={"Authorization": f"Bearer {token[:-1]}"})),
            ("token plus a byte", lambda: server.request("GET", "/api/state", headers={"Authorization": f"Bearer {token}x"})),
            ("empty token", lambda: server.request("GET", "/api/state?token=")),
            ("token as basic auth", lambda: server.request("GET", "/api/state", headers={
                "Authorization": "Basic " + base64.b64encode(f"talkie:{token}".encode()).decode()})),
            ("no token: the page", lambda: server.request("GET", "/")),
            ("no token: outputs.zip", lambda: server.request("GET", "/api/outputs.zip")),
            ("no token: start", lambda: server.request("POST", "/api/batch/start", body=b"")),
            ("no token: settings", lambda: server.request("PUT", "/api/settings", body=b'{"engine": "test"}',
                                                          headers={"Content-Type": "application/json"})),
            ("no token: face2face submit", lambda: server.request("POST", "/easy/submit", body=json.dumps({
                "audio_url": str(workspace / "a.wav"), "video_url": str(workspace / "v.mp4"), "code": "x"}).encode())),
        ]
        for label, send in cases:
            probe.case(f"remote {label}", send, expect=unauthorized)

        def nothing_stored(case, reply: Reply) -> None:
            unauthorized(case, reply)
            stored = [path.name for folder in ["videos", "uploads", "audio"]
                      for path in (workspace / "inputs" / folder).iterdir()]
            case.check(not stored, f"an upload without the token was stored: {stored}")

        probe.case("remote no token: upload", lambda: server.request(
            "POST", "/api/inputs/videos?name=a.mp4", body=(layout.allowed / "ok.mp4").read_bytes()), expect=nothing_stored)

        probe.case("remote WebSocket without token", lambda: websocket(server), expect=not_upgraded)
        probe.case("remote WebSocket wrong token", lambda: websocket(server, token_query=wrong), expect=not_upgraded)
        probe.case("remote WebSocket wrong cookie", lambda: websocket(server, cookie=f"talkie_token={wrong}"),
                   expect=not_upgraded)
        settings = workspace / "settings.json"
        with ctx.case("remote: nothing changed without the token") as case:
            case.check(not settings.exists(), "settings were written by a request without the token")
            state = server.api("GET", "/api/state", token=token).json()
            case.check(state["audio"] is None and not state["videos"] and not state["running"],
                       f"the state changed: {json.dumps(state)[:300]}")
    finally:
        memory.close()
        server.stop()
