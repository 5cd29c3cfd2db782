"""Read redirection: one copy of the mirror read on its own (what a second node reads while the
first holds the LU), as a read-only filter over that copy's data file. Each read asks the pool's
record of the copies (health.py) first: an extent the copy lacks, or a copy out of service, is
an EIO, never the copy's old bytes. Nothing is written through it (EROFS). The C direct path's
table of such a reader is published the same way: never over an extent the copy lacks."""
from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

import numpy as np

from ..extents import BUSY, UNMAPPED
from . import Buffer, Reader
from .datafile import DataFile
from .filter import PassThrough
from .health import FAILED, CopyHealth

if TYPE_CHECKING:
    from ..native import DirectTable


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

    def publish_table(self, table: "DirectTable", **kw: Any) -> None:
        """A reader's table over the copy's file: the extents the copy lacks as the record has
        them now are BUSY (C hands their reads to ``pread``, which refuses them), and a copy out
        of service serves nothing. The caller watches the commit word from before it read the
        map (lu.py), so a record that changes after this is never trusted by C."""
        with self.health.meta.read() as txn:
            failed = self.health.states(txn)[self.group] == FAILED
            lacking = None if failed else self.health.load(txn, self.group)
        direct = None
        if lacking is not None and lacking.any():
            direct = [None if tab is None else self._busy(np.frombuffer(tab, np.uint32), lacking) for tab in kw["phys"]]
        self.next.publish_table(table, **{**kw, "direct": direct, "map_writes": False, "serve": kw["serve"] and not failed})

    @staticmethod
    def _busy(phys: np.ndarray, lacking: np.ndarray) -> np.ndarray:
        """Per unit of a chunk mapped to ``phys``: BUSY where the copy lacks its extent, else 0."""
        mapped = phys != UNMAPPED
        return np.where(mapped & lacking[np.where(mapped, phys, 0)], BUSY, 0).astype(np.uint8)

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
