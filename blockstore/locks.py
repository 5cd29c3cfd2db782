"""Holder locks: files under ``POOL/locks`` held with flock(2). The kernel drops a lock when its
process dies, so a SIGKILLed holder never leaves a lock behind, and the file names the holder
for the error a second claimant sees."""
from __future__ import annotations

import fcntl
import os
import sys

from .errors import Busy
from .pooldir import open_file, read_file
from .records import Holder

RECORD = 256  # bytes of a holder lock file: who holds it, padded with spaces


def this_process() -> Holder:
    """This process as ``ps`` would name it: the program and its first arguments (80 characters)."""
    try:
        with open("/proc/self/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")[:4]
    except OSError:
        argv = [sys.executable, *sys.argv[:3]]
    cmd = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(argv) if a)
    cmd = " ".join(cmd.split())  # one line
    return {"pid": os.getpid(), "command": (cmd[:77] + "...") if len(cmd) > 80 else cmd or "python"}


def _describe_self() -> str:
    me = this_process()
    return f"pid {me['pid']} ({me['command']})"


class HolderLock:
    """An exclusive flock on ``path``, a file inside the pool at ``root`` (opened as
    pooldir.open_file opens); ``acquire`` raises Busy naming the current holder."""

    def __init__(self, path: str, root: str) -> None:
        self.path, self.root = path, root
        self.fd = -1

    def acquire(self, what: str) -> "HolderLock":
        fd = open_file(self.root, self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, RECORD, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            pid = holder.split()[1] if holder.startswith("pid ") else ""
            raise Busy(f"{what} is open for writing by {holder}", int(pid) if pid.isdigit() else None) from None
        # One write of a whole fixed-size record, never a truncation first: a claimant reading
        # the file at any instant finds the old holder's name or ours, never an empty file (it
        # could not then forward its request to the holder, control.py).
        os.pwrite(fd, _describe_self().encode()[:RECORD].ljust(RECORD), 0)
        os.ftruncate(fd, RECORD)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing drops the flock
            self.fd = -1

    def __enter__(self) -> "HolderLock":
        """``with HolderLock(p).acquire(what):`` holds it for the block."""
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder(path: str, root: str) -> Holder | None:
    """The live process holding ``path``'s lock (pid 0 when the lock names none), None when it
    is not held."""
    if not is_held(path, root):
        return None
    try:
        text = read_file(root, path, RECORD).decode(errors="replace").strip()
    except OSError:
        text = ""
    words = text.split(maxsplit=2)
    if len(words) > 1 and words[0] == "pid" and words[1].isdigit():
        return {"pid": int(words[1]), "command": words[2].strip("()") if len(words) > 2 else "?"}
    return {"pid": 0, "command": text or "?"}


def is_held(path: str, root: str) -> bool:
    """True while some live process holds ``path``'s lock."""
    try:
        fd = open_file(root, path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
