#!/usr/bin/env python3
"""The batch core side by side with the seed's design and the tools' limits, in one run:

1. identity hashing of one big file and of many 50 MiB files: Talkie vs xxhsum -H2, md5sum,
   the seed's Python MD5 (4 KiB reads) and `cat` (reading alone), all whole commands timed by
   hyperfine, plus Talkie's XXH3 in process (ordo-one/benchmark);
2. restart of a finished batch of 1,000 inputs: first start (no hash cache) and warm restart
   of `talkie run`, against the seed's restart, which re-hashes everything;
3. the durable state's cost per item at 100 / 10,000 / 100,000 items (ordo-one/benchmark),
   against the seed's design, which rewrites the whole state file on every change;
4. peak memory of `talkie run`: a finished batch of 1,000 vs 10,000 items, and a rendering
   run (the test engine) of a few dozen vs a few hundred items.

  python3 Benchmarks/core.py [--quick] --out DIR [--work DIR] [--talkie BIN] [--bench-bin BIN]

Writes DIR/core.md (a section of BENCHMARKS.md) and DIR/core.json. Needs hyperfine, xxhsum,
md5sum, ffmpeg, espeak-ng, and the Benchmarks package built (Benchmarks/run.py does all that).
Standard library only."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import timing  # Benchmarks/timing.py

ROOT = Path(__file__).resolve().parent.parent
SEED = [sys.executable, str(ROOT / "Benchmarks" / "seed_baseline.py")]


def log(message: str) -> None:
    print(f"core: {message}", file=sys.stderr, flush=True)


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        sys.exit(f"core: {' '.join(command[:4])}... failed ({result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result


class Timing:
    """Seconds of several runs of one command: median, min, max."""

    def __init__(self, times: list[float]):
        self.times = times
        self.median = statistics.median(times)
        self.min = min(times)
        self.max = max(times)

    def cell(self, digits: int = 4) -> str:
        return f"{fmt(self.median, digits)} ({fmt(self.min, digits)}–{fmt(self.max, digits)})"


def fmt(value: float, digits: int = 4) -> str:
    if value == 0:
        return "0"
    text = f"{value:.{digits}g}"
    if "e" in text:
        text = f"{value:.0f}"
    return text


def hyperfine(commands: dict[str, list[str]], work: Path, runs: int, warmup: int = 1,
              prepare: str | None = None) -> dict[str, Timing]:
    """Times each command with hyperfine: name -> Timing."""
    try:
        results = timing.hyperfine(commands, work / "hyperfine.json", runs, warmup, prepare)
    except RuntimeError as error:
        sys.exit(f"core: {error}")
    return {name: Timing(result["times"]) for name, result in results.items()}


def ratio(baseline: float, ours: float) -> str:
    return f"{baseline / ours:.2f}×" if baseline / ours < 10 else f"{baseline / ours:.0f}×"


# ---------------------------------------------------------------------------------------
# 1. Hashing


def random_file(path: Path, mebibytes: int) -> Path:
    if path.exists() and path.stat().st_size == mebibytes << 20:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        for _ in range(mebibytes):
            out.write(os.urandom(1 << 20))
    return path


def hashing(args, bench: Path) -> tuple[list[list[str]], dict]:
    big_mib, many, each_mib = (64, 10, 4) if args.quick else (1024, 100, 50)
    data = args.work / "hash-data"
    log(f"hashing: making {big_mib} MiB + {many} × {each_mib} MiB of random data")
    big = [str(random_file(data / "big.bin", big_mib))]
    small = [str(random_file(data / f"part-{n:03d}.bin", each_mib)) for n in range(many)]
    rows, figures = [], {}
    for label, files, mib in ((f"{fmt(big_mib / 1024, 3)} GiB, one file" if big_mib >= 1024 else f"{big_mib} MiB, one file", big, big_mib),
                              (f"{many} × {each_mib} MiB files", small, many * each_mib)):
        log(f"hashing {label}")
        timings = hyperfine({
            "talkie": [str(bench), "hash-files", *files],
            "xxhsum": ["xxhsum", "-H2", *files],
            "md5sum": ["md5sum", *files],
            "seed": [*SEED, "hash", *files],
            "cat": ["cat", *files],
        }, args.work, runs=3 if args.quick else 5)
        speed = {name: mib / 1024 / timing.median for name, timing in timings.items()}
        figures[label] = {name: {"gib_per_s": speed[name], "seconds": t.times} for name, t in timings.items()}
        def cell(name):
            t = timings[name]
            return f"{fmt(mib / 1024 / t.median, 3)} ({fmt(mib / 1024 / t.max, 3)}–{fmt(mib / 1024 / t.min, 3)})"
        rows.append([f"hash {label}, GiB/s vs `xxhsum -H2`", cell("talkie"), f"xxhsum: {cell('xxhsum')}",
                     f"{speed['talkie'] / speed['xxhsum']:.2f}× xxhsum", "≥ 0.9×", yes(speed["talkie"] >= 0.9 * speed["xxhsum"])])
        rows.append([f"hash {label}, GiB/s vs the seed's MD5", cell("talkie"), f"seed (Python MD5, 4 KiB): {cell('seed')}",
                     f"{speed['talkie'] / speed['seed']:.1f}× the seed", "≥ 8×", yes(speed["talkie"] >= 8 * speed["seed"])])
        rows.append([f"hash {label}, GiB/s vs `md5sum` and `cat`", cell("talkie"),
                     f"md5sum: {cell('md5sum')}; cat: {cell('cat')}",
                     f"{speed['talkie'] / speed['md5sum']:.1f}× md5sum; {speed['talkie'] / speed['cat']:.2f}× cat", "–", "–"])
    return rows, figures


def yes(condition: bool) -> str:
    return "yes" if condition else "**no**"


# ---------------------------------------------------------------------------------------
# 2. Restart of a finished batch


def restart(args, talkie: str, bench: Path) -> tuple[list[list[str]], dict]:
    items, mib = (50, 1) if args.quick else (1000, 10)
    folder = args.work / f"restart-{items}"
    outputs = folder / "outputs"
    if not (outputs / "task_status.json").exists():
        log(f"restart: preparing a finished batch of {items} sparse inputs of {mib} MiB")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        run(["espeak-ng", "-w", str(folder / "narration.wav"), "A short narration."])
        run([str(bench), "prepare-restart", str(folder), str(items), str(mib)])
    run_cmd = [talkie, "run", "--out", str(outputs)]
    check = run(run_cmd)
    assert "0 to render" in check.stdout, check.stdout
    cache = outputs / ".talkie" / "hash-cache.json"
    log("restart: first start (no hash cache)")
    first = hyperfine({"first": run_cmd}, args.work, runs=3 if args.quick else 5, warmup=1,
                      prepare=f"rm -f {cache}")["first"]
    log("restart: warm restart")
    warm = hyperfine({"warm": run_cmd}, args.work, runs=5 if args.quick else 10, warmup=1)["warm"]
    log("restart: the seed's restart (MD5 of every input)")
    seed = hyperfine({"seed": [*SEED, "restart", str(folder)]}, args.work, runs=3, warmup=0)["seed"]
    gib = items * mib / 1024
    rows = [
        [f"first start, finished batch of {items} inputs ({fmt(gib, 3)} GiB), s", first.cell(), f"seed restart: {seed.cell()}",
         f"{ratio(seed.median, first.median)} faster", "–", "–"],
        ["warm restart, same batch, s", warm.cell(), f"seed restart: {seed.cell()}",
         f"{ratio(seed.median, warm.median)} faster", "< 0.5 s; ≥ 50×",
         f"{yes(warm.median < 0.5)}; {yes(seed.median / warm.median >= 50)}"],
    ]
    return rows, {"items": items, "mib": mib, "first_s": first.times, "warm_s": warm.times, "seed_s": seed.times}


# ---------------------------------------------------------------------------------------
# 3. Durable state per item


def state_overhead(args, talkie_store_benchmarks: dict) -> tuple[list[list[str]], dict]:
    seed_plan = [(100, 20), (1000, 10)] if args.quick else [(100, 100), (1000, 100), (10000, 30), (100000, 4)]
    seed = {}
    for count, sample in seed_plan:
        log(f"state: the seed's design at {count} items ({sample} sampled)")
        result = run([*SEED, "state-overhead", str(args.work / f"seed-state-{count}"), str(count), str(sample)])
        seed[count] = json.loads(result.stdout)
    rows = []
    ours = talkie_store_benchmarks.get("state", {})
    for count in sorted(set(ours) | set(seed)):
        mine, theirs = ours.get(count), seed.get(count)
        t_cell = (f"{fmt(mine['p50_ms'], 3)} / {fmt(mine['p99_ms'], 3)} / {fmt(mine['mean_ms'], 3)}" if mine else "–")
        s_cell = (f"seed: {fmt(theirs['per_item_ms_p50'], 3)} / {fmt(theirs['per_item_ms_p99'], 3)} / {fmt(theirs['per_item_ms_mean'], 3)}"
                  if theirs else "seed: not run (see notes)")
        r_cell = f"{ratio(theirs['per_item_ms_p50'], mine['p50_ms'])} faster (median)" if mine and theirs else "–"
        target, met = ("≤ 2 ms", yes(mine["p99_ms"] <= 2)) if mine and count >= 100000 else ("–", "–")
        samples = f"{mine['samples']} items" if mine else ""
        rows.append([f"state per item at {count:,} items, ms median / p99 / mean ({samples})", t_cell, s_cell, r_cell, target, met])
    return rows, {"talkie": ours, "seed": seed}


def store_benchmarks(args, work: Path) -> dict:
    """Runs StoreBenchmarks (ordo-one/benchmark) and reads back its raw samples."""
    counts = "100,1000" if args.quick else "100,1000,10000,100000"
    export = work / "store-benchmarks"
    shutil.rmtree(export, ignore_errors=True)
    export.mkdir(parents=True)
    data = args.work / "hash-data"
    files = ":".join(str(p) for p in [data / "big.bin"] if p.exists())
    env = dict(os.environ, TALKIE_BENCH_ITEMS=counts, TALKIE_BENCH_WORK=str(work / "store-bench"),
               TALKIE_BENCH_HASH_FILES=files, TALKIE_BENCH_QUICK="1" if args.quick else "0")
    if args.quick:
        return store_benchmarks_directly(args, env, counts)
    log(f"state + hashing in process: swift package benchmark (items {counts})")
    command = ["swift", "package", "--package-path", str(ROOT / "Benchmarks"), "--allow-writing-to-directory", str(export),
               "benchmark", "--target", "StoreBenchmarks", "--format", "histogramSamples", "--path", str(export),
               "--no-progress"]
    # Always a release build: in a debug build the plugin's preloaded malloc interposer
    # (from its own release folder) and the benchmark's own copy crash the run (SIGSEGV).
    run(command, env=env)
    results: dict = {"state": {}}
    for path in sorted(export.glob("*.histogram.samples.tsv")):
        lines = path.read_text().split("\n")
        header, values = lines[0], [float(v) for v in lines[1:] if v.strip()]
        if "Time" not in header or not values:
            continue
        unit = header.rsplit("(", 1)[-1].rstrip(")")
        to_ms = {"ns": 1e-6, "μs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1000.0}[unit]
        values = sorted(v * to_ms for v in values)
        summary = {"samples": len(values), "p50_ms": percentile(values, 0.5), "p99_ms": percentile(values, 0.99),
                   "mean_ms": statistics.mean(values), "max_ms": values[-1], "min_ms": values[0]}
        name = path.name
        if "state_per_item_at_" in name or "state per item at " in name:
            count = int(name.replace(" ", "_").split("state_per_item_at_")[1].split("_")[0])
            results["state"][count] = summary
        elif "hash" in name:
            results["hash"] = summary
    if not results["state"]:
        sys.exit(f"core: no results from StoreBenchmarks in {export}: {os.listdir(export)}")
    return results


def store_benchmarks_directly(args, env: dict, counts: str) -> dict:
    """The quick run's StoreBenchmarks: the executable started on its own, which runs every
    benchmark and prints each one's percentiles. Through the plugin, as a full run goes, it
    took a minute or two of CI for figures a quick run does not keep: the plugin builds its
    own tool and recompiles the benchmarks on every call."""
    binary = args.bench_bin.parent / "StoreBenchmarks"
    log(f"state + hashing in process: {binary.name}, started directly (items {counts})")
    result = subprocess.run([str(binary)], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"core: {binary} failed ({result.returncode}):\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    results: dict = {"state": {}}
    for name, summary in parse_percentile_report(result.stdout).items():
        if name.startswith("state per item at "):
            results["state"][int(name.split()[4])] = summary
        elif name.startswith("hash"):
            results["hash"] = summary
    if sorted(results["state"]) != sorted(int(c) for c in counts.split(",")):
        sys.exit(f"core: {binary.name} did not report every item count ({counts}):\n{result.stdout[-3000:]}")
    return results


def parse_percentile_report(text: str) -> dict:
    """Wall-clock summaries (ms) from the percentile tables a benchmark executable prints when
    it runs on its own: a "Debug results for NAME:" block per benchmark, whose "Time (wall
    clock):" table lists values in ns with the percentile each is at."""
    summaries: dict = {}
    name, rows, in_time, mean = None, [], False, None

    def close():
        if name and rows:
            values = [value for value, _, _ in rows]
            at = lambda p: next(value for value, q, _ in rows if q >= p)
            summaries[name] = {"samples": rows[-1][2], "p50_ms": at(0.5), "p99_ms": at(0.99), "mean_ms": mean,
                               "max_ms": values[-1], "min_ms": values[0]}

    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Debug results for ") and line.endswith(":"):
            close()
            name, rows, in_time, mean = line[len("Debug results for "):-1], [], False, None
        elif line.endswith(":") and not line[0].isdigit():
            in_time = line == "Time (wall clock):"
        elif in_time and line.startswith("#[Mean"):
            mean = float(line.split("=")[1].split(",")[0]) * 1e-6
        elif in_time and line and line[0].isdigit():
            fields = line.split()
            rows.append((float(fields[0]) * 1e-6, float(fields[1]), int(fields[2])))
    close()
    return summaries


def percentile(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, round((len(values) - 1) * p))]


# ---------------------------------------------------------------------------------------
# 4. Memory of `talkie run`


def peak_rss_mib(command: list[str], env: dict | None = None) -> tuple[float, str]:
    """Runs `command` and returns its peak resident memory (wait4's ru_maxrss) and stdout.
    Its output goes to files: a pipe nobody reads while waiting could fill and stall it."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if process.returncode != 0:
        sys.exit(f"core: {' '.join(command[:3])} failed: {stdout[-1500:]}{stderr[-1500:]}")
    return usage.ru_maxrss / 1024, stdout


def memory(args, talkie: str, bench: Path) -> tuple[list[list[str]], dict]:
    rows, figures = [], {}
    small, large = (100, 500) if args.quick else (1000, 10000)
    finished = {}
    for count in (small, large):
        folder = args.work / f"memory-finished-{count}"
        if not (folder / "outputs" / "task_status.json").exists():
            log(f"memory: preparing a finished batch of {count} inputs")
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            run(["espeak-ng", "-w", str(folder / "narration.wav"), "A short narration."])
            run([str(bench), "prepare-restart", str(folder), str(count), "1"])
        peaks = [peak_rss_mib([talkie, "run", "--out", str(folder / "outputs")])[0] for _ in range(3)]
        finished[count] = statistics.median(peaks)
    figures["finished"] = finished
    per_item_kib = (finished[large] - finished[small]) * 1024 / (large - small)
    rows.append([f"`talkie run` peak RSS, finished batch of {large:,} vs {small:,} items, MiB",
                 fmt(finished[large], 3), f"{small:,} items: {fmt(finished[small], 3)}",
                 f"{finished[large] / finished[small]:.2f}× for {large // small}× the items ({fmt(per_item_kib, 2)} KiB per item)",
                 "flat", yes(finished[large] / finished[small] <= 1.5)])

    few, many = (3, 12) if args.quick else (20, 100)
    rendering = {}
    timing = {}
    folder = args.work / "memory-render"
    shutil.rmtree(folder, ignore_errors=True)
    templates = folder / "templates"
    templates.mkdir(parents=True)
    run(["espeak-ng", "-w", str(folder / "narration.wav"), "Talkie never loses finished work."])
    base = folder / "base.mp4"
    run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=1",
         "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(base)])
    for count in (few, many):
        log(f"memory: rendering {count} items with the test engine")
        shutil.rmtree(templates, ignore_errors=True)
        templates.mkdir()
        content = base.read_bytes()
        for n in range(count):
            # Distinct content (a different key) at no encoding cost: bytes after the MP4's last box.
            (templates / f"template-{n:04d}.mp4").write_bytes(content + f"\ncopy {n}\n".encode())
        outputs = folder / f"outputs-{count}"
        shutil.rmtree(outputs, ignore_errors=True)
        env = dict(os.environ, TALKIE_HOME=str(ROOT))
        start = time.perf_counter()
        peak, out = peak_rss_mib([talkie, "run", "--audio", str(folder / "narration.wav"), "--videos", str(templates),
                                  "--out", str(outputs), "--engine", "test"], env=env)
        timing[count] = time.perf_counter() - start
        if f"finished: {count}/{count} done" not in out:
            sys.exit(f"core: the rendering run did not finish all {count} items:\n{out[-2000:]}")
        rendering[count] = peak
    figures["rendering"] = rendering
    figures["rendering_seconds"] = timing
    rows.append([f"`talkie run` peak RSS, rendering {many} vs {few} items (test engine), MiB",
                 fmt(rendering[many], 3), f"{few} items: {fmt(rendering[few], 3)}",
                 f"{rendering[many] / rendering[few]:.2f}× for {many // few}× the items", "flat",
                 yes(rendering[many] / rendering[few] <= 1.2)])
    figures["render_per_item_s"] = {count: timing[count] / count for count in timing}

    # What the test engine itself does per item, alone: the same ffmpeg copy + mux.
    duration = float(run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
                          str(folder / "narration.wav")]).stdout.strip())
    alone = hyperfine({"engine": ["ffmpeg", "-nostdin", "-v", "error", "-y", "-stream_loop", "-1", "-i", str(base),
                                  "-i", str(folder / "narration.wav"), "-map", "0:v:0", "-map", "1:a:0", "-c:a", "aac",
                                  "-t", f"{duration:.3f}", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                                  "-r", "25", "-f", "mp4", str(folder / "alone.mp4")]},
                      args.work, runs=3 if args.quick else 10)["engine"]
    figures["engine_alone_s"] = alone.times
    per_item = timing[many] / many
    rows.append([f"`talkie run` wall time per item, {many} items (test engine), s", fmt(per_item, 3),
                 f"the test engine's ffmpeg alone: {alone.cell(digits=3)}",
                 f"+{fmt(per_item - alone.median, 3)} s per item: probe, first-frame check, stamp, verify, state", "–", "–"])
    return rows, figures


# ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one pass: proves the script works")
    parser.add_argument("--out", type=Path, required=True, help="where core.md and core.json go")
    parser.add_argument("--work", type=Path, default=Path("/tmp/talkie-bench-core"), help="scratch folder (kept for reuse)")
    parser.add_argument("--talkie", default=str(ROOT / ".build" / "release" / "talkie"))
    parser.add_argument("--bench-bin", type=Path, default=ROOT / "Benchmarks" / ".build" / "release" / "talkie-bench")
    args = parser.parse_args()
    args.work = args.work / ("quick" if args.quick else "full")
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)

    sections = {}
    hash_rows, hash_figures = hashing(args, args.bench_bin)
    store = store_benchmarks(args, args.work)
    if "hash" in store:
        hash_figures["in_process_xxh3_big_file"] = store["hash"]
    sections["hashing"] = (hash_rows, hash_figures)
    sections["restart"] = restart(args, args.talkie, args.bench_bin)
    sections["state"] = state_overhead(args, store)
    sections["memory"] = memory(args, args.talkie, args.bench_bin)

    figures = {name: value[1] for name, value in sections.items()}
    (args.out / "core.json").write_text(json.dumps(figures, indent=2, default=str))
    (args.out / "core.md").write_text(markdown(args, sections, store))
    log(f"wrote {args.out / 'core.md'}")


def state_flatness_note(ours: dict) -> str:
    """Talkie's cost per item at every N side by side, and why a missed ≤ 2 ms is not N."""
    counts = sorted(ours, key=int)
    note = ("Talkie's state per item at " + " / ".join(f"{int(c):,}" for c in counts) + " items: median " +
            " / ".join(fmt(ours[c]["p50_ms"], 3) for c in counts) + " ms, p99 " +
            " / ".join(fmt(ours[c]["p99_ms"], 3) for c in counts) + " ms.")
    largest, smallest = ours[counts[-1]], ours[counts[0]]
    if largest["p99_ms"] > 2 and smallest["p99_ms"] >= largest["p99_ms"]:
        note += (f" The ≤ 2 ms target is missed by the p99 at {int(counts[-1]):,} items, not by the median; the p99 "
                 f"at {int(counts[0]):,} items in the same run is {fmt(smallest['p99_ms'], 3)} ms, so the tail is "
                 "the disk's fdatasync latency on this shared machine, not the batch size (each change is one "
                 "append and one fdatasync whatever N is).")
    elif largest["p99_ms"] > 2:
        note += (f" The ≤ 2 ms target is missed: the p99 grows from {fmt(smallest['p99_ms'], 3)} ms at "
                 f"{int(counts[0]):,} items to {fmt(largest['p99_ms'], 3)} ms at {int(counts[-1]):,}.")
    return note


def markdown(args, sections, store) -> str:
    command = "python3 Benchmarks/core.py" + (" --quick" if args.quick else "") + " --out DIR"
    lines = ["## The batch core: hashing, restart, durable state, memory", "",
             f"`{command}` (or `scripts/bench.sh`, which builds everything first). Whole commands are",
             "timed by hyperfine (median of several runs, min–max in brackets); in-process figures come",
             "from ordo-one/benchmark (`Benchmarks/StoreBenchmarks`). The seed's design is",
             "`Benchmarks/seed_baseline.py`, written plainly from the article.", "",
             "| measure | Talkie | baseline | ratio | target | met |", "|---|---:|---:|---:|---|:-:|"]
    for name in ("hashing", "restart", "state", "memory"):
        for row in sections[name][0]:
            lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    in_process = store.get("hash")
    figures = sections["hashing"][1]
    notes = []
    if in_process:
        big = next(iter(figures.values()))
        mib = os.path.getsize(args.work / "hash-data" / "big.bin") / (1 << 20)
        notes.append(f"Talkie's XXH3-128 in process (ordo-one/benchmark, {in_process['samples']} iterations over the "
                     f"{fmt(mib, 4)} MiB file, page cache warm): median {fmt(mib / 1024 / (in_process['p50_ms'] / 1000), 3)} GiB/s; "
                     f"the whole `talkie-bench hash-files` command: {fmt(big['talkie']['gib_per_s'], 3)} GiB/s.")
    notes.append("Hashing rows read files from a warm page cache, so they measure the hash, not the disk; `cat` is "
                 "the cost of reading alone. Talkie hashes with libxxhash's XXH3-128 in 1 MiB reads, through the "
                 "same run-time CPU dispatch (AVX2 here) as `xxhsum -H2`.")
    restart_figures = sections["restart"][1]
    notes.append(f"Restart: {restart_figures['items']} sparse inputs of {restart_figures['mib']} MiB, already rendered; "
                 "`talkie run --out` must find nothing to render. First start has no hash cache (every input is "
                 "read and hashed); warm restart trusts the cache for unchanged files (device, inode, size, mtime). "
                 "The seed has no cache: every restart is a full MD5 pass.")
    state_figures = sections["state"][1]["seed"]
    notes.append("State per item: one item taken running → success, both changes appended to the journal and "
                 "fdatasync'ed before the next, the periodic compaction into `task_status.json` included where it "
                 "falls (it shows in p99 and the mean). The seed rewrites the whole `task_status.json` twice per "
                 "item (without fsync: it is not even durable), so its cost grows with the batch — quadratic in "
                 "total; it is sampled over the first items only (" +
                 ", ".join(f"{d['sampled']} at {count:,}" for count, d in state_figures.items()) + ").")
    notes.append(state_flatness_note(sections["state"][1]["talkie"]))
    memory_figures = sections["memory"][1]
    notes.append("Memory: peak RSS from wait4. A finished batch is the restart path (load the state, scan and hash "
                 "every input); the rendering runs use the test engine (a copy + mux by ffmpeg per item), whose "
                 "wall time per item was " + ", ".join(f"{fmt(v, 3)} s at {k} items" for k, v in memory_figures["render_per_item_s"].items()) + ".")
    notes.append("The durable state rows are the per-item cost of orchestration without media: with a real "
                 "engine each item also costs the media checks around the render (probe and first-frame decode of "
                 "the template, the metadata stamp and verification of the output, each an ffprobe or ffmpeg "
                 "start), measured end to end in the `talkie run` wall-time row against the test engine's own "
                 "ffmpeg command.")
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
