"""Read redirection: one copy of the mirror read on its own (what a second node reads while the
first holds the LU), as a read-only filter over that copy's data file. Each read asks the pool's
record of the copies (health.py) first: an extent the copy lacks, or a copy out of service, is
an EIO, never the copy's old bytes. Nothing is written through it (EROFS)."""
from __future__ import annotations

import errno

import numpy as np

from . import Buffer, Reader
from .datafile import DataFile
from .filter import PassThrough
from .health import CopyHealth


class RedirectedCopy(PassThrough):
    """Copy ``copy`` (its data file ``df``) of a mirror with ``extent_size``-byte extents, for
    reading only."""

    def __init__(self, df: DataFile, health: CopyHealth, copy: int, extent_size: int) -> None:
        super().__init__(df)
        self.health, self.group, self.E = health, copy, extent_size

    def _check(self, offset: int, length: int) -> None:
        first, last = offset // self.E, (offset + max(length, 1) - 1) // self.E
        with self.health.meta.read() as txn:
            if self.health.lacks(txn, self.group, first, last):
                raise OSError(errno.EIO, f"failure group {self.group} lacks extents {first}-{last} (failed or "
                                         "being resynced): read the LU from its holder")

    @property
    def unverified(self) -> Reader:
        return self  # its reads are checked against the copies' record, never against checksums

    def pread(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        return self.next.pread(offset, length)

    def readinto(self, buf: memoryview, offset: int) -> int:
        self._check(offset, len(buf))
        return self.next.readinto(buf, offset)

    def read_multi(self, buf: memoryview, offsets: np.ndarray, lengths: np.ndarray) -> None:
        for off, n in zip(offsets.tolist(), lengths.tolist()):
            if off >= 0:
                self._check(off, n)
        self.next.read_multi(buf, offsets, lengths)

    def _refuse(self) -> None:
        raise OSError(errno.EROFS, "the redundant copy is read through redirection, never written")

    def pwrite(self, data: Buffer, offset: int) -> None:
        self._refuse()

    def cow(self, src_off: int, dst_off: int, length: int, data: Buffer | None, start: int) -> None:
        self._refuse()

    def copy(self, src_off: int, dst_off: int, length: int) -> None:
        self._refuse()

    def punch(self, offset: int, length: int) -> None:
        self._refuse()

    def release(self, offset: int, length: int) -> None:
        self._refuse()
