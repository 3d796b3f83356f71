"""Talkie under strace: fault injection at chosen system calls, and the trace read back.

Shared by the syscall_kills and io_errors suites (not a suite itself: no `run`).

Two facts shape how the calls are aimed at:
- strace counts the calls for `when=N` per syscall and per thread (strace(1): "Accounting of
  syscalls that are subject to injection is done per syscall and per tracee"), so `when=N` is
  "the first thread to make its Nth such call", not "the Nth such call of the process".
- Swift's cooperative thread pool, which runs all of the runner's actor code (every journal,
  snapshot, output and run-log write), is as wide as the CPUs the process may use. Pinned to
  one CPU it has a single thread, so those calls are made by one thread in one order, and that
  thread's count is the process's order of them. Talkie's only other writing thread copies
  an engine's stderr into `.talkie/logs/`. Both ways of starting talkie here pin it to one CPU.
  Rarely (about 2 runs in 100 on a loaded machine) libdispatch adds a second pool thread while
  the first is blocked; then a count can miss its call. So the suites never assume the aim:
  they read back from the trace which call was hit (`identities`, counted per process).

Paths that hold talkie's pid (`task_status.json.tmp-<pid>`) can only be named to strace's
path filter (-P) when the pid is known before the run: `run_attached` starts talkie stopped,
attaches strace to that pid, then lets it go.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .. import harness

# Every call that changes a file's content or name; the suites use those talkie makes.
TRACED = ("write", "pwrite64", "writev", "pwritev", "pwritev2", "fsync", "fdatasync", "sync_file_range",
          "rename", "renameat", "renameat2", "link", "linkat", "unlink", "unlinkat", "ftruncate", "truncate")


def missing_tools() -> list[str]:
    return [name for name in ("strace", "taskset") if shutil.which(name) is None]


def tools_ready(ctx: harness.Context) -> bool:
    """True when strace and taskset are here; otherwise a failed case says what to install."""
    missing = missing_tools()
    if missing:
        with ctx.case("tools") as case:
            case.fail(f"{', '.join(missing)} not installed (apt-get install strace util-linux)")
    return not missing


def pinned_cpu() -> int:
    """The CPU talkie is pinned to: the last one this process may use."""
    return max(os.sched_getaffinity(0))


def prefix(log: Path, inject: str | None = None, paths: tuple[str, ...] = ()) -> list[str]:
    """Goes before the talkie command: pinned to one CPU, traced with its threads; children
    that exec (engine, ffmpeg) are let go at their exec (-b execve), so faults hit talkie only."""
    command = ["taskset", "-c", str(pinned_cpu()), "strace", "-f", "-b", "execve", "-qq", "-y", "-s", "4096",
               "-e", "trace=" + ",".join(TRACED), "-o", str(log)]
    if inject:
        command += ["-e", "inject=" + inject]
    for path in paths:
        command += ["-P", path]
    return command


# Started by `run_attached`: pins itself, allows any tracer (Yama), stops, and becomes talkie.
_LAUNCHER = """
import ctypes, os, signal, sys
os.sched_setaffinity(0, {int(sys.argv[1])})
ctypes.CDLL(None).prctl(0x59616d61, ctypes.c_ulong(-1), 0, 0, 0)  # PR_SET_PTRACER, PR_SET_PTRACER_ANY
os.kill(os.getpid(), signal.SIGSTOP)
os.execv(sys.argv[2], sys.argv[2:])
"""


def _proc_field(pid: int, name: str) -> str | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def run_attached(args: list[str], env: dict[str, str], log: Path, inject: str,
                 paths_for_pid, timeout: float = 180) -> tuple[subprocess.CompletedProcess, int]:
    """Runs talkie with `args` under strace injection whose -P paths may name talkie's pid:
    `paths_for_pid(pid)` gives them. Returns the finished process and talkie's pid.
    Children are traced too (strace cannot let go at exec here) but never match the paths."""
    talkie = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(pinned_cpu()), harness.talkie_bin(), *args],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                              start_new_session=True, text=True, errors="replace")
    tracer = None
    try:
        if not harness.wait_for(lambda: (_proc_field(talkie.pid, "State") or "").startswith("T"), 30, step=0.01):
            raise RuntimeError("the launcher did not stop itself")
        command = ["strace", "-f", "-qq", "-y", "-s", "4096", "-e", "trace=" + ",".join(TRACED),
                   "-e", "inject=" + inject, "-o", str(log), "-p", str(talkie.pid)]
        for path in paths_for_pid(talkie.pid):
            command += ["-P", path]
        tracer = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True)
        if not harness.wait_for(lambda: _proc_field(talkie.pid, "TracerPid") not in (None, "0") or tracer.poll() is not None, 30, step=0.01):
            raise RuntimeError("strace did not attach")
        if tracer.poll() is not None:
            raise RuntimeError(f"strace could not attach: {tracer.stderr.read()[-500:]}")
        os.kill(talkie.pid, signal.SIGCONT)
        stdout, stderr = talkie.communicate(timeout=timeout)
        tracer.wait(timeout=60)  # it ends when the last traced process (an engine worker) has ended
        return subprocess.CompletedProcess(talkie.args, talkie.returncode, stdout, stderr), talkie.pid
    finally:
        for process in (talkie, tracer):
            if process is not None and process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


# ---------------------------------------------------------------------------------------
# Reading the trace


@dataclass(eq=False)   # two calls with the same text are still two calls (list.index must find this one)
class Call:
    """One traced system call."""

    tid: int
    name: str
    paths: tuple[str, ...]   # the file of its descriptor (strace -y) or its path arguments
    line: str                # as strace printed it (the result is added when it was split)
    result: str = ""         # "0", "?", "-1 EIO (Input/output error) (INJECTED)", ...
    fd: int | None = None    # its descriptor, for calls on one

    @property
    def injected_error(self) -> bool:
        return "(INJECTED)" in self.result

    def where(self, out: Path) -> str:
        """Its file(s), with the output folder as OUT and pids, random names as placeholders:
        the same call of another run (another folder, pid) gets the same text."""
        if self.fd in (1, 2) and self.paths and not self.paths[0].startswith("/"):
            return "stdout" if self.fd == 1 else "stderr"
        return " -> ".join(normalize(path, out) for path in self.paths)

    def describe(self, out: Path) -> str:
        return f"{self.name}({self.where(out)})"


_CALL = re.compile(r"^(\d+)\s+([a-z0-9_]+)\((.*)$")
_RESUMED = re.compile(r"^(\d+)\s+<\.\.\. ([a-z0-9_]+) resumed>(.*)$")
_FD_PATH = re.compile(r"^(-?\d+|AT_FDCWD)<([^>]*)>")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
_PATH_CALLS = {"rename", "renameat", "renameat2", "link", "linkat", "unlink", "unlinkat", "truncate"}


_RESULT = re.compile(r"\)\s+= ([^=]*)$")


def _result(rest: str) -> str:
    match = _RESULT.search(rest)
    return match.group(1).strip() if match else ""


def clean_trace(ctx: harness.Context, start: harness.Start, *run_args: str) -> tuple[list[Call], Path] | None:
    """The calls of a clean traced `talkie run` from the start state, with `run_args` as the
    faulted runs will have them (itself a case: it must succeed, render every item once,
    and keep what the start state held)."""
    with ctx.case(f"{start.name}: clean traced run") as case:
        folder = ctx.scratch(f"{start.name}-clean")
        batch = start.batch(folder)
        env = batch.env(ctx)
        ledger = harness.Ledger(batch)
        if start.prepared is not None:
            ledger.observe(killed=False, env=env)
        log = folder / "strace.log"
        result = harness.run_talkie(batch.run_args(*run_args), env=env, timeout=180, prefix=prefix(log))
        case.require(result.returncode == 0, f"a clean traced run exited {result.returncode}: {result.stderr[-500:]}")
        for problem in ledger.observe(killed=False, env=env) + ledger.all_done(env=env, expected=3):
            case.fail(problem)
        counts = harness.render_counts(batch.engine_log)
        case.check(all(value == 1 for value in counts.values()), f"a clean run rendered an item twice: {dict(counts)}")
        calls = read_calls(log)
        case.require(len(calls) > 10, f"strace saw only {len(calls)} calls: {log}")
        return calls, batch.out
    return None


def read_calls(log: Path) -> list[Call]:
    """The traced calls of a strace -f -y log, in the order they started."""
    calls: list[Call] = []
    pending: dict[int, Call] = {}
    if not log.exists():
        return calls
    for line in log.read_text(errors="replace").splitlines():
        match = _CALL.match(line)
        if match:
            tid, name, rest = int(match.group(1)), match.group(2), match.group(3)
            if name in _PATH_CALLS:
                paths = tuple(_unescape(s) for s in _STRING.findall(rest))
            else:
                fd = _FD_PATH.match(rest)
                paths = (_unescape(fd.group(2)),) if fd else ()
            call = Call(tid, name, paths, line)
            if name not in _PATH_CALLS and fd and fd.group(1).lstrip("-").isdigit():
                call.fd = int(fd.group(1))
            if rest.endswith("<unfinished ...>"):
                pending[tid] = call
            else:
                call.result = _result(rest)
            calls.append(call)
            continue
        match = _RESUMED.match(line)
        if match and int(match.group(1)) in pending:
            call = pending.pop(int(match.group(1)))
            call.result = _result(match.group(3))
            call.line += " ... " + match.group(3).strip()
    return calls


def _unescape(text: str) -> str:
    return text.replace('\\"', '"').replace("\\\\", "\\")


_NORMALIZE = [
    (re.compile(r"\.tmp-[0-9A-F]{8}(?=\.)"), ".tmp-RANDOM"),      # Foundation/AudioPreprocessor temp names
    (re.compile(r"\.tmp-\d+(?![0-9A-Za-z])"), ".tmp-PID"),          # talkie's atomic replace
    (re.compile(r"\.dat\.nosync[0-9A-Fa-f]+\.[0-9A-Za-z]+"), ".dat.nosync-TEMP"),
    (re.compile(r"-[0-9A-F]{8}(?=\.)"), "-RANDOM"),                  # an engine attempt's output
    (re.compile(r"^(pipe|socket):\[\d+\]$"), r"\1"),
    (re.compile(r"^/dev/pts/\d+$"), "/dev/pts"),
]


def normalize(path: str, out: Path) -> str:
    text = path.replace(str(out), "OUT") if path != str(out.parent) else "OUT/.."
    for pattern, replacement in _NORMALIZE:
        text = pattern.sub(replacement, text)
    return text


def filter_for(path: str, out: Path) -> str | None:
    """A -P path for `path` in another run: "{out}" stands for the output folder, "{pid}" for
    talkie's pid (see run_attached). None when a part of its name is random."""
    if path == str(out.parent):
        return "{out}/.."
    if not path.startswith("/"):
        return None
    if normalize(path, out) != re.sub(r"\.tmp-\d+$", ".tmp-PID", path.replace(str(out), "OUT")):
        return None
    return re.sub(r"\.tmp-\d+$", ".tmp-{pid}", path).replace(str(out), "{out}")


def expand(template: str, out: Path, pid: int | None = None) -> str:
    """The path a `filter_for` template stands for in a run with folder `out` (and `pid`)."""
    path = template.replace("{out}", str(out))
    if pid is not None:
        path = path.replace("{pid}", str(pid))
    return os.path.normpath(path)


def pool_threads(calls: list[Call], out: Path) -> set[int]:
    """The cooperative pool's threads: all but those that only copy an engine's stderr into
    .talkie/logs/."""
    def copier_call(call: Call) -> bool:
        return call.name == "write" and call.where(out).startswith("OUT/.talkie/logs/")
    return {call.tid for call in calls if not copier_call(call)}


def aim_index(calls: list[Call], target: Call, out: Path, same) -> int:
    """`when=N` for `target` among the calls `same` accepts: counted over the pool's threads
    together (what its one thread makes when the pool has one; a clean run that happened to
    get a second pool thread would otherwise give a wrong N), or in the target's own thread
    when that is not a pool thread."""
    pool = pool_threads(calls, out)
    group = pool if target.tid in pool else {target.tid}
    return sum(1 for call in calls[:calls.index(target) + 1] if call.tid in group and same(call))


def per_name_counts(calls: list[Call], out: Path) -> dict[str, int]:
    """Syscall name -> the `when=N` range: the pool's calls of it (its threads together), or
    another thread's, whichever is more."""
    pool = pool_threads(calls, out)
    counts: dict[tuple, int] = {}
    for call in calls:
        group = "pool" if call.tid in pool else call.tid
        counts[(group, call.name)] = counts.get((group, call.name), 0) + 1
    best: dict[str, int] = {}
    for (_, name), count in counts.items():
        best[name] = max(best.get(name, 0), count)
    return best


def nth_of_thread(calls: list[Call], name: str, n: int) -> list[Call]:
    """The calls that were some thread's nth call of `name` (what `when=n` aims at)."""
    seen: dict[int, int] = {}
    found = []
    for call in calls:
        if call.name == name:
            seen[call.tid] = seen.get(call.tid, 0) + 1
            if seen[call.tid] == n:
                found.append(call)
    return found


def killed_call(calls: list[Call], name: str, n: int) -> Call | None:
    """The call a `NAME:signal=KILL:when=n` injection stopped: a thread's nth call of that
    name that never returned."""
    candidates = [call for call in nth_of_thread(calls, name, n) if call.result in ("?", "")]
    return candidates[0] if candidates else None


def identities(calls: list[Call], out: Path) -> list[tuple[Call, tuple[str, str, int]]]:
    """Each call with its identity across runs: (name, file, k) for the process's kth such
    call on that file. Counted over all threads: the pool may, rarely, add a second thread
    (libdispatch does when its one thread blocks), and the runner's calls are still in order."""
    seen: dict[tuple[str, str], int] = {}
    result = []
    for call in calls:
        where = call.where(out)
        seen[(call.name, where)] = seen.get((call.name, where), 0) + 1
        result.append((call, (call.name, where, seen[(call.name, where)])))
    return result


def identity_of(calls: list[Call], target: Call, out: Path) -> tuple[str, str, int]:
    for call, identity in identities(calls, out):
        if call is target:
            return identity
    raise ValueError("call not in the trace")
