"""Holder locks: files under ``POOL/locks`` held with flock(2). The kernel drops a lock when its
process dies, so a SIGKILLed holder never leaves a lock behind, and the file names the holder
for the error a second claimant sees."""
from __future__ import annotations

import fcntl
import os
import sys

from .errors import Busy
from .pooldir import open_file, read_file


def _describe_self() -> str:
    cmd = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv[:4]))
    return f"pid {os.getpid()} ({cmd or 'python'})"


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
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            pid = holder.split()[1] if holder.startswith("pid ") else ""
            raise Busy(f"{what} is open for writing by {holder}", int(pid) if pid.isdigit() else None) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, _describe_self().encode(), 0)
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


def holder(path: str, root: str) -> int | None:
    """The pid of the live process holding ``path``'s lock, 0 when it is held but names no
    pid, None when it is not held."""
    if not is_held(path, root):
        return None
    try:
        words = read_file(root, path, 256).decode(errors="replace").split()
    except OSError:
        return 0
    return int(words[1]) if len(words) > 1 and words[0] == "pid" and words[1].isdigit() else 0


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
