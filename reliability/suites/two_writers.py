"""Two writers on one workspace: a second run, server, retry or reset on a folder that
another talkie holds must refuse with a clear message and change nothing, and the holder
must finish as if alone."""
from __future__ import annotations

import socket
import subprocess

from .. import harness
from .studio_client import free_port

TITLE = "a second writer on a workspace in use is refused"
BUDGET = (90, 240)


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([harness.talkie_bin(), *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, text=True, errors="replace", start_new_session=True)


def serving(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def check_refused(case: harness.Case, result: subprocess.CompletedProcess, what: str) -> None:
    case.check(result.returncode == 2, f"{what}: exit {result.returncode}, expected 2 (unusable workspace)")
    message = (result.stderr + result.stdout).lower()
    case.check("in use" in message or "lock" in message or "another" in message,
               f"{what}: the refusal does not say the folder is in use: {result.stderr.strip()[:300]!r}")
    case.check("pid" in message or any(char.isdigit() for char in message),
               f"{what}: the refusal does not name the holder: {result.stderr.strip()[:300]!r}")


def run(ctx: harness.Context) -> None:
    # A slow CLI run holds the folder; every other writer is refused while it renders.
    second_writers = [
        ("run", lambda b: b.run_args()),
        ("run continuing", lambda b: ["run", "--out", str(b.out)]),
        ("retry", lambda b: ["retry", "--out", str(b.out), "--failed"]),
        ("reset", lambda b: ["reset", "--out", str(b.out), "--yes"]),
    ]
    for label, make_args in second_writers:
        if ctx.out_of_time():
            break
        with ctx.case(f"cli run + {label}") as case:
            batch = harness.small_batch(ctx.scratch(label), count=2)
            env = batch.env(ctx, TALKIE_TEST_ENGINE_DELAY="0.2")
            holder = start(batch.run_args(), env)
            try:
                case.require(harness.wait_for(lambda: harness.render_counts(batch.engine_log)), "the first run never started rendering")
                second = harness.run_talkie(make_args(batch), env=env, timeout=60)
                check_refused(case, second, label)
                stdout, stderr = holder.communicate(timeout=120)
                case.check(holder.returncode == 0, f"the first run ended {holder.returncode}: {stderr[-300:]}")
            finally:
                if holder.poll() is None:
                    holder.kill()
                    holder.wait()
            for problem in harness.Ledger(batch).all_done(env=env, expected=2):
                case.fail(problem)
            counts = harness.render_counts(batch.engine_log)
            case.check(all(count == 1 for count in counts.values()) and len(counts) == 2,
                       f"renders {dict(counts)}: the refused writer rendered something")

    # A server holds its workspace: a CLI run on its outputs and a second server are refused.
    for label in ["cli run on a served workspace", "second server"]:
        if ctx.out_of_time():
            break
        with ctx.case(label) as case:
            folder = ctx.scratch(label)
            workspace = folder / "studio"
            env = ctx.env()
            port = free_port()
            server = start(["serve", "--workspace", str(workspace), "--port", str(port)], env)
            try:
                case.require(harness.wait_for(lambda: serving(port)), f"the server did not start: {server.stderr.read() if server.poll() is not None else ''}")
                if label == "second server":
                    second = harness.run_talkie(["serve", "--workspace", str(workspace), "--port", str(free_port())],
                                                env=env, timeout=30)
                else:
                    batch = harness.small_batch(folder / "media", count=1)
                    second = harness.run_talkie(["run", "--audio", str(batch.audio), "--videos", str(batch.videos),
                                                 "--out", str(workspace / "outputs"), "--engine", "test"], env=env, timeout=60)
                check_refused(case, second, label)
                case.check(server.poll() is None and serving(port), "the first server went down")
            finally:
                server.terminate()
                try:
                    server.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()
                    case.fail("the first server did not stop on SIGTERM within 20 s")

    # Once the holder is gone (even killed), the folder is free again.
    if not ctx.out_of_time():
        with ctx.case("lock freed by a killed holder") as case:
            batch = harness.small_batch(ctx.scratch("freed"), count=1)
            env = batch.env(ctx, TALKIE_TEST_ENGINE_DELAY="0.3")
            holder = start(batch.run_args(), env)
            harness.wait_for(lambda: harness.render_counts(batch.engine_log))
            holder.kill()
            holder.wait()
            env = batch.env(ctx)
            again = harness.run_talkie(batch.run_args(), env=env, timeout=120)
            case.check(again.returncode == 0, f"the run after a killed holder exited {again.returncode}: {again.stderr[-300:]}")
            for problem in harness.Ledger(batch).all_done(env=env, expected=1):
                case.fail(problem)
    leftovers = harness.wait_for_no_leftovers(ctx.tag)
    if leftovers:
        ctx.failures.append(("leftovers", f"processes left behind: {leftovers}"))
