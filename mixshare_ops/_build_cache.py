"""The first-use build's cache folder: a lock that names its owner and is
taken over when that owner is gone, and a check of a library file before it is
loaded. Imports no torch (so a test process starts at once).

The lock is a file holding ``{"pid", "host", "started", "start_ticks"}``,
created atomically (a hard link of a complete temporary file), refreshed
every ``HEARTBEAT_S`` by its holder and removed on release. A waiter takes it
over when its owner is gone (same host: no such process, a zombie, or another
process under a reused pid) or when it was not refreshed for ``STALE_AFTER_S``
(a killed or hung owner, also on another host sharing the cache).
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import struct
import sys
import threading
import time

LOCK_NAME = "build.lock"
HEARTBEAT_S = 10.0
STALE_AFTER_S = 120.0
POLL_S = 0.25
# A shared library smaller than this is no library (the smallest ELF .so is a few KiB).
MIN_LIBRARY_BYTES = 1024


class LockTimeout(TimeoutError):
    """Another process held the build lock for longer than the wait allowed."""


# ------------------------------------------------------------ library check


def library_problem(path: pathlib.Path) -> str | None:
    """Why ``path`` cannot be a complete shared library (None if it can be).

    On Linux the ELF header, program and section header tables and every
    segment must lie inside the file: a truncated library (a killed link, a
    full disk) fails this, where loading it would die with SIGBUS.
    """
    try:
        size = path.stat().st_size
        if size < MIN_LIBRARY_BYTES:
            return f"{path} has only {size} bytes"
        if not sys.platform.startswith("linux"):
            return None
        with open(path, "rb") as fh:
            return _elf_problem(fh, size, path)
    except OSError as exc:
        return f"{path} cannot be read: {exc}"


def _elf_problem(fh, size: int, path: pathlib.Path) -> str | None:
    ident = fh.read(16)
    if ident[:4] != b"\x7fELF" or ident[4] not in (1, 2) or ident[5] not in (1, 2):
        return f"{path} is not an ELF file"
    wide = ident[4] == 2
    end = "<" if ident[5] == 1 else ">"
    # e_phoff, e_shoff; then e_phentsize, e_phnum, e_shentsize, e_shnum
    fh.seek(0x20 if wide else 0x1C)
    phoff, shoff = struct.unpack(end + ("QQ" if wide else "II"), fh.read(16 if wide else 8))
    fh.seek(0x36 if wide else 0x2A)
    phentsize, phnum, shentsize, shnum = struct.unpack(end + "HHHH", fh.read(8))
    needed = max(phoff + phentsize * phnum, shoff + shentsize * shnum)
    if needed > size:
        return f"{path} is truncated: {size} bytes, its header tables end at {needed}"
    for i in range(phnum):
        fh.seek(phoff + i * phentsize)
        if wide:
            _, _, offset, _, _, filesz = struct.unpack(end + "IIQQQQ", fh.read(40))
        else:
            _, offset, _, _, filesz = struct.unpack(end + "IIIII", fh.read(20))
        if offset + filesz > size:
            return f"{path} is truncated: {size} bytes, segment {i} ends at {offset + filesz}"
    return None


# -------------------------------------------------------------------- lock


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), which tells a reused pid apart."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19]) if len(fields) > 19 else None


def _process_gone(pid: int, start_ticks: int | None) -> bool:
    """Whether process ``pid`` of this host has ended (a zombie counts as ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False  # no /proc: the signal test is all there is
    if stat[stat.rindex(")") + 2:].split()[0] == "Z":
        return True
    return start_ticks is not None and _start_ticks(pid) not in (None, start_ticks)


def describe(owner: dict | None) -> str:
    if owner is None:
        return "an unknown process (the lock file is unreadable)"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started", 0)))
    return f"process {owner.get('pid')} on host {owner.get('host')} (since {started})"


class BuildLock:
    """``with BuildLock(path, wait_s, on_wait):`` holds the lock, waiting at most
    ``wait_s`` seconds for another holder (then :class:`LockTimeout`);
    ``on_wait(owner)`` is called once when the wait begins."""

    def __init__(self, path: pathlib.Path, wait_s: float, on_wait=None, on_take_over=None):
        self.path = pathlib.Path(path)
        self.wait_s = wait_s
        self.on_wait = on_wait
        self.on_take_over = on_take_over
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    # -- owner record

    def _record(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                "start_ticks": _start_ticks(os.getpid())}

    def read(self) -> tuple[dict | None, os.stat_result] | None:
        """The owner record (None if unreadable) and the file's stat; None if there is no lock."""
        try:
            stat = self.path.stat()
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            owner = json.loads(text)
        except ValueError:
            owner = None
        return (owner if isinstance(owner, dict) else None), stat

    def stale_reason(self, owner: dict | None, stat: os.stat_result) -> str | None:
        """Why the lock described by ``owner``/``stat`` may be taken over (None: it is held)."""
        if owner is not None and owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
            if _process_gone(owner["pid"], owner.get("start_ticks")):
                return f"{describe(owner)} has ended"
        age = time.time() - stat.st_mtime
        if age > STALE_AFTER_S:
            return f"{describe(owner)} has not refreshed it for {age:.0f} s"
        return None

    # -- acquire / release

    def _try_create(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f"{self.path.name}.new{os.getpid()}")
        temporary.write_text(json.dumps(self._record()))
        try:
            os.link(temporary, self.path)  # atomic: the lock appears complete or not at all
            return True
        except FileExistsError:
            return False
        finally:
            temporary.unlink()

    def _take_over(self, stat: os.stat_result, reason: str) -> None:
        """Removes the stale lock file judged by ``stat`` (unless another process replaced it meanwhile)."""
        tomb = self.path.with_name(f"{self.path.name}.stale{os.getpid()}")
        try:
            os.rename(self.path, tomb)
        except FileNotFoundError:
            return  # another waiter took it over first
        if os.stat(tomb).st_ino != stat.st_ino:  # a fresh lock was renamed: put it back
            try:
                os.link(tomb, self.path)
            except FileExistsError:
                pass
        elif self.on_take_over is not None:
            self.on_take_over(reason)
        tomb.unlink()

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait_s
        waiting = False
        while not self._try_create():
            current = self.read()
            if current is None:
                continue  # released meanwhile
            owner, stat = current
            reason = self.stale_reason(owner, stat)
            if reason is not None:
                self._take_over(stat, reason)
                continue
            if not waiting and self.on_wait is not None:
                self.on_wait(owner)
            waiting = True
            if time.monotonic() > deadline:
                raise LockTimeout(
                    f"gave up after {self.wait_s:.0f} s waiting for {describe(owner)}, which holds {self.path}; "
                    f"if it is not running, delete that file")
            time.sleep(POLL_S)
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._refresh, name="mixshare_ops build lock", daemon=True)
        self._heartbeat.start()

    def _refresh(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
            self._heartbeat = None
        current = self.read()
        owner = current[0] if current is not None else None
        if owner is not None and (owner.get("pid"), owner.get("host")) == (os.getpid(), socket.gethostname()):
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "BuildLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
