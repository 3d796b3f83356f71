"""Cluster mode (issue 8) end to end: real `talkie worker` processes claim the items of a batch
from a real PostgreSQL under leases, render them with the test engine, and commit with the
lease token. Each test runs on a database of its own and checks the outcome in the database
(`talkie status --store URL --json`) and in the test engine's render logs (one per worker):
every item ends where it should, and was rendered as often as the faults allow, no more.

Needs $TALKIE_TEST_POSTGRES (scripts/test.sh starts scripts/postgres.sh's private instance and
sets it; the suite is skipped without it) and a talkie binary with the cluster commands
($TALKIE_BINARY, else bin/talkie). Run:
    scripts/postgres.sh start
    TALKIE_TEST_POSTGRES=$(scripts/postgres.sh url) .venv/bin/python -m pytest -q tests/cluster
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import time

import pytest

from cluster_support import (  # noqa: F401  (fixtures are found by name)
    POSTGRES_URL, REPO, Cluster, attempts_of, cluster, harness, items_by_key, media, private_instance, psql,
    status_of, summary, talkie_worker_binary)

pytestmark = pytest.mark.skipif(
    not POSTGRES_URL,
    reason="TALKIE_TEST_POSTGRES is not set: the cluster tests need a PostgreSQL server "
           "(scripts/postgres.sh start; export TALKIE_TEST_POSTGRES=$(scripts/postgres.sh url))")


def all_done(state: dict, count: int) -> bool:
    items = state.get("items", [])
    return len(items) == count and all(status_of(item) in ("success", "failed") for item in items)


def running(state: dict) -> list[dict]:
    return [item for item in state.get("items", []) if status_of(item) == "running"]


def check_follower(process, expected: int) -> None:
    """A `talkie run --store` / `retry --store` that followed the batch to its end: the exit
    status says how the batch ended (0 all succeeded, 1 some failed), not that it crashed."""
    code = process.popen.returncode
    assert code == expected, f"{process.describe()} exited {code}, expected {expected}\n{process.output()}"
    assert "Error:" not in process.stderr(), f"{process.describe()} ended with an error\n{process.output()}"


def check_outputs(cluster: Cluster, state: dict) -> None:
    """Every success has its own valid output file, carrying its item key."""
    outputs = [(item.get("state") or {}).get("output") for item in state["items"] if status_of(item) == "success"]
    assert len(set(outputs)) == len(outputs), f"two successes share an output: {outputs}"
    problems = harness.output_problems(cluster.out, state)
    assert not problems, "outputs:\n" + "\n".join(problems)


# ---------------------------------------------------------------------------------------
# a. Many workers: every item exactly once


def test_items_complete_exactly_once_over_three_workers(cluster: Cluster):
    templates = cluster.media.templates
    cluster.queue()
    workers = [cluster.worker(f"w{index}", delay=0.1) for index in range(1, 4)]
    for worker in workers:
        code = worker.wait(timeout=150)
        assert code == 0, f"{worker.describe()} exited {code}\n{worker.output()}"

    state = cluster.status()
    items = items_by_key(state)
    assert len(items) == len(templates), f"{len(items)} items for {len(templates)} templates\n{summary(state)}"
    not_done = {key[:12]: status_of(item) for key, item in items.items() if status_of(item) != "success"}
    assert not not_done, f"items not successful once every worker exited: {not_done}\n{summary(state)}"
    assert all(attempts_of(item) == 1 for item in items.values()), f"an item took more than one attempt\n{summary(state)}"
    leased = [key[:12] for key, item in items.items() if item.get("lease")]
    assert not leased, f"finished items still hold a lease: {leased}\n{summary(state)}"

    renders = cluster.renders()
    twice = {key[:12]: count for key, count in renders.items() if count != 1}
    assert not twice, f"items rendered more than once: {twice}"
    assert set(renders) == set(items), (f"rendered {len(renders)} items, the batch has {len(items)}: "
                                        f"unknown {sorted(k[:12] for k in set(renders) - set(items))}, "
                                        f"never rendered {sorted(k[:12] for k in set(items) - set(renders))}")
    per_worker = {name: sum(counts.values()) for name, counts in cluster.renders_by_worker().items()}
    assert all(per_worker.get(worker.name, 0) >= 1 for worker in workers), (
        f"renders per worker {per_worker}: a worker rendered nothing, the items did not spread")
    check_outputs(cluster, state)
    # The contract's item shape has "device": where the item was rendered.
    unplaced = [key[:12] for key, item in items.items() if not item.get("device")]
    assert not unplaced, f"successful items whose status does not say where they were rendered (no \"device\"): {unplaced}"


# ---------------------------------------------------------------------------------------
# b. A worker killed mid-render: its item is reclaimed once the lease expires


def test_killed_worker_item_is_reclaimed_after_its_lease(cluster: Cluster):
    templates = cluster.media.templates[:4]
    cluster.queue(templates, "--lease-seconds", "3")
    doomed = cluster.worker("doomed", delay=0.3)   # three seconds per item: killed in the middle
    counts = cluster.wait_renders(1, seconds=60, worker="doomed")
    (victim,) = counts
    doomed.signal_all(signal.SIGKILL)
    doomed.wait(timeout=10)
    killed_at = time.monotonic()

    # Still claimed by the dead worker until its lease runs out: nobody steals it early.
    state = cluster.status()
    item = items_by_key(state)[victim]
    if time.monotonic() - killed_at < 1.5:
        assert status_of(item) == "running" and item.get("lease"), (
            f"the killed worker's item is no longer running under its lease right after the kill\n{summary(state)}")
        assert "doomed" in str(item["lease"].get("owner")), f"lease owner {item['lease'].get('owner')!r}, expected the killed worker"

    rescuer = cluster.worker("rescuer", delay=0.05)
    code = rescuer.wait(timeout=90)
    assert code == 0, f"the second worker exited {code}\n{rescuer.output()}"

    state = cluster.status()
    items = items_by_key(state)
    assert len(items) == 4 and all(status_of(item) == "success" for item in items.values()), summary(state)
    assert attempts_of(items[victim]) == 2, f"the reclaimed item has {attempts_of(items[victim])} attempts, expected 2\n{summary(state)}"
    others = {key[:12]: attempts_of(item) for key, item in items.items() if key != victim and attempts_of(item) != 1}
    assert not others, f"items the kill did not touch took other than one attempt: {others}"

    renders = cluster.renders()
    assert renders[victim] == 2, f"the killed worker's item was rendered {renders[victim]} times, expected 2"
    again = {key[:12]: count for key, count in renders.items() if key != victim and count != 1}
    assert not again, f"other items rendered other than once: {again}"
    assert harness.render_counts(cluster.render_log("rescuer"))[victim] == 1, "the rescuer did not render the reclaimed item"
    check_outputs(cluster, state)


# ---------------------------------------------------------------------------------------
# c. A worker frozen past its lease: its late commit changes nothing


def test_frozen_worker_late_commit_changes_nothing(cluster: Cluster):
    template = cluster.media.templates[:1]
    cluster.queue(template, "--lease-seconds", "3")
    frozen = cluster.worker("frozen", delay=0.3)
    (key,) = cluster.wait_renders(1, seconds=60, worker="frozen")
    frozen.signal_all(signal.SIGSTOP)

    rerun = cluster.worker("rerun", delay=0.05)
    code = rerun.wait(timeout=90)
    assert code == 0, f"the second worker exited {code}\n{rerun.output()}"
    before = items_by_key(cluster.status())[key]
    assert status_of(before) == "success" and attempts_of(before) == 2, (
        f"after the re-run: {status_of(before)}, {attempts_of(before)} attempts (expected success, 2)\n{summary(cluster.last_state)}")
    output = cluster.out / before["state"]["output"]
    assert output.is_file(), f"the re-run's output {output} is missing"
    file_before = output.stat()

    frozen.signal_all(signal.SIGCONT)
    code = frozen.wait(timeout=60)   # it wakes, finds its lease gone, and gives the item up
    assert code == 0, f"the frozen worker, woken past its lease, exited {code} (expected a quiet 0)\n{frozen.output()}"

    after = items_by_key(cluster.status())[key]
    assert after["state"] == before["state"], f"the late commit changed the item:\nbefore {before['state']}\nafter  {after['state']}"
    assert after.get("lease") == before.get("lease"), f"the lease changed: {before.get('lease')} -> {after.get('lease')}"
    file_after = output.stat()
    assert (file_after.st_ino, file_after.st_mtime_ns, file_after.st_size) == (
        file_before.st_ino, file_before.st_mtime_ns, file_before.st_size), "the late worker replaced the committed output file"
    renders = cluster.renders_by_worker()
    assert renders.get("frozen", {}).get(key) == 1 and renders.get("rerun", {}).get(key) == 1, f"renders {renders}"
    check_outputs(cluster, cluster.status())


# ---------------------------------------------------------------------------------------
# d. The database restarted mid-batch: at-least-once, nothing lost, workers survive


def test_database_restart_mid_batch(cluster: Cluster):
    if not private_instance():
        pytest.skip("restarts the database: needs $TALKIE_TEST_POSTGRES to be scripts/postgres.sh's running instance")
    templates = cluster.media.templates[:8]
    cluster.queue(templates, "--lease-seconds", "6")
    workers = [cluster.worker(f"w{index}", delay=0.1) for index in (1, 2)]
    cluster.wait_renders(2, seconds=60)
    restart = subprocess.run([str(REPO / "scripts" / "postgres.sh"), "restart"], capture_output=True, text=True, timeout=120)
    assert restart.returncode == 0, f"scripts/postgres.sh restart failed: {restart.stderr}"
    dead = [worker.describe() for worker in workers if not worker.alive() and worker.popen.returncode != 0]
    assert not dead, f"workers died with the database restart: {dead}\n{cluster.outputs()}"
    for worker in workers:
        code = worker.wait(timeout=150)
        assert code == 0, f"{worker.describe()} exited {code} after the database restart\n{worker.output()}"

    state = cluster.status()
    items = items_by_key(state)
    assert len(items) == 8, f"{len(items)} items, expected 8\n{summary(state)}"
    lost = {key[:12]: status_of(item) for key, item in items.items() if status_of(item) != "success"}
    assert not lost, f"items not successful after the restart: {lost}\n{summary(state)}"
    renders = cluster.renders()
    assert set(renders) == set(items), "some items were never rendered"
    over = {key[:12]: count for key, count in renders.items() if count > 2}
    assert not over, f"items rendered more than twice across one database restart: {over}"
    check_outputs(cluster, state)


# ---------------------------------------------------------------------------------------
# e. Two workers racing for the last item


def test_two_workers_race_for_one_item(cluster: Cluster):
    for round_number, template in enumerate(cluster.media.templates[:3], start=1):
        store = cluster.store if round_number == 1 else cluster.new_database()
        out = cluster.out / f"round-{round_number}"
        follower = cluster.start(f"follower-{round_number}", [
            "run", "--store", store, "--out", str(out), "--audio", str(cluster.media.audio), "--videos", str(template),
            "--engine", "test", "--json"])
        # Workers that find no batch exit at once (--exit-when-idle): start them once it is recorded.
        cluster.wait_status(lambda state: bool(state.get("batch")) and len(state.get("items", [])) == 1, 60,
                            "the batch was not queued", store=store)
        racers = [cluster.worker(f"race{round_number}{side}", store=store) for side in "ab"]
        for racer in racers:
            code = racer.wait(timeout=60)
            assert code == 0, f"{racer.describe()} exited {code}\n{racer.output()}"
        follower.wait(timeout=60)
        check_follower(follower, 0)
        events = []
        for line in follower.stdout().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                raise AssertionError(f"`run --store --json` printed a line that is not JSON: {line!r}") from None
        last = events[-1] if events else {}
        assert last.get("event", last.get("type")) in ("batch_finished", "batchFinished"), (
            f"`run --store --json` did not end with the batch's end (as a local run --json does): {last}")

        (item,) = cluster.status(store)["items"]
        assert status_of(item) == "success" and attempts_of(item) == 1, f"round {round_number}: {item['state']}"
        counts = {name: counts[item["key"]] for name, counts in cluster.renders_by_worker().items()
                  if name.startswith(f"race{round_number}")}
        assert sum(counts.values()) == 1, f"round {round_number}: the one item was rendered {counts} (exactly once expected)"


# ---------------------------------------------------------------------------------------
# f. A worker refuses a database whose schema is not its own


def test_worker_refuses_a_newer_schema(cluster: Cluster):
    migrate = cluster.talkie("store", "migrate", "--store", cluster.store)
    assert migrate.returncode == 0, f"`talkie store migrate` exited {migrate.returncode}: {migrate.stderr}"
    assert re.search(r"schema \d+", migrate.stdout), f"`talkie store migrate` printed {migrate.stdout!r}, expected 'schema N'"
    psql(cluster.store, "UPDATE talkie_schema SET version = 999")

    worker = cluster.worker("too-old", exit_when_idle=True)
    code = worker.wait(timeout=60)
    assert code == 2, f"a worker on a database of schema 999 exited {code}, expected 2\n{worker.output()}"
    assert "schema" in worker.stderr().lower(), f"the refusal does not mention the schema: {worker.stderr()[-500:]!r}"
    assert psql(cluster.store, "SELECT version FROM talkie_schema") == "999", "the refusing worker changed the schema version"


# ---------------------------------------------------------------------------------------
# g. pause, stop, retry across the cluster


def test_pause_lets_workers_finish_their_item_and_claim_no_more(cluster: Cluster):
    templates = cluster.media.templates[:6]
    cluster.queue(templates, "--lease-seconds", "3")
    workers = [cluster.worker(f"w{index}", delay=0.2, exit_when_idle=False) for index in (1, 2)]
    cluster.wait_status(lambda state: len(running(state)) == 2, 60, "two items running")

    paused = cluster.talkie("pause", "--store", cluster.store)
    assert paused.returncode == 0, f"`talkie pause` exited {paused.returncode}: {paused.stderr}"
    rendered_at_pause = set(cluster.renders())
    claimed = {item["key"] for item in running(cluster.status())}

    state = cluster.wait_status(lambda state: not running(state), 30, "the running items did not finish after pause")
    time.sleep(3)   # several claim rounds: a paused worker must not take anything
    state = cluster.status()
    items = items_by_key(state)
    assert not running(state), f"an item was claimed while paused\n{summary(state)}"
    unfinished = {key[:12]: status_of(items[key]) for key in claimed if status_of(items[key]) != "success"}
    assert not unfinished, f"items running at the pause did not finish: {unfinished}\n{summary(state)}"
    late = set(cluster.renders()) - rendered_at_pause - claimed
    assert not late, f"items rendered after the pause: {[key[:12] for key in late]}\n{summary(state)}"
    pending = [key for key, item in items.items() if status_of(item) == "pending"]
    assert pending, f"nothing left pending: the test did not pause in time\n{summary(state)}"
    assert all(worker.alive() for worker in workers), "a worker exited on pause\n" + cluster.outputs()

    cluster.queue(templates)   # `talkie run --store` un-pauses
    state = cluster.wait_status(lambda state: all(status_of(item) == "success" for item in state["items"]), 90,
                                "the batch did not finish after un-pausing")
    assert all(count == 1 for count in cluster.renders().values()), f"renders {dict(cluster.renders())}"
    check_outputs(cluster, state)


def test_stop_returns_running_items_to_pending(cluster: Cluster):
    templates = cluster.media.templates[:4]
    cluster.queue(templates, "--lease-seconds", "3")
    # Five seconds per item: a stopped item cannot have finished by itself meanwhile.
    workers = [cluster.worker(f"w{index}", delay=0.5, exit_when_idle=False) for index in (1, 2)]
    state = cluster.wait_status(lambda state: len(running(state)) == 2, 60, "two items running")
    cluster.wait_renders(2, seconds=30)

    stopped = cluster.talkie("stop", "--store", cluster.store)
    assert stopped.returncode == 0, f"`talkie stop` exited {stopped.returncode}: {stopped.stderr}"
    was_running = {item["key"] for item in running(cluster.status())} | {item["key"] for item in running(state)}
    state = cluster.wait_status(lambda state: not running(state), 15, "running items did not stop")
    items = items_by_key(state)
    wrong = {key[:12]: (status_of(items[key]), attempts_of(items[key])) for key in was_running
             if (status_of(items[key]), attempts_of(items[key])) != ("pending", 0)}
    assert not wrong, f"stopped items are not pending with the attempt uncharged: {wrong}\n{summary(state)}"
    renders_at_stop = cluster.renders()
    time.sleep(3)   # the cluster is paused by stop: nobody claims
    state = cluster.status()
    assert not running(state) and cluster.renders() == renders_at_stop, f"an item was claimed after stop\n{summary(state)}"
    assert all(worker.alive() for worker in workers), "a worker exited on stop\n" + cluster.outputs()

    cluster.queue(templates)
    state = cluster.wait_status(lambda state: all(status_of(item) == "success" for item in state["items"]), 90,
                                "the batch did not finish after stop and run")
    items = items_by_key(state)
    renders = cluster.renders()
    for key in items:
        expected = 2 if key in was_running else 1
        assert renders[key] == expected, f"{key[:12]} rendered {renders[key]} times, expected {expected}"
        assert attempts_of(items[key]) == 1, f"{key[:12]} has {attempts_of(items[key])} attempts, expected 1 (stops are not charged)"
    check_outputs(cluster, state)


def test_retry_failed_renders_the_failed_item_again(cluster: Cluster):
    videos = [*cluster.media.templates[:3], cluster.media.failing]
    run_args = cluster.run_args(videos)
    first = cluster.start("run-1", run_args)
    cluster.wait_status(lambda state: bool(state.get("batch")) and len(state.get("items", [])) == 4, 60,
                        "the batch was not queued")
    for worker in [cluster.worker(f"w{index}") for index in (1, 2)]:
        code = worker.wait(timeout=90)
        assert code == 0, f"{worker.describe()} exited {code}\n{worker.output()}"
    first.wait(timeout=60)
    check_follower(first, 1)   # one item failed
    state = cluster.status()
    failed = [item for item in state["items"] if status_of(item) == "failed"]
    assert len(failed) == 1, f"expected exactly the no-face template to fail\n{summary(state)}"
    failed_key = failed[0]["key"]
    assert (failed[0]["state"].get("lastError") or {}).get("kind") == "input", f"its error: {failed[0]['state']}"
    assert cluster.renders()[failed_key] == 1, "an input failure was retried automatically"

    retry = cluster.start("retry", ["retry", "--failed", "--store", cluster.store, "--out", str(cluster.out)])
    cluster.wait_status(lambda state: status_of(items_by_key(state)[failed_key]) == "pending", 60,
                        "retry --failed did not return the failed item to pending")
    worker = cluster.worker("w3")
    code = worker.wait(timeout=90)
    assert code == 0, f"{worker.describe()} exited {code}\n{worker.output()}"
    retry.wait(timeout=60)
    check_follower(retry, 1)   # the item failed again
    state = cluster.status()
    items = items_by_key(state)
    renders = cluster.renders()
    assert renders[failed_key] == 2, f"the failed item was rendered {renders[failed_key]} times, expected 2 (once more on retry)"
    assert status_of(items[failed_key]) == "failed" and attempts_of(items[failed_key]) == 1, (
        f"after the retry: {items[failed_key]['state']} (expected failed with fresh attempts: 1)")
    others = {key[:12]: count for key, count in renders.items() if key != failed_key and count != 1}
    assert not others, f"retry --failed rendered successes again: {others}"
    assert all(status_of(item) == "success" for key, item in items.items() if key != failed_key), summary(state)


def test_sigterm_returns_the_workers_item_to_pending(cluster: Cluster):
    cluster.queue(cluster.media.templates[:1], "--lease-seconds", "3")
    worker = cluster.worker("terminated", delay=0.4, exit_when_idle=False)
    (key,) = cluster.wait_renders(1, seconds=60, worker="terminated")
    worker.popen.send_signal(signal.SIGTERM)
    code = worker.wait(timeout=30)
    assert code == 3, f"a worker ended by SIGTERM mid-item exited {code}, expected 3\n{worker.output()}"
    item = items_by_key(cluster.status())[key]
    assert (status_of(item), attempts_of(item), item.get("lease")) == ("pending", 0, None), (
        f"after SIGTERM: {item['state']}, lease {item.get('lease')} (expected pending, 0 attempts, no lease)")


# ---------------------------------------------------------------------------------------
# h. export and import


def comparable(state: dict) -> dict[str, tuple]:
    """What must survive export and import: per key, names, status, attempts, output, error kind."""
    return {item["key"]: (sorted(item.get("names") or []), status_of(item), attempts_of(item),
                          (item.get("state") or {}).get("output"),
                          ((item.get("state") or {}).get("lastError") or {}).get("kind"))
            for item in state.get("items", [])}


def test_export_and_import_round_trip(cluster: Cluster):
    videos = [*cluster.media.templates[:3], cluster.media.failing]
    cluster.queue(videos)
    for worker in [cluster.worker(f"w{index}") for index in (1, 2)]:
        code = worker.wait(timeout=90)
        assert code == 0, f"{worker.describe()} exited {code}\n{worker.output()}"
    original = cluster.status()
    assert sorted(status_of(item) for item in original["items"]) == ["failed", "success", "success", "success"], summary(original)

    exported = cluster.folder / "exported"
    result = cluster.talkie("store", "export", "--store", cluster.store, "--out", str(exported))
    assert result.returncode == 0, f"`talkie store export` exited {result.returncode}: {result.stderr}"
    local = cluster.talkie("status", "--out", str(exported), "--json")
    assert local.returncode == 0, f"`talkie status --out EXPORTED --json` exited {local.returncode}: {local.stderr}"
    local_state = json.loads(local.stdout)
    assert comparable(local_state) == comparable(original), (
        f"the export differs from the database:\ndatabase {comparable(original)}\nexport   {comparable(local_state)}")
    if original.get("batch") and local_state.get("batch"):
        assert local_state["batch"].get("audio") == original["batch"].get("audio"), "the export lost the batch's narration"

    second = cluster.new_database()
    result = cluster.talkie("store", "import", "--store", second, "--out", str(exported))
    assert result.returncode == 0, f"`talkie store import` exited {result.returncode}: {result.stderr}"
    imported = cluster.status(second)
    assert comparable(imported) == comparable(original), (
        f"the import differs from the original database:\noriginal {comparable(original)}\nimported {comparable(imported)}")
    assert not any(item.get("lease") for item in imported["items"]), "imported items carry leases"
