"""A FUSE pass-through file system that forgets what was not synced, like LazyFS (the one
Jepsen uses), for the power_loss suite.

    python3 reliability/suites/lazyfs.py BACKING MOUNTPOINT --control SOCKET --state DIR

Everything seen through MOUNTPOINT is BACKING, except that

- data written to a file is kept in memory (this process plays the page cache) until an
  fsync or fdatasync of that file writes it to BACKING; reads see the cached data;
- metadata operations (create, mkdir, link, symlink, unlink, rmdir, rename, truncate,
  chmod, utimens) reach BACKING at once;
- and yet un-synced directory entries can be lost: the first change to a directory after
  mount (or after its last fsync) records its listing as it was, and every file a durable
  name pointed at is kept alive by a hard link in the state folder, so that a crash can
  put the durable listing back.

A power cut, asked for on the control socket (`crash`), freezes the file system (from then
on every operation fails with EIO and nothing reaches BACKING), drops every un-synced byte,
and then treats un-synced directory changes by a policy: `keep` (they survive, as in
LazyFS: a renamed file survives under its new name, possibly without its data), `rollback`
(every directory not fsynced since its last change gets its durable listing back: new names
vanish, removed or replaced names come back with their old file), or `mixed` (a seeded coin
per directory; directories joined by a rename between them share their fate). Mounting
again over BACKING then shows what survived. A clean unmount writes everything (as a real
file system does).

What it does not model: partial writeback (un-synced data of a file is lost whole, never
half of it: no torn pages, no reordering of writes within a file), truncate and attribute
changes are durable at once (never lost), directory renames and rmdir are durable at once,
and no corruption of synced data. BACKING's own durability is trusted (its data is not
fsynced: the test is about what the program asked for, not the disk below).

Operations can also be counted and a cut armed for the N-th one of a kind (`arm`): the
file system freezes just before it, so cuts land exactly between, say, an fsync and the
rename that follows it.

Control socket: one JSON request per connection, one JSON answer:
  {"cmd": "ping"} | {"cmd": "stats"} | {"cmd": "arm", "kind": K, "after": N} | {"cmd": "disarm"}
  {"cmd": "freeze"} | {"cmd": "crash", "policy": "keep"|"rollback"|"mixed", "seed": S}
Kinds: write, fsync (files and folders), rename, create (create, mknod, mkdir, link,
symlink), unlink (unlink, rmdir), truncate, and mutate (any of them).

Needs libfuse 3 (Debian: fuse3) and the `mfusepy` binding (PyPI); the suite imports
`LazyMount` from here, which starts this file as a separate process.
"""
from __future__ import annotations

import collections
import contextlib
import errno
import json
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

KINDS = ("write", "fsync", "rename", "create", "unlink", "truncate")
POLICIES = ("keep", "rollback", "mixed")


# ---------------------------------------------------------------------------------------
# The file system (runs in its own process)


def serve(backing: str, mountpoint: str, control: str, state: str) -> None:
    import mfusepy  # only the daemon needs the binding

    def oserror(code: int) -> OSError:
        return mfusepy.FuseOSError(code)

    class Dirty:
        """Un-synced content of one file (by backing inode)."""

        def __init__(self, fd: int, data: bytearray):
            self.fd = fd  # a writable descriptor of the backing file, for the flush
            self.data = data
            self.mtime_ns = time.time_ns()

    class LazyFS(mfusepy.Operations):
        use_ns = True

        def __init__(self):
            self.root = os.path.realpath(backing)
            self.graveyard = os.path.join(state, "graveyard")
            shutil.rmtree(self.graveyard, ignore_errors=True)  # links of an earlier mount: inode numbers get reused
            os.makedirs(self.graveyard)
            self.mutex = threading.Lock()
            self.handles: dict[int, tuple[int, int]] = {}  # fh -> (backing fd, inode)
            self.open_count: collections.Counter = collections.Counter()  # inode -> open handles
            self.dirty: dict[int, Dirty] = {}
            self.durable: dict[str, dict[str, tuple[int, bool]]] = {}  # folder -> durable listing
            self.joined: list[tuple[str, str]] = []  # folders joined by a rename since the last cut
            self.counts: collections.Counter = collections.Counter()
            self.armed: tuple[str, int] | None = None
            self.frozen = False
            self.crashed = False
            self.next_fh = 1
            self.dir_handles: dict[int, str] = {}

        # -- helpers ------------------------------------------------------------------

        def real(self, path: str) -> str:
            return self.root + path if path != "/" else self.root

        def check(self, kind: str | None = None) -> None:
            """Called (with the lock held) first by every operation: refuses once frozen,
            counts mutations, and freezes at an armed count."""
            if self.frozen:
                raise oserror(errno.EIO)
            if kind is None:
                return
            for name in (kind, "mutate"):
                self.counts[name] += 1
                if self.armed and self.armed[0] == name and self.counts[name] >= self.armed[1]:
                    self.frozen = True
                    self.armed = None
                    raise oserror(errno.EIO)

        def new_fh(self, fd: int, ino: int) -> int:
            fh = self.next_fh
            self.next_fh += 1
            self.handles[fh] = (fd, ino)
            self.open_count[ino] += 1
            return fh

        def touch_dir(self, folder: str) -> None:
            """Records the durable listing of `folder` before its first un-synced change."""
            if folder in self.durable:
                return
            listing = {}
            with os.scandir(self.real(folder)) as entries:
                for entry in entries:
                    st = entry.stat(follow_symlinks=False)
                    listing[entry.name] = (st.st_ino, stat.S_ISDIR(st.st_mode))
            self.durable[folder] = listing

        def keep_durable(self, path: str) -> None:
            """Before `path` is removed or replaced: if its name is durable, keep its file
            alive in the graveyard so that a rollback can put it back."""
            folder, name = os.path.split(path)
            self.touch_dir(folder)
            entry = self.durable[folder].get(name)
            if entry is None or entry[1]:
                return
            with contextlib.suppress(FileNotFoundError):
                if os.lstat(self.real(path)).st_ino == entry[0]:
                    grave = os.path.join(self.graveyard, str(entry[0]))
                    if not os.path.lexists(grave):
                        os.link(self.real(path), grave, follow_symlinks=False)

        def forget_if_gone(self, ino: int) -> None:
            dirty = self.dirty.get(ino)
            if dirty and self.open_count[ino] == 0 and os.fstat(dirty.fd).st_nlink == 0:
                os.close(dirty.fd)
                del self.dirty[ino]

        def dirty_of(self, fd: int, ino: int) -> Dirty:
            dirty = self.dirty.get(ino)
            if dirty is None:
                size = os.fstat(fd).st_size
                data = bytearray()
                while len(data) < size:
                    chunk = os.pread(fd, size - len(data), len(data))
                    if not chunk:
                        break
                    data += chunk
                dirty = self.dirty[ino] = Dirty(os.dup(fd), data)
            return dirty

        def flush_inode(self, ino: int) -> None:
            dirty = self.dirty.pop(ino, None)
            if dirty is None:
                return
            view = memoryview(dirty.data)
            offset = 0
            while offset < len(view):
                offset += os.pwrite(dirty.fd, view[offset:offset + (1 << 20)], offset)
            os.ftruncate(dirty.fd, len(dirty.data))
            os.close(dirty.fd)

        def resolve(self, path: str | None, fh: int | None) -> tuple[int | None, str | None]:
            """(backing fd or None, real path or None) of an operation's target."""
            if fh is not None and fh in self.handles:
                return self.handles[fh][0], None
            if path is None:
                raise oserror(errno.ESTALE)
            return None, self.real(path)

        # -- attributes and reading -----------------------------------------------------

        def getattr(self, path, fh=None):
            with self.mutex:
                self.check()
                fd, real = self.resolve(path, fh)
                st = os.fstat(fd) if fd is not None else os.lstat(real)
                attrs = {key: getattr(st, key) for key in ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid",
                                                           "st_size", "st_blocks", "st_blksize")}
                attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
                dirty = self.dirty.get(st.st_ino) if stat.S_ISREG(st.st_mode) else None
                if dirty is not None:
                    attrs["st_size"] = len(dirty.data)
                    attrs["st_blocks"] = (len(dirty.data) + 511) // 512
                    attrs["st_mtime"] = max(st.st_mtime_ns, dirty.mtime_ns)
                return attrs

        def access(self, path, amode):
            with self.mutex:
                self.check()
                if not os.path.lexists(self.real(path)):
                    raise oserror(errno.ENOENT)
                return 0

        def readlink(self, path):
            with self.mutex:
                self.check()
                return os.readlink(self.real(path))

        def statfs(self, path):
            st = os.statvfs(self.root)
            return {key: getattr(st, key) for key in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                                                      "f_files", "f_ffree", "f_favail", "f_flag", "f_namemax")}

        def opendir(self, path):
            with self.mutex:
                self.check()
                fh = self.next_fh
                self.next_fh += 1
                self.dir_handles[fh] = path
                return fh

        def releasedir(self, path, fh):
            with self.mutex:
                self.dir_handles.pop(fh, None)
                return 0

        def readdir(self, path, fh):
            with self.mutex:
                self.check()
                folder = self.dir_handles.get(fh, path)
                if folder is None:
                    raise oserror(errno.ESTALE)
                # With use_ino every entry needs its inode number (readdir skips inode 0).
                real = self.real(folder)
                entries = []
                for name, path in ((".", real), ("..", os.path.dirname(real))):
                    st = os.lstat(path)
                    entries.append((name, {"st_ino": st.st_ino, "st_mode": st.st_mode}, 0))
                with os.scandir(real) as listing:
                    for entry in listing:
                        st = entry.stat(follow_symlinks=False)
                        entries.append((entry.name, {"st_ino": st.st_ino, "st_mode": st.st_mode}, 0))
                return entries

        def read(self, path, size, offset, fh):
            with self.mutex:
                self.check()
                fd, ino = self.handles[fh]
                dirty = self.dirty.get(ino)
                if dirty is not None:
                    return bytes(dirty.data[offset:offset + size])
                return os.pread(fd, size, offset)

        # -- opening and writing ----------------------------------------------------------

        @staticmethod
        def backing_flags(flags: int) -> int:
            access_mode = flags & os.O_ACCMODE
            wanted = os.O_RDONLY if access_mode == os.O_RDONLY else os.O_RDWR
            return wanted | os.O_CLOEXEC | (flags & os.O_NOFOLLOW)

        def open(self, path, flags):
            with self.mutex:
                self.check("truncate" if flags & os.O_TRUNC else None)
                fd = os.open(self.real(path), self.backing_flags(flags))
                ino = os.fstat(fd).st_ino
                if flags & os.O_TRUNC:
                    os.ftruncate(fd, 0)
                    if ino in self.dirty:
                        del self.dirty[ino].data[:]
                return self.new_fh(fd, ino)

        def create(self, path, mode, flags):
            with self.mutex:
                self.check("create")
                self.touch_dir(os.path.dirname(path))
                extra = os.O_EXCL if flags & os.O_EXCL else 0
                fd = os.open(self.real(path), self.backing_flags(flags) | os.O_CREAT | extra, mode)
                return self.new_fh(fd, os.fstat(fd).st_ino)

        def write(self, path, data, offset, fh):
            with self.mutex:
                self.check("write")
                fd, ino = self.handles[fh]
                dirty = self.dirty_of(fd, ino)
                end = offset + len(data)
                if offset > len(dirty.data):
                    dirty.data.extend(bytes(offset - len(dirty.data)))
                dirty.data[offset:end] = data
                dirty.mtime_ns = time.time_ns()
                return len(data)

        def truncate(self, path, length, fh=None):
            with self.mutex:
                self.check("truncate")
                fd, real = self.resolve(path, fh)
                if fd is None:
                    fd = os.open(real, os.O_RDWR | os.O_CLOEXEC)
                    try:
                        return self._truncate(fd, length)
                    finally:
                        os.close(fd)
                return self._truncate(fd, length)

        def _truncate(self, fd: int, length: int) -> int:
            os.ftruncate(fd, length)
            dirty = self.dirty.get(os.fstat(fd).st_ino)
            if dirty is not None:
                if length < len(dirty.data):
                    del dirty.data[length:]
                else:
                    dirty.data.extend(bytes(length - len(dirty.data)))
            return 0

        def flush(self, path, fh):
            with self.mutex:
                self.check()
                return 0  # close() does not make anything durable

        def release(self, path, fh):
            with self.mutex:
                fd, ino = self.handles.pop(fh)
                os.close(fd)
                self.open_count[ino] -= 1
                if not self.frozen:
                    self.forget_if_gone(ino)
                return 0

        def fsync(self, path, datasync, fh):
            with self.mutex:
                self.check("fsync")
                self.flush_inode(self.handles[fh][1])
                return 0

        def fsyncdir(self, path, datasync, fh):
            with self.mutex:
                self.check("fsync")
                folder = self.dir_handles.get(fh, path)
                if folder is not None:
                    self.durable.pop(folder, None)
                return 0

        # -- names ------------------------------------------------------------------------

        def mknod(self, path, mode, dev):
            with self.mutex:
                self.check("create")
                self.touch_dir(os.path.dirname(path))
                os.mknod(self.real(path), mode, dev)
                return 0

        def mkdir(self, path, mode):
            with self.mutex:
                self.check("create")
                self.touch_dir(os.path.dirname(path))
                os.mkdir(self.real(path), mode)
                return 0

        def symlink(self, target, source):
            with self.mutex:
                self.check("create")
                self.touch_dir(os.path.dirname(target))
                os.symlink(source, self.real(target))
                return 0

        def link(self, target, source):
            with self.mutex:
                self.check("create")
                self.touch_dir(os.path.dirname(target))
                os.link(self.real(source), self.real(target))
                return 0

        def unlink(self, path):
            with self.mutex:
                self.check("unlink")
                self.keep_durable(path)
                ino = os.lstat(self.real(path)).st_ino
                os.unlink(self.real(path))
                self.forget_if_gone(ino)
                return 0

        def rmdir(self, path):
            with self.mutex:
                self.check("unlink")
                os.rmdir(self.real(path))
                # Durable at once (not modelled): the parent's durable listing follows.
                folder, name = os.path.split(path)
                self.durable.get(folder, {}).pop(name, None)
                for key in [key for key in self.durable if key == path or key.startswith(path + "/")]:
                    del self.durable[key]
                return 0

        def rename(self, old, new, flags=0):
            with self.mutex:
                self.check("rename")
                if flags & ~1:  # RENAME_EXCHANGE, RENAME_WHITEOUT
                    raise oserror(errno.EINVAL)
                if flags & 1 and os.path.lexists(self.real(new)):  # RENAME_NOREPLACE
                    raise oserror(errno.EEXIST)
                st = os.lstat(self.real(old))
                if stat.S_ISDIR(st.st_mode):
                    return self._rename_folder(old, new, st.st_ino)
                self.keep_durable(old)
                replaced = None
                with contextlib.suppress(FileNotFoundError):
                    replaced = os.lstat(self.real(new)).st_ino
                    self.keep_durable(new)
                self.touch_dir(os.path.dirname(new))
                os.rename(self.real(old), self.real(new))
                if os.path.dirname(old) != os.path.dirname(new):
                    self.joined.append((os.path.dirname(old), os.path.dirname(new)))
                if replaced is not None and replaced != st.st_ino:
                    self.forget_if_gone(replaced)
                return 0

        def _rename_folder(self, old: str, new: str, ino: int) -> int:
            os.rename(self.real(old), self.real(new))
            # Durable at once (not modelled): both parents' durable listings follow.
            old_folder, old_name = os.path.split(old)
            new_folder, new_name = os.path.split(new)
            self.durable.get(old_folder, {}).pop(old_name, None)
            if new_folder in self.durable:
                self.durable[new_folder][new_name] = (ino, True)
            for key in [key for key in self.durable if key == old or key.startswith(old + "/")]:
                self.durable[new + key[len(old):]] = self.durable.pop(key)
            return 0

        def chmod(self, path, mode):
            with self.mutex:
                self.check()
                if path is not None:
                    os.chmod(self.real(path), mode)
                return 0

        def chown(self, path, uid, gid):
            with self.mutex:
                self.check()
                if path is not None:
                    os.chown(self.real(path), uid, gid, follow_symlinks=False)
                return 0

        def utimens(self, path, times=None):
            with self.mutex:
                self.check()
                if path is not None:
                    if times is None:
                        os.utime(self.real(path), follow_symlinks=False)
                    else:
                        os.utime(self.real(path), ns=tuple(times), follow_symlinks=False)
                return 0

        def init_with_config(self, conn_info, config):
            if config is not None:
                config.hard_remove = 1  # an unlinked open file stays usable (no .fuse_hidden files)
                config.use_ino = 1
            threading.Thread(target=self.control_loop, daemon=True).start()

        def destroy(self, path):
            with self.mutex:
                if not self.frozen:  # a clean unmount writes everything, as a real one does
                    for ino in list(self.dirty):
                        self.flush_inode(ino)

        # -- the power cut ----------------------------------------------------------------

        def crash(self, policy: str, seed: int) -> dict:
            with self.mutex:
                self.frozen = True
                if self.crashed:
                    return {"ok": True, "already": True}
                self.crashed = True
                dropped_files = len(self.dirty)
                dropped_bytes = sum(len(dirty.data) for dirty in self.dirty.values())
                for dirty in self.dirty.values():
                    os.close(dirty.fd)
                self.dirty.clear()
                fates = self.fates(policy, random.Random(seed))
                changes: list[str] = []
                for folder in sorted(self.durable, key=lambda key: (key.count("/"), key)):
                    if fates.get(folder) == "rollback":
                        self.roll_back(folder, changes)
                self.durable.clear()
                shutil.rmtree(self.graveyard, ignore_errors=True)
                return {"ok": True, "policy": policy, "dropped_files": dropped_files, "dropped_bytes": dropped_bytes,
                        "rolled_back": changes, "fates": fates}

        def fates(self, policy: str, rng: random.Random) -> dict[str, str]:
            folders = sorted(self.durable)
            if policy != "mixed":
                return {folder: policy for folder in folders}
            parent = {folder: folder for folder in folders}

            def find(folder: str) -> str:
                while parent.setdefault(folder, folder) != folder:
                    folder = parent[folder]
                return folder

            for a, b in self.joined:
                parent[find(a)] = find(b)
            coin = {}
            for folder in sorted(parent):
                root = find(folder)
                if root not in coin:
                    coin[root] = rng.choice(["keep", "rollback"])
            return {folder: coin[find(folder)] for folder in folders}

        def roll_back(self, folder: str, changes: list[str]) -> None:
            real = self.real(folder)
            if not os.path.isdir(real):
                return  # gone with a parent's rollback
            durable = self.durable[folder]
            current = {}
            with os.scandir(real) as entries:
                for entry in entries:
                    st = entry.stat(follow_symlinks=False)
                    current[entry.name] = (st.st_ino, stat.S_ISDIR(st.st_mode))
            for name, (ino, is_dir) in current.items():
                if durable.get(name) != (ino, is_dir):
                    path = os.path.join(real, name)
                    if is_dir:
                        shutil.rmtree(path)
                    else:
                        os.unlink(path)
                    changes.append(f"removed {os.path.join(folder, name)}")
            for name, (ino, is_dir) in durable.items():
                if current.get(name) == (ino, is_dir) or is_dir:
                    continue
                grave = os.path.join(self.graveyard, str(ino))
                if os.path.lexists(grave):
                    os.link(grave, os.path.join(real, name), follow_symlinks=False)
                    changes.append(f"restored {os.path.join(folder, name)}")
                else:
                    changes.append(f"MODEL ERROR: cannot restore {os.path.join(folder, name)}")

        # -- control ----------------------------------------------------------------------

        def control_loop(self) -> None:
            while True:
                connection, _ = server.accept()
                with connection:
                    try:
                        request = json.loads(connection.makefile().readline())
                        answer = self.answer(request)
                    except Exception as error:  # report, keep serving
                        answer = {"ok": False, "error": f"{type(error).__name__}: {error}"}
                    connection.sendall((json.dumps(answer) + "\n").encode())

        def answer(self, request: dict) -> dict:
            command = request.get("cmd")
            if command == "ping":
                return {"ok": True, "pid": os.getpid()}
            if command == "stats":
                with self.mutex:
                    return {"ok": True, "counts": dict(self.counts), "frozen": self.frozen,
                            "dirty_files": len(self.dirty), "dirty_bytes": sum(len(d.data) for d in self.dirty.values()),
                            "tracked_folders": len(self.durable)}
            if command == "arm":
                kind, after = request["kind"], int(request["after"])
                if kind not in KINDS + ("mutate",) or after < 1:
                    return {"ok": False, "error": f"bad arm {kind} {after}"}
                with self.mutex:
                    self.armed = (kind, self.counts[kind] + after)
                    return {"ok": True, "target": self.armed[1]}
            if command == "disarm":
                with self.mutex:
                    self.armed = None
                    return {"ok": True}
            if command == "freeze":
                with self.mutex:
                    self.frozen = True
                    return {"ok": True}
            if command == "crash":
                policy = request.get("policy", "keep")
                if policy not in POLICIES:
                    return {"ok": False, "error": f"unknown policy {policy}"}
                return self.crash(policy, int(request.get("seed", 0)))
            return {"ok": False, "error": f"unknown command {command!r}"}

    class LazyFUSE(mfusepy.FUSE):
        """mfusepy's FUSE, passing the file handle to truncate and the flags to rename."""

        def truncate_fuse_3(self, path, length, fip):
            fh = fip.contents.fh if fip else None
            return self.operations.truncate(None if path is None else path.decode(self.encoding, self.errors),
                                            length, fh)

        def rename_fuse_3(self, old, new, flags):
            return self.operations.rename(old.decode(self.encoding, self.errors),
                                          new.decode(self.encoding, self.errors), flags)

    with contextlib.suppress(FileNotFoundError):
        os.unlink(control)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(control)
    server.listen(8)
    LazyFUSE(LazyFS(), mountpoint, foreground=True, nothreads=True, fsname="lazyfs", auto_unmount=True)


# ---------------------------------------------------------------------------------------
# The client (used by the suite)


class LazyFSError(RuntimeError):
    pass


def find_python() -> str | None:
    """An interpreter that can import mfusepy (and so found libfuse 3): this one, else
    the repository's .venv."""
    root = Path(__file__).resolve().parents[2]
    candidates = [sys.executable, str(root / ".venv" / "bin" / "python"), "/usr/bin/python3"]
    for candidate in dict.fromkeys(candidates):
        if not os.path.exists(candidate):
            continue
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            result = subprocess.run([candidate, "-c", "import mfusepy"], capture_output=True, timeout=30)
            if result.returncode == 0:
                return candidate
    return None


def is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as mounts:
        return any(line.split()[4] == target for line in mounts)


def holders(path: Path) -> list[str]:
    """Processes with a file, folder or working directory under `path`."""
    prefix = os.path.realpath(path)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            links = [entry / "cwd"] + list((entry / "fd").iterdir())
            for link in links:
                with contextlib.suppress(OSError):
                    target = os.readlink(link)
                    if target == prefix or target.startswith(prefix + "/"):
                        command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                        found.append(f"{entry.name} ({command[:80]}) holds {target}")
                        break
    return found


def unmount(path: Path, tries: list[str] | None = None) -> list[str]:
    """fusermount3 -u, else a lazy umount; returns what went wrong (empty when gone).
    `tries`, when given, collects the unmounts that failed on the way (a busy mount)."""
    problems = []
    for command in (["fusermount3", "-u", str(path)], ["fusermount3", "-uz", str(path)], ["umount", "-l", str(path)]):
        if not is_mounted(path):
            break
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=20)
            if result.returncode != 0:
                problems.append(f"{' '.join(command[:2])}: {result.stderr.strip()}")
                if command[1] == "-u":
                    problems.append(f"holders: {holders(path)}")
        except (OSError, subprocess.SubprocessError) as error:
            problems.append(f"{command[0]}: {error}")
    if tries is not None:
        tries.extend(problems)
    if is_mounted(path):
        problems.append(f"{path} is still mounted")
        return problems
    return []


class LazyMount:
    """One mount of the lazy file system over `backing` at `mountpoint`; the state folder
    (graveyard, control socket, daemon log) is `state`, on the same file system as
    `backing`. Use as a context manager: it is always unmounted and the daemon ended."""

    def __init__(self, python: str, backing: Path, mountpoint: Path, state: Path):
        self.python = python
        self.backing, self.mountpoint, self.state = backing, mountpoint, state
        self.control = state / "control.sock"
        self.process: subprocess.Popen | None = None
        self.warnings: list[str] = []

    def __enter__(self) -> "LazyMount":
        self.mount()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def mount(self, seconds: float = 30) -> None:
        for folder in (self.backing, self.mountpoint, self.state):
            folder.mkdir(parents=True, exist_ok=True)
        log = open(self.state / "daemon.log", "ab")
        self.process = subprocess.Popen([self.python, __file__, str(self.backing), str(self.mountpoint),
                                         "--control", str(self.control), "--state", str(self.state)],
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LazyFSError(f"the FUSE daemon exited {self.process.returncode}: {self.daemon_log()}")
            if is_mounted(self.mountpoint):
                with contextlib.suppress(LazyFSError):
                    if self.request({"cmd": "ping"}, timeout=2).get("ok"):
                        return
            time.sleep(0.05)
        self.close()
        raise LazyFSError(f"the file system was not mounted within {seconds:.0f} s: {self.daemon_log()}")

    def daemon_log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.state / "daemon.log").read_text(errors="replace")[-1500:]
        return ""

    def request(self, request: dict, timeout: float = 30) -> dict:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(str(self.control))
                sock.sendall((json.dumps(request) + "\n").encode())
                data = b""
                while not data.endswith(b"\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            return json.loads(data)
        except (OSError, ValueError) as error:
            raise LazyFSError(f"control request {request.get('cmd')} failed: {error}") from error

    def stats(self) -> dict:
        return self.request({"cmd": "stats"})

    def arm(self, kind: str, after: int) -> None:
        answer = self.request({"cmd": "arm", "kind": kind, "after": after})
        if not answer.get("ok"):
            raise LazyFSError(f"arm failed: {answer}")

    def disarm(self) -> None:
        self.request({"cmd": "disarm"})

    def freeze(self) -> None:
        self.request({"cmd": "freeze"})

    def crash(self, policy: str, seed: int) -> dict:
        """Drops what was not synced (after `freeze` and after the writers were killed)."""
        answer = self.request({"cmd": "crash", "policy": policy, "seed": seed}, timeout=60)
        if not answer.get("ok"):
            raise LazyFSError(f"crash failed: {answer}")
        return answer

    def close(self) -> list[str]:
        """Unmounts and ends the daemon; returns problems (empty when the mount is gone).
        A daemon that does not exit after the unmount is killed and noted in `warnings`."""
        tries: list[str] = []
        problems = unmount(self.mountpoint, tries)
        if self.process is not None:
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pid = self.process.pid
                where = []
                for name in ("wchan", "stack"):
                    with contextlib.suppress(OSError):
                        where.append(Path(f"/proc/{pid}/{name}").read_text().strip()[:300])
                children = subprocess.run(["ps", "--ppid", str(pid), "-o", "pid,stat,args"], capture_output=True,
                                          text=True).stdout.strip()
                self.process.kill()
                self.process.wait()
                self.warnings.append(f"the FUSE daemon did not exit within 15 s of the unmount and was killed "
                                     f"(waiting in {where}; children {children!r}; unmount tries {tries})")
            self.process = None
        return problems


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("backing")
    parser.add_argument("mountpoint")
    parser.add_argument("--control", required=True, help="the control socket's path")
    parser.add_argument("--state", required=True, help="a folder on the backing's file system (graveyard)")
    args = parser.parse_args()
    if sys.platform == "linux":  # die with the suite, so the mount goes with it (auto_unmount)
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    serve(args.backing, args.mountpoint, args.control, args.state)


if __name__ == "__main__":
    main()
