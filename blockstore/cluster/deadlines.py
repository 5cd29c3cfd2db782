"""The embedded store's lease deadlines, kept beside LMDB rather than in it.

A lease means something only while the machine that granted it runs: its deadline is on
CLOCK_MONOTONIC, and after a reboot every lease is dead (store.py checks the boot id). So a
renewal need not survive a crash, and it must not wait for a commit: an LMDB commit ends in an
fsync, which a disk busy with other writers (the pool's own data files share the file system) can
hold for a second or more. Measured on the 2-core test machine under one streaming writer with
fsync: commits of 1 ms median, 143 ms at the 90th percentile, 1.0 s at the 99th, 1.3 s at most,
longer than a test cluster's whole timeout (0.9 s) and a third of the default one. A renewal that
late fences the node's writes (serving.py stops them a keep-alive interval before the lease runs
out) and, before the keep-alive lines had a thread of their own, got the node fenced by its peers.
etcd makes the same choice: a keep-alive is answered by the leader from memory, not through the
replicated log.

The file holds ``SLOTS`` slots of two little-endian uint64: a lease id and its deadline in
CLOCK_MONOTONIC nanoseconds. It is mapped shared by every process of the machine that opens the
store and never synced. Lease ``n`` uses slot ``n % SLOTS``; a slot naming another lease gives this
one no deadline (its grant-time deadline, in LMDB, stands alone), which matters only for leases
``SLOTS`` grants apart, long dead. Every look at a slot holds the file's lock (shared to read,
exclusive to write) and the process's own (fcntl locks are the process's, not a thread's), and
takes the clock under it: so a lease once seen dead stays dead, since a renewal extends only a
deadline not yet past.
"""
from __future__ import annotations

import fcntl
import mmap
import os
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ..pooldir import open_file

SLOTS = 4096
_SLOT = struct.Struct("<QQ")


class Deadlines:
    """The deadlines file ``path`` inside the pool at ``root`` (made if missing)."""

    def __init__(self, root: str, path: str) -> None:
        self.fd = open_file(root, path, os.O_RDWR | os.O_CREAT)
        try:
            if os.fstat(self.fd).st_size < SLOTS * _SLOT.size:
                os.ftruncate(self.fd, SLOTS * _SLOT.size)
            self.map = mmap.mmap(self.fd, SLOTS * _SLOT.size)
        except BaseException:
            os.close(self.fd)
            raise
        self.lock = threading.Lock()

    @contextmanager
    def _held(self, exclusive: bool) -> Iterator[None]:
        with self.lock:
            fcntl.lockf(self.fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def _read(self, lease: int) -> float:
        held, ns = _SLOT.unpack_from(self.map, (lease % SLOTS) * _SLOT.size)
        return ns / 1e9 if held == lease else 0.0

    def _write(self, lease: int, deadline: float) -> None:
        _SLOT.pack_into(self.map, (lease % SLOTS) * _SLOT.size, lease, max(0, int(deadline * 1e9)))

    def left(self, lease: int, floor: float) -> float | None:
        """Seconds before ``lease`` expires: its deadline is the later of its slot's and
        ``floor`` (monotonic seconds: the one LMDB holds). None when that has passed."""
        with self._held(False):
            left = max(self._read(lease), floor) - time.monotonic()
        return left if left >= 0 else None

    def set(self, lease: int, deadline: float) -> None:
        """Give ``lease`` the deadline ``deadline`` (monotonic seconds; in the past: it is dead)."""
        with self._held(True):
            self._write(lease, deadline)

    def extend(self, lease: int, floor: float, ttl: float) -> bool:
        """Move ``lease``'s deadline to ``ttl`` seconds from now, unless it has passed (as
        ``left`` reckons it with ``floor``): False then, and nothing is written."""
        with self._held(True):
            now = time.monotonic()
            if max(self._read(lease), floor) < now:
                return False
            self._write(lease, now + ttl)
            return True

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)
