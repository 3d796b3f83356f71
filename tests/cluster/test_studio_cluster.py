"""The studio in cluster mode (issue 8) end to end, real processes only: `talkie serve --store
URL` queues the page's batch in PostgreSQL and renders nothing itself; `talkie worker --store`
processes render it; the studio LISTENs to the cluster's NOTIFY events and passes every one of
them (whoever caused it: workers, CLI commands) to the pages on /ws, and GET /api/state shows
the database's items. Each test has its own database and workspace (cluster_support.py).

    scripts/postgres.sh start
    TALKIE_TEST_POSTGRES=$(scripts/postgres.sh url) .venv/bin/python -m pytest -q tests/cluster/test_studio_cluster.py
"""
from __future__ import annotations

import time

import pytest

from cluster_support import (  # noqa: F401  (fixtures are found by name)
    POSTGRES_URL, Cluster, Page, Studio, attempts_of, cluster, harness, items_by_key, media, status_of, summary,
    talkie_worker_binary)

pytestmark = pytest.mark.skipif(
    not POSTGRES_URL,
    reason="TALKIE_TEST_POSTGRES is not set: the cluster tests need a PostgreSQL server "
           "(scripts/postgres.sh start; export TALKIE_TEST_POSTGRES=$(scripts/postgres.sh url))")


def event_keys(page: Page, name: str) -> set[str]:
    return {event.get("key") for event in page.events(name)}


def last_summary(page: Page) -> dict:
    snapshots = page.snapshots()
    return (snapshots[-1].get("summary") or {}) if snapshots else {}


def running(state: dict) -> list[dict]:
    return [item for item in state.get("items", []) if status_of(item) == "running"]


def upload_batch(studio: Studio, cluster: Cluster, templates) -> set[str]:
    """The narration and the templates uploaded through the API, the test engine chosen; the
    keys of the batch's items (all pending)."""
    studio.upload("audio", cluster.media.audio, "narration.wav")
    for template in templates:
        studio.upload("videos", template, template.name)
    studio.api("PUT", "/api/settings", {"engine": "test"}, expect=(200,))
    state = studio.state()
    keys = {item["key"] for item in state["items"]}
    assert len(keys) == len(templates), f"{len(keys)} items for {len(templates)} uploaded templates: {state['items']}"
    assert all(item["status"] == "pending" for item in state["items"]), f"a new item is not pending: {state['items']}"
    return keys


def wait_queued(cluster: Cluster, keys: set[str]) -> dict:
    """Until the studio's batch is in the database (a worker started with --exit-when-idle
    before that would leave at once)."""
    return cluster.wait_status(lambda state: bool(state.get("batch")) and {item["key"] for item in state["items"]} >= keys,
                               60, "the studio did not queue its batch in the database")


def names_worker(device: str | None, worker: str) -> bool:
    return bool(device) and (device == worker or device.startswith(worker + " ") or device.startswith(worker + "/"))


# ---------------------------------------------------------------------------------------
# 1. The page's batch, rendered by two workers; every worker's event reaches the page


def test_studio_batch_rendered_by_two_workers_reaches_the_page(cluster: Cluster):
    studio = cluster.studio()
    keys = upload_batch(studio, cluster, cluster.media.templates[:4])
    page = cluster.page(studio)   # connected before the start

    studio.api("POST", "/api/batch/start", expect=(202,))
    wait_queued(cluster, keys)
    # Two seconds per item: the second worker finds work even if it starts late.
    workers = [cluster.worker(name, delay=0.2) for name in ("w1", "w2")]
    for worker in workers:
        code = worker.wait(timeout=150)
        assert code == 0, f"{worker.describe()} exited {code}\n{worker.output()}"

    # GET /api/state: the database's items.
    api = studio.wait_state(lambda state: all(item["status"] == "success" for item in state["items"]), 30,
                            "GET /api/state does not show every item succeeded")
    assert {item["key"] for item in api["items"]} == keys, f"GET /api/state items: {api['items']}"
    assert api["summary"].get("succeeded") == 4 and api["summary"].get("total") == 4, f"summary {api['summary']}"
    devices = {item["key"]: item.get("device") for item in api["items"]}
    for name in ("w1", "w2"):
        assert any(names_worker(device, name) for device in devices.values()), (
            f"no item of GET /api/state names worker {name} as its device: {devices}\n"
            f"renders by worker: {cluster.renders_by_worker()}")

    # `talkie status --store --json`: the same.
    status = cluster.status()
    items = items_by_key(status)
    assert set(items) == keys, f"the database's items are not the page's:\n{summary(status)}"
    assert all(status_of(item) == "success" and attempts_of(item) == 1 for item in items.values()), summary(status)
    for name in ("w1", "w2"):
        assert any(names_worker(item.get("device"), name) for item in items.values()), (
            f"no item of `talkie status --store` names worker {name}: {[item.get('device') for item in items.values()]}")
    assert all(count == 1 for count in cluster.renders().values()) and set(cluster.renders()) == keys, (
        f"renders {dict(cluster.renders())}")

    # The outputs: in the workspace's outputs/, valid, downloadable via outputUrl.
    problems = harness.output_problems(studio.outputs, status)
    assert not problems, "outputs in the workspace:\n" + "\n".join(problems)
    for item in api["items"]:
        path = studio.outputs / item["output"]
        assert path.is_file(), f"{item['key'][:12]}: {path} does not exist"
        assert item.get("outputUrl"), f"{item['key'][:12]} has no outputUrl: {item}"
        answer = studio.request("GET", item["outputUrl"])
        assert answer.status == 200, f"GET {item['outputUrl']} answered {answer.status}: {answer.body[:300]!r}"
        assert answer.body == path.read_bytes(), f"GET {item['outputUrl']} is not the file {path}"

    # The page: the workers' events (they carry the workers' names), and snapshots ending at 4 succeeded.
    page.wait(lambda page: keys <= event_keys(page, "item_succeeded") and last_summary(page).get("succeeded") == 4,
              30, "item_succeeded for every item and a snapshot with 4 succeeded")
    assert keys <= event_keys(page, "item_started"), (
        f"item_started missing for {[key[:12] for key in keys - event_keys(page, 'item_started')]}")
    started_devices = {event.get("device") for event in page.events("item_started")}
    for name in ("w1", "w2"):
        assert any(names_worker(device, name) for device in started_devices), (
            f"no item_started on the page names worker {name}: {started_devices}")
    time.sleep(1)   # nothing later may undo it
    final = last_summary(page)
    assert final.get("succeeded") == 4 and final.get("total") == 4, f"the page's last snapshot's summary: {final}"
    assert not page.ended, f"the page's WebSocket ended: {page.error or 'closed'}"


# ---------------------------------------------------------------------------------------
# 2. Events caused outside the studio (the CLI, a worker) reach the page


def test_cli_batch_pause_and_stop_reach_the_page(cluster: Cluster):
    studio = cluster.studio()
    page = cluster.page(studio)
    templates = cluster.media.templates[4:7]
    cluster.queue(templates, "--lease-seconds", "3")   # `talkie run --store --detach`, inputs from files
    keys = {item["key"] for item in cluster.status()["items"]}
    assert len(keys) == 3, summary(cluster.last_state)
    page.wait(lambda page: keys <= event_keys(page, "item_queued") and page.events("batch_started"), 30,
              "batch_started and item_queued from `talkie run --store --detach`")

    # Three seconds per item.
    worker = cluster.worker("cli-worker", delay=0.3, exit_when_idle=False)
    page.wait(lambda page: len(event_keys(page, "item_succeeded")) >= 1 and len(event_keys(page, "item_started")) >= 2,
              90, "the first item started and succeeded, the second started", cluster.outputs())
    first = next(iter(event_keys(page, "item_succeeded")))
    assert first in event_keys(page, "item_started"), "item_succeeded without its item_started"
    assert all(names_worker(event.get("device"), "cli-worker") for event in page.events("item_started")), (
        f"item_started devices: {[event.get('device') for event in page.events('item_started')]}")

    # `talkie pause --store`: the running item finishes (its item_succeeded reaches the page), nothing starts.
    paused = cluster.talkie("pause", "--store", cluster.store)
    assert paused.returncode == 0, f"`talkie pause --store` exited {paused.returncode}: {paused.stderr}"
    cluster.wait_status(lambda state: not running(state), 30, "the running item did not finish after `talkie pause`")
    started = event_keys(page, "item_started")
    second = (started - {first}).pop() if len(started - {first}) == 1 else None
    assert second, f"expected exactly two items started by the pause: {[key[:12] for key in started]}"
    page.wait(lambda page: second in event_keys(page, "item_succeeded"), 15,
              "item_succeeded of the item running at `talkie pause`")
    time.sleep(2.5)   # several claim rounds
    state = cluster.status()
    assert event_keys(page, "item_started") == started and not running(state), (
        f"an item was started while paused\n{summary(state)}")
    (third,) = keys - {first, second}
    assert status_of(items_by_key(state)[third]) == "pending", f"the third item is not pending at the pause\n{summary(state)}"

    # `talkie run --store` un-pauses; `talkie stop --store` mid-render: item_stopped on the page.
    cluster.queue(templates, "--lease-seconds", "3")
    page.wait(lambda page: third in event_keys(page, "item_started"), 60, "the third item started after un-pausing")
    cluster.wait_renders(3, seconds=30)   # the engine really renders it
    stopped = cluster.talkie("stop", "--store", cluster.store)
    assert stopped.returncode == 0, f"`talkie stop --store` exited {stopped.returncode}: {stopped.stderr}"
    page.wait(lambda page: third in event_keys(page, "item_stopped"), 30, "item_stopped after `talkie stop --store`",
              worker.output())
    assert third not in event_keys(page, "item_succeeded"), "the stopped item succeeded"
    state = cluster.wait_status(lambda state: not running(state), 15, "the stopped item is still running")
    item = items_by_key(state)[third]
    assert (status_of(item), attempts_of(item), item.get("lease")) == ("pending", 0, None), (
        f"after `talkie stop`: {item['state']}, lease {item.get('lease')}")
    assert worker.alive(), f"the worker exited on stop\n{worker.output()}"
    assert not page.ended, f"the page's WebSocket ended: {page.error or 'closed'}"


# ---------------------------------------------------------------------------------------
# 3. Stop and clear history from the page's API, across the cluster


def test_stop_reset_and_start_from_the_page_across_the_cluster(cluster: Cluster):
    studio = cluster.studio("--lease-seconds", "3")
    keys = upload_batch(studio, cluster, cluster.media.templates[7:9])
    page = cluster.page(studio)
    studio.api("POST", "/api/batch/start", expect=(202,))
    wait_queued(cluster, keys)
    worker = cluster.worker("slow", delay=0.3, exit_when_idle=False)   # three seconds per item

    # The first item succeeds; the page stops the batch while the second renders.
    page.wait(lambda page: len(event_keys(page, "item_succeeded")) >= 1 and len(event_keys(page, "item_started")) >= 2,
              90, "the first item succeeded and the second started", cluster.outputs())
    (first,) = event_keys(page, "item_succeeded")
    (second,) = keys - {first}
    cluster.wait_renders(2, seconds=30, worker="slow")
    studio.api("POST", "/api/batch/stop", expect=(202,))

    api = studio.wait_state(lambda state: not state["running"]
                            and {item["key"]: item["status"] for item in state["items"]}.get(second) == "pending", 30,
                            "after POST /api/batch/stop the rendering item is not back to pending (or the studio still runs)")
    rows = {item["key"]: item for item in api["items"]}
    assert rows[second]["attempts"] == 0, f"the stopped item was charged an attempt: {rows[second]}"
    assert rows[first]["status"] == "success", f"the first item: {rows[first]}"
    state = cluster.wait_status(lambda state: not running(state), 15, "`talkie status --store`: an item still runs after stop")
    item = items_by_key(state)[second]
    assert (status_of(item), attempts_of(item), item.get("lease")) == ("pending", 0, None), (
        f"`talkie status --store` after stop: {item['state']}, lease {item.get('lease')}")
    page.wait(lambda page: second in event_keys(page, "item_stopped"), 15, "item_stopped on the page")

    renders_at_stop = cluster.renders()
    time.sleep(3)   # the cluster is paused: the worker claims nothing
    state = cluster.status()
    assert not running(state) and cluster.renders() == renders_at_stop, f"an item was claimed after stop\n{summary(state)}"
    assert status_of(items_by_key(state)[second]) == "pending", summary(state)
    assert worker.alive(), f"the worker exited on stop\n{worker.output()}"

    # Clear history: the items are forgotten (database and page), the outputs stay.
    output = studio.outputs / rows[first]["output"]
    assert output.is_file(), f"the first item's output {output} does not exist"
    reset = studio.api("POST", "/api/batch/reset", {"confirm": True}, expect=(200,))
    assert reset.get("forgotten") == 2, f"POST /api/batch/reset answered {reset} (expected 2 forgotten)"
    state = cluster.status()
    assert not state.get("items"), f"`talkie status --store` after clear history still has items\n{summary(state)}"
    api = studio.state()
    assert {item["key"] for item in api["items"]} == keys, f"the page's items after reset: {api['items']}"
    forgotten = {item["key"][:12]: (item["status"], item["attempts"], item.get("output")) for item in api["items"]
                 if (item["status"], item["attempts"], item.get("output")) != ("pending", 0, None)}
    assert not forgotten, f"GET /api/state after clear history: items not forgotten: {forgotten}"
    page.wait(lambda page: last_summary(page).get("succeeded") == 0 and last_summary(page).get("pending") == 2, 15,
              "a snapshot after clear history")
    assert output.is_file(), "clear history deleted an output"

    # Start again: queued in the database, rendered by the same worker.
    renders_before = cluster.renders()
    studio.api("POST", "/api/batch/start", expect=(202,))
    api = studio.wait_state(lambda state: all(item["status"] == "success" for item in state["items"]), 60,
                            "the batch started again after clear history did not finish")
    state = cluster.wait_status(lambda state: {item["key"] for item in state["items"]} == keys
                                and all(status_of(item) == "success" for item in state["items"]), 30,
                                "`talkie status --store` does not show the batch finished")
    renders = cluster.renders()
    assert renders[second] == renders_before[second] + 1, f"the stopped item was not rendered again: {dict(renders)}"
    assert all(names_worker(item.get("device"), "slow") for item in api["items"]), [item.get("device") for item in api["items"]]
    problems = harness.output_problems(studio.outputs, state)
    assert not problems, "outputs in the workspace:\n" + "\n".join(problems)
    page.wait(lambda page: last_summary(page).get("succeeded") == 2, 15, "a snapshot with both items succeeded")
