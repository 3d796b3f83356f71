#!/usr/bin/env python3
"""Runs Talkie's benchmarks side by side with the seed design's baseline, in one run on one
machine, and prints a Markdown table of ratios (paste into BENCHMARKS.md).

  python3 Benchmarks/run.py [--items 1000] [--size-mib 10] [--state-items 10000] [--work /tmp/talkie-bench]

Builds Talkie in release mode first. Standard library only."""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(command, **kwargs):
    return subprocess.run(command, check=True, capture_output=True, text=True, **kwargs)


def timed(command, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if result.returncode != 0:
            sys.exit(f"{command} failed: {result.stdout}{result.stderr}")
    return statistics.median(times), result.stdout


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--size-mib", type=int, default=10)
    parser.add_argument("--state-items", type=int, default=10000)
    parser.add_argument("--seed-sample", type=int, default=100)
    parser.add_argument("--work", default="/tmp/talkie-bench")
    args = parser.parse_args()

    print("building (release)...", file=sys.stderr)
    run(["swift", "build", "-c", "release", "--product", "talkie"], cwd=ROOT)
    run(["swift", "build", "-c", "release", "--product", "talkie-bench"], cwd=ROOT)
    talkie = os.path.join(ROOT, ".build/release/talkie")
    bench = os.path.join(ROOT, ".build/release/talkie-bench")
    seed = [sys.executable, os.path.join(ROOT, "Benchmarks/seed_baseline.py")]

    shutil.rmtree(args.work, ignore_errors=True)
    restart_dir = os.path.join(args.work, "restart")
    os.makedirs(restart_dir)
    run(["espeak-ng", "-v", "en-us", "-w", os.path.join(restart_dir, "narration.wav"), "A short narration."])
    print(f"preparing {args.items} finished items of {args.size_mib} MiB (sparse)...", file=sys.stderr)
    run([bench, "prepare-restart", restart_dir, str(args.items), str(args.size_mib)])
    outputs = os.path.join(restart_dir, "outputs")
    rows = []

    # 1. Restart of a finished batch: first start (no hash cache) and warm restart.
    cache = os.path.join(outputs, ".talkie/hash-cache.json")
    cold = []
    for _ in range(3):
        if os.path.exists(cache):
            os.remove(cache)
        seconds, out = timed([talkie, "run", "--out", outputs], 1)
        assert "0 to render" in out, out
        cold.append(seconds)
    warm, out = timed([talkie, "run", "--out", outputs], 5)
    assert "0 to render" in out, out
    seed_times = []
    for _ in range(3):
        seconds, out = timed(seed + ["restart", restart_dir], 1)
        assert json.loads(out)["to_render"] == 0, out
        seed_times.append(seconds)
    seed_restart = statistics.median(seed_times)
    gib = args.items * args.size_mib / 1024
    rows.append((f"first start, {args.items} finished inputs ({gib:.1f} GiB), s", statistics.median(cold), seed_restart))
    rows.append((f"warm restart, {args.items} finished inputs, s", warm, seed_restart))

    # 2. Per-item durable state overhead at N items (two changes per item: running, success).
    state_dir = os.path.join(args.work, "state")
    talkie_state = json.loads(run([bench, "state-overhead", state_dir, str(args.state_items)]).stdout)
    seed_state = json.loads(run(seed + ["state-overhead", os.path.join(args.work, "seed-state"), str(args.state_items), str(args.seed_sample)]).stdout)
    rows.append((f"state overhead per item at {args.state_items} items, median ms", talkie_state["per_item_ms_p50"], seed_state["per_item_ms_p50"]))
    rows.append((f"state overhead per item at {args.state_items} items, p99 ms", talkie_state["per_item_ms_p99"], seed_state["per_item_ms_p99"]))
    rows.append((f"state overhead per item at {args.state_items} items, mean ms (incl. compactions)", talkie_state["per_item_ms_mean"], seed_state["per_item_ms_mean"]))

    print(f"| measure | Talkie | seed design | seed / Talkie |")
    print(f"|---|---:|---:|---:|")
    for name, ours, theirs in rows:
        print(f"| {name} | {ours:.4g} | {theirs:.4g} | {theirs / ours:.1f}× |")
    print(f"\n(seed state overhead sampled over {args.seed_sample} items of {args.state_items}; machine: {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
