"""The mirror's activity log: which regions of the data files may have writes in flight.

A mirrored write goes to two files; a crash can leave one copy written and the other not, and
data written since the last flush has no checksum on record yet. Like DRBD's activity log, a
region (``REGION`` bytes of physical space) is logged, durably, before the first write into it,
and stays logged ("hot") while it is being written; the next open of the pool settles every
region a dead session had logged (copies made to agree, checksums recorded: ``recovery.adopt``)
before any I/O is served. Only those regions can disagree, so recovery reads them and nothing
else.

One log file per pool session, ``POOL/locks/al/al-SESSION`` (a directory of their own: finding
the dead sessions' logs lists the live sessions' logs, not a lock per LU): region numbers, 8 bytes each,
appended with an fdatasync before the write they cover. A clean close removes it; a flush that
leaves more than ``HOT_LIMIT`` regions hot empties it, so a session's recovery work stays bounded
(``HOT_LIMIT * REGION`` bytes) without a log write for every write.
"""
from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from ..pooldir import open_file, read_file, remove_file, subdir

#: Bytes of physical space per logged region.
REGION = 4 << 20
#: Regions a session keeps hot across flushes (1 GiB of physical space).
HOT_LIMIT = 256
#: Regions logged at once, from the one written on: a sequential writer (whose extents the
#: allocator hands out in ascending order) then syncs the log once per 64 MiB, not per 4 MiB.
AHEAD = 16


def log_dir(locks_dir: str) -> str:
    return os.path.join(locks_dir, "al")


def log_path(locks_dir: str, session: str) -> str:
    return os.path.join(log_dir(locks_dir), f"al-{session}")


class ActivityLog:
    """The log of one live session. ``cover`` before writing; ``flushed`` after each commit."""

    def __init__(self, locks_dir: str, session: str) -> None:
        self.path = log_path(locks_dir, session)
        self.dir = log_dir(locks_dir)
        self.locks_dir = locks_dir
        self.hot: set[int] = set()
        self.fd = -1

    def cover(self, offset: int, length: int) -> None:
        """Make sure the regions of bytes ``[offset, offset + length)`` are logged, durably."""
        first, last = offset // REGION, (offset + max(length, 1) - 1) // REGION
        if first == last and first in self.hot:
            return
        if all(r in self.hot for r in range(first, last + 1)):
            return
        new = [r for r in range(first, max(last + 1, first + AHEAD)) if r not in self.hot]
        if self.fd < 0:
            if not os.path.isdir(self.dir):
                subdir(os.path.dirname(self.locks_dir), "locks", "al")
                _fsync_dir(self.locks_dir)
            self.fd = open_file(os.path.dirname(self.locks_dir), self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND)
            _fsync_dir(self.dir)  # the new name must outlive a crash too
        os.write(self.fd, np.array(new, np.uint64).tobytes())
        os.fdatasync(self.fd)
        self.hot.update(new)

    def covers(self, offset: int, length: int) -> bool:
        """Whether every region of bytes ``[offset, offset + length)`` is logged already."""
        first, last = offset // REGION, (offset + max(length, 1) - 1) // REGION
        return all(r in self.hot for r in range(first, last + 1))

    def flushed(self) -> None:
        """Every write so far is durable and its checksums committed: forget the regions if too
        many are hot (the next writes log their regions again)."""
        if len(self.hot) > HOT_LIMIT and self.fd >= 0:
            os.ftruncate(self.fd, 0)
            os.fdatasync(self.fd)
            self.hot.clear()

    def close(self) -> None:
        """The session closed cleanly (flushed): nothing is in flight."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            remove_file(os.path.dirname(self.locks_dir), self.path)
        self.hot.clear()


def read_log(path: str, root: str) -> np.ndarray:
    """The regions the log at ``path`` (in the pool at ``root``) names (unique, ascending); a
    torn last entry is ignored."""
    raw = read_file(root, path)
    return np.unique(np.frombuffer(raw[: len(raw) // 8 * 8], np.uint64).astype(np.int64))


def _fsync_dir(path: str) -> None:
    dfd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def dead_logs(locks_dir: str, session_alive: Callable[[str], bool], *,
              legacy: bool = False) -> list[tuple[str, np.ndarray]]:
    """(path, regions) of every log whose session is gone (its session lock not held);
    ``legacy``: also those a pool of an earlier version kept beside the locks."""
    out = []
    root = os.path.dirname(locks_dir)
    for where in [log_dir(locks_dir)] + ([locks_dir] if legacy else []):
        try:
            names = sorted(os.listdir(where))
        except FileNotFoundError:
            continue
        for name in names:
            if name.startswith("al-") and not session_alive(name[3:]):
                path = os.path.join(where, name)
                try:
                    out.append((path, read_log(path, root)))
                except FileNotFoundError:
                    pass  # settled by another process just now
    return out

