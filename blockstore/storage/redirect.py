"""Read redirection: one copy of the mirror read on its own (what a second node reads while the
first holds the LU), as a read-only store over that copy's data file. Each read asks the pool's
record of the copies (health.py) first: an extent the copy lacks, or a copy out of service, is
an EIO, never the copy's old bytes."""
from __future__ import annotations

import errno

import numpy as np

from .datafile import DataFile
from .health import CopyHealth


class RedirectedCopy:
    """Copy ``copy`` (its data file ``df``) of a mirror with ``extent_size``-byte extents, for
    reading only."""

    def __init__(self, df: DataFile, health: CopyHealth, copy: int, extent_size: int) -> None:
        self.df, self.health, self.copy, self.E = df, health, copy, extent_size

    def _check(self, offset: int, length: int) -> None:
        first, last = offset // self.E, (offset + max(length, 1) - 1) // self.E
        with self.health.meta.read() as txn:
            if self.health.lacks(txn, self.copy, first, last):
                raise OSError(errno.EIO, f"failure group {self.copy} lacks extents {first}-{last} (failed or "
                                         "being resynced): read the LU from its holder")

    def pread(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        return self.df.pread(offset, length)

    def read_multi(self, buf: memoryview, offsets: np.ndarray, lengths: np.ndarray) -> None:
        for off, n in zip(offsets.tolist(), lengths.tolist()):
            if off >= 0:
                self._check(off, n)
        self.df.read_multi(buf, offsets, lengths)

    def block_status(self, offset: int, length: int) -> tuple[int, int]:
        return self.df.block_status(offset, length)
