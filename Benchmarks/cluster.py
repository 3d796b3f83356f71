#!/usr/bin/env python3
"""Cluster mode's database (PostgreSQL) beside the database's own floor, in one run:

items claimed and committed per second by `talkie store benchmark` (a null engine: no media,
only the claim and the commit under the lease) as workers grow from 1 to 8 on one machine,
with its claim and commit latencies, against pgbench's built-in simple-update transaction
(`pgbench -N`) on the same instance with the same number of clients.

  python3 Benchmarks/cluster.py [--quick] --out DIR [--work DIR] [--talkie BIN]

Starts the private PostgreSQL instance (scripts/postgres.sh start: 127.0.0.1:55432, fsync
on), creates fresh databases for the run (one per Talkie run, one for pgbench) and drops them
at the end. Full mode: 3 runs of 2,000 items per worker count (1, 2, 4, 8) and 3 pgbench runs
of 5 s per client count, interleaved; --quick: 1 run of 100 items and one pgbench run of 3 s,
for 1 and 2 workers (well under 30 s). Writes DIR/cluster.md (a section of BENCHMARKS.md) and
DIR/cluster.json (the raw figures). Exit status 1 when something could not be measured,
never because a figure is low. Standard library only."""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_SH = ROOT / "scripts" / "postgres.sh"
STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"[cluster {time.monotonic() - STARTED:6.1f} s] {message}", file=sys.stderr, flush=True)


class Unmeasured(Exception):
    """Something could not be measured: the database, talkie or pgbench failed."""


def run(command: list[str], timeout: float = 1800, **kwargs) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise Unmeasured(f"{shlex.join(command[:4])}: {error}") from error
    if result.returncode != 0:
        raise Unmeasured(f"{shlex.join(command[:4])}... failed ({result.returncode}): {(result.stdout + result.stderr)[-1500:]}")
    return result


# ---------------------------------------------------------------------------------------
# Numbers


def sig(value: float | None, digits: int = 3) -> str:
    """A few significant digits, never in exponent form."""
    if value is None:
        return "–"
    if value == 0:
        return "0"
    text = f"{value:.{digits}g}"
    return f"{value:.0f}" if "e" in text else text


def spread(values: list[float], digits: int = 3) -> str:
    """median (min–max), or the value alone for one run."""
    if len(values) == 1:
        return sig(values[0], digits)
    return f"{sig(statistics.median(values), digits)} ({sig(min(values), digits)}–{sig(max(values), digits)})"


def percentile(values: list[float], fraction: float) -> float:
    """Nearest rank, as `talkie store benchmark` computes its own."""
    ordered = sorted(values)
    rank = math.ceil(round(fraction * len(ordered), 9))
    return ordered[min(len(ordered) - 1, max(0, rank - 1))]


# ---------------------------------------------------------------------------------------
# The database


class Postgres:
    """The private instance of scripts/postgres.sh and Debian's client tools beside it."""

    def __init__(self):
        run([str(POSTGRES_SH), "start"], timeout=900)
        self.url = run([str(POSTGRES_SH), "url"]).stdout.strip()
        dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: [int(p) for p in Path(d).parent.name.split(".") if p.isdigit()])
        if not dirs:
            raise Unmeasured("no /usr/lib/postgresql/*/bin (scripts/postgres.sh start installs Debian's postgresql)")
        self.bin = Path(dirs[-1])
        self.created: list[str] = []

    def wait_ready(self, seconds: float = 120) -> None:
        """Waits for the instance to accept connections (the cluster tests share it and may
        restart or kill it); starts it again when it stays down."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if subprocess.run([str(self.bin / "pg_isready"), "-q", "-d", self.url], timeout=30).returncode == 0:
                return
            time.sleep(1)
        log("PostgreSQL stayed down: scripts/postgres.sh start")
        run([str(POSTGRES_SH), "start"], timeout=900)

    def url_of(self, database: str) -> str:
        return self.url.rsplit("/", 1)[0] + "/" + database

    def sql(self, statement: str, database: str | None = None) -> str:
        return run([str(self.bin / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-tA",
                    "-d", self.url_of(database) if database else self.url, "-c", statement]).stdout.strip()

    def create(self, database: str) -> str:
        self.sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        self.sql(f'CREATE DATABASE "{database}"')
        self.created.append(database)
        return self.url_of(database)

    def drop(self, database: str) -> None:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                self.sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
                break
            except Unmeasured as error:
                if attempt == ATTEMPTS:
                    log(f"could not drop {database}: {error}")
                else:
                    self.wait_ready()
        if database in self.created:
            self.created.remove(database)

    def drop_all(self) -> None:
        for database in list(self.created):
            self.drop(database)


# ---------------------------------------------------------------------------------------
# The two measurements


ATTEMPTS = 3


def retried(pg: Postgres, what: str, results: dict, measure):
    """`measure()`, tried again (up to ATTEMPTS in all) once the database accepts connections
    when it fails: the instance is shared with the cluster tests, which restart and kill it.
    A measurement that failed is discarded whole, never mixed with the next."""
    for attempt in range(1, ATTEMPTS + 1):
        pg.wait_ready()
        try:
            return measure()
        except (Unmeasured, ValueError, KeyError) as error:
            if attempt == ATTEMPTS:
                raise Unmeasured(f"{what}: {error}") from error
            log(f"{what} failed, measuring it again: {str(error)[:300]}")
            results["retries"].append({"what": what, "error": str(error)[:500]})
            time.sleep(3)
    raise AssertionError("unreachable")


def talkie_run(pg: Postgres, talkie: str, database: str, workers: list[int], items: int) -> dict[int, dict]:
    """One `talkie store benchmark` over every worker count, on a fresh database."""
    url = pg.create(database)
    command = [talkie, "store", "benchmark", "--store", url, "--workers", ",".join(map(str, workers)),
               "--items", str(items), "--json"]
    try:
        result = run(command)
    finally:
        pg.drop(database)
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip().startswith("{")]
    by_workers = {line["workers"]: line for line in lines}
    if sorted(by_workers) != sorted(workers):
        raise Unmeasured(f"talkie store benchmark printed results for {sorted(by_workers)}, not {workers}: {result.stdout[-800:]}")
    return by_workers


def pgbench_run(pg: Postgres, database: str, clients: int, seconds: int, logs: Path) -> dict:
    """`pgbench -c N -j N -T S -N`: tps (without the connection time) and each transaction's
    latency from its per-transaction log."""
    logs.mkdir(parents=True, exist_ok=True)
    for old in logs.glob("pgbench*"):
        old.unlink()
    prefix = logs / "pgbench"
    result = run([str(pg.bin / "pgbench"), "-c", str(clients), "-j", str(clients), "-T", str(seconds), "-N",
                  "-l", f"--log-prefix={prefix}", pg.url_of(database)], timeout=seconds + 300)
    tps = None
    for line in result.stdout.splitlines():
        # "tps = 512.3 (without initial connection time)" (PostgreSQL 14+)
        if line.startswith("tps = ") and "without" in line:
            tps = float(line.split()[2])
    failed = next((int(line.split(":")[1].split()[0]) for line in result.stdout.splitlines()
                   if line.startswith("number of failed transactions:")), 0)
    latencies = []
    for path in logs.glob("pgbench*"):
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3:
                latencies.append(int(fields[2]) / 1000)  # µs → ms
    if tps is None or not latencies:
        raise Unmeasured(f"pgbench printed no tps or logged no transaction: {result.stdout[-800:]}{result.stderr[-800:]}")
    return {"clients": clients, "seconds": seconds, "tps": tps, "transactions": len(latencies), "failed": failed,
            "p50_ms": percentile(latencies, 0.5), "p99_ms": percentile(latencies, 0.99)}


# ---------------------------------------------------------------------------------------
# The report


def shown_path(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return path


def command_line() -> str:
    python = ".venv/bin/python" if Path(sys.prefix).resolve() == (ROOT / ".venv").resolve() else "python3"
    args = list(sys.argv[1:])
    for flag in ("--out", "--work", "--talkie"):  # machine paths: left out of the shown command
        while flag in args:
            index = args.index(flag)
            del args[index:index + 2]
    return f"{python} Benchmarks/cluster.py {shlex.join(args)}".rstrip() + " --out DIR"


def summarize(results: dict) -> dict:
    workers = results["workers"]
    summary = {}
    for count in workers:
        talkie = [run_[count] for run_ in results["talkie_runs"]]
        bench = [run_[count] for run_ in results["pgbench_runs"]]
        summary[count] = {
            "items_per_s": [t["itemsPerSecond"] for t in talkie],
            "claim_p50": statistics.median(t["claimP50"] for t in talkie),
            "claim_p99": statistics.median(t["claimP99"] for t in talkie),
            "commit_p50": statistics.median(t["commitP50"] for t in talkie),
            "commit_p99": statistics.median(t["commitP99"] for t in talkie),
            "duplicates": sum(t["duplicates"] for t in talkie),
            "items": sum(t["items"] for t in talkie),
            "tps": [b["tps"] for b in bench],
            "pg_p50": statistics.median(b["p50_ms"] for b in bench),
            "pg_p99": statistics.median(b["p99_ms"] for b in bench),
            "pg_failed": sum(b["failed"] for b in bench),
        }
        summary[count]["items_median"] = statistics.median(summary[count]["items_per_s"])
        summary[count]["tps_median"] = statistics.median(summary[count]["tps"])
    return summary


def report(results: dict, quick: bool) -> str:
    workers, summary = results["workers"], results["summary"]
    first, last = workers[0], workers[-1]
    base_items, base_tps = summary[first]["items_median"], summary[first]["tps_median"]
    runs, items = results["runs"], results["items"]
    label = f"median of {runs} (min–max)" if runs > 1 else "1 run"
    rows = []
    for count in workers:
        s = summary[count]
        rows.append([f"Talkie, {count} worker{'s' if count > 1 else ''}: items/s", spread(s["items_per_s"]),
                     f"{s['items_median'] / base_items:.2f}×",
                     f"{sig(s['claim_p50'])} / {sig(s['claim_p99'])}", f"{sig(s['commit_p50'])} / {sig(s['commit_p99'])}",
                     str(s["duplicates"]) if s["duplicates"] == 0 else f"**{s['duplicates']}**",
                     f"{s['items_median'] / s['tps_median']:.2f}× (transactions: {2 * s['items_median'] / s['tps_median']:.2f}×)"])
    for count in workers:
        s = summary[count]
        rows.append([f"baseline `pgbench -N`, {count} client{'s' if count > 1 else ''}: transactions/s", spread(s["tps"]),
                     f"{s['tps_median'] / base_tps:.2f}×", f"transaction: {sig(s['pg_p50'])} / {sig(s['pg_p99'])}", "–", "–", "–"])
    grows = summary[last]["items_median"] > summary[first]["items_median"]
    peak = max(workers, key=lambda count: summary[count]["items_median"])
    pg_grows = summary[last]["tps_median"] / base_tps
    what = "quick mode (1 run of tiny size: proves the benchmark runs; the figures mean little): " if quick else ""
    lines = ["## Cluster mode: claims and commits in PostgreSQL", "",
             f"`{command_line()}` — {what}items claimed and committed per second by `talkie store benchmark` "
             f"(a null engine: the claim and the commit under the lease, no media) as workers grow from {first} to {last} "
             f"on the database's own machine, {items:,} items per worker count, {label}; latencies are the median over "
             f"runs of each run's p50 and p99. Baseline in the same run: pgbench's built-in simple-update transaction "
             f"(`pgbench -c N -j N -T {results['pgbench_seconds']} -N`) with as many clients, on the same instance.", "",
             "| workers | items/s median (min–max) | ratio vs 1 worker | claim p50 / p99 ms | commit p50 / p99 ms | claimed twice | vs `pgbench -N` tps, same clients |",
             "|---|---:|---:|---:|---:|:-:|---:|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines.append("")
    claim_ratio = ", ".join(f"{summary[c]['claim_p99'] / summary[c]['pg_p99']:.1f}× at {c}" for c in workers)
    notes = [
        f"Target: issue 8 names no number. Throughput grows from {first} to {last} workers: "
        + (f"yes, {summary[last]['items_median'] / base_items:.2f}× ({sig(base_items)} → {sig(summary[last]['items_median'])} items/s; "
           if grows else f"**no**, {summary[last]['items_median'] / base_items:.2f}× ({sig(base_items)} → {sig(summary[last]['items_median'])} items/s; ")
        + f"the most at {peak} worker{'s' if peak > 1 else ''}). pgbench's rate from {first} to {last} client"
        f"{'s' if last > 1 else ''}, for comparison: {pg_grows:.2f}×. No item was claimed twice: " + ("yes" if all(summary[c]["duplicates"] == 0 for c in workers) else "**no** (see the table)") + ".",
        "What each measures. One Talkie item is two transactions, each on its worker's own connection (PostgresNIO) "
        "and each a commit that waits for the WAL fsync: the claim (`BEGIN`; read the batch row; `SELECT … FOR UPDATE "
        "SKIP LOCKED` the next pending item; `UPDATE` it to running under a new lease token; `pg_notify` the "
        "item_started event; `COMMIT`: six round trips) and the commit (`BEGIN`; `UPDATE` the item naming its lease "
        "token; `pg_notify` the item_succeeded event; `COMMIT`: four). Claim and commit latencies are each "
        "transaction's whole time as the worker sees it, from the first statement to the commit's answer. A "
        "`pgbench -N` transaction (its built-in \"simple update\") is one commit of five statements: `BEGIN`; "
        "`UPDATE` pgbench_accounts; `SELECT` its balance; `INSERT` into pgbench_history; `END` (scale 1, 100,000 "
        "accounts, simple query protocol); its latency comes from pgbench's per-transaction log (`-l`), its tps "
        "excludes connection time. So the last column is Talkie's items/s ÷ pgbench's tps, and in brackets "
        "Talkie's transactions/s (2 per item) ÷ pgbench's tps: how much of the database's own commit rate the "
        "claim protocol gets with as many clients.",
        f"The p99 claim latency against the p99 of a pgbench transaction with as many clients: {claim_ratio}.",
        f"All on one machine ({os.cpu_count()} cores, shared with other work): the workers are tasks of one "
        f"`talkie store benchmark` process (each with its own connection, as separate `talkie worker` processes "
        f"have), beside the PostgreSQL server and its fsyncs (fsync on, synchronous_commit on, the data folder on "
        f"{results['data_fs']}); so more workers also means more processes sharing {os.cpu_count()} cores, and "
        f"the commit rate is bounded by the disk's fsync latency (group commit lets concurrent transactions share one).",
        f"Database: {results['postgres_version']} (settings: {results['postgres_settings']}). Talkie "
        f"{results['talkie_version']}, `{shown_path(results['talkie_binary'])}`. Each Talkie run had a fresh database "
        f"(CREATE DATABASE, dropped after); the worker counts run in turn in it, and Talkie and pgbench runs "
        f"alternate. Load average {results['loadavg_start']} at the start and {results['loadavg_end']} at the end on "
        f"{os.cpu_count()} cores.",
    ]
    if results["retries"]:
        notes.append(f"{len(results['retries'])} measurement(s) failed and were measured again from the start (the instance "
                     "is shared with the cluster tests, which restart and kill it): "
                     + "; ".join(r["what"] for r in results["retries"]) + ".")
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 run of 100 items, 1 and 2 workers: proves the benchmark still runs")
    parser.add_argument("--out", type=Path, required=True, help="folder for cluster.md and cluster.json")
    parser.add_argument("--work", type=Path, default=Path("/tmp/talkie-bench-cluster"), help="scratch folder (pgbench's logs)")
    parser.add_argument("--talkie", default=os.environ.get("TALKIE_BINARY", str(ROOT / ".build" / "release" / "talkie")))
    args = parser.parse_args()
    if not Path(args.talkie).exists():
        parser.error(f"no talkie binary at {args.talkie}: build it (swift build -c release --product talkie) or pass --talkie")
    workers, items, runs, seconds = ([1, 2], 100, 1, 3) if args.quick else ([1, 2, 4, 8], 2000, 3, 5)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}"
    results: dict = {"mode": "quick" if args.quick else "full", "workers": workers, "items": items, "runs": runs,
                     "pgbench_seconds": seconds, "talkie_binary": args.talkie, "command": command_line(),
                     "loadavg_start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
                     "talkie_runs": [], "pgbench_runs": [], "retries": []}
    pg = None
    try:
        log(f"{results['mode']} mode: starting the private PostgreSQL (scripts/postgres.sh start)")
        pg = Postgres()
        results["postgres_version"] = pg.sql("SELECT version()").split(" on ")[0]
        results["postgres_settings"] = ", ".join(f"{name} {pg.sql(f'SHOW {name}')}" for name in
                                                 ("fsync", "synchronous_commit", "wal_sync_method", "shared_buffers", "max_connections"))
        data = os.environ.get("TALKIE_PG_DIR", "/tmp/talkie-postgres")
        fs = subprocess.run(["df", "--output=fstype", data], capture_output=True, text=True).stdout.split()[-1:]
        results["data_fs"] = f"{' '.join(fs) or '?'} (`{data}`)"
        results["talkie_version"] = run([args.talkie, "--version"]).stdout.strip()
        pgbench_db = f"talkie_bench_pgbench_{tag}"
        log(f"pgbench -i into {pgbench_db}")
        retried(pg, "pgbench -i", results, lambda: (pg.create(pgbench_db),
                run([str(pg.bin / "pgbench"), "-i", "-q", pg.url_of(pgbench_db)], timeout=600)))
        for number in range(1, runs + 1):
            database = f"talkie_bench_cluster_{tag}_{number}"
            log(f"run {number}/{runs}: talkie store benchmark --workers {','.join(map(str, workers))} --items {items}")
            by_workers = retried(pg, f"run {number}: talkie store benchmark", results,
                                 lambda: talkie_run(pg, args.talkie, database, workers, items))
            results["talkie_runs"].append(by_workers)
            for count in workers:
                t = by_workers[count]
                log(f"  {count} workers: {t['itemsPerSecond']:.1f} items/s, claim p99 {t['claimP99']:.1f} ms, {t['duplicates']} twice")
            bench = {}
            for count in workers:
                bench[count] = retried(pg, f"run {number}: pgbench -c {count}", results,
                                       lambda: pgbench_run(pg, pgbench_db, count, seconds, args.work / "pgbench-logs"))
                log(f"  pgbench -N -c {count}: {bench[count]['tps']:.1f} tps, p99 {bench[count]['p99_ms']:.1f} ms")
            results["pgbench_runs"].append(bench)
    except Unmeasured as error:
        log(f"NOT MEASURED: {error}")
        results["error"] = str(error)
    finally:
        if pg is not None:
            pg.drop_all()
    results["loadavg_end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    results["seconds"] = time.monotonic() - STARTED
    complete = "error" not in results and len(results["talkie_runs"]) == runs
    if complete:
        results["summary"] = summarize(results)
    (args.out / "cluster.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    if not complete:
        return 1
    (args.out / "cluster.md").write_text(report(results, args.quick))
    log(f"wrote {args.out / 'cluster.md'} and cluster.json in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
