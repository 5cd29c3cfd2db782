"""The mirror layer: a data file over two failure groups' data files (the same interface as
DataFile, stacked as s3backer stacks its stores). A mirrored LU's physical extent ``p`` lives at
the same offset in both files, so snapshots, clones and copy-on-write need nothing new: a write
goes to both copies in one C call (acknowledged only when both are written, like DRBD's protocol
C), a read comes from the primary copy and falls back to the redundant one, which then repairs
the primary.

When a copy fails (missing file, I/O error) the mirror carries on degraded on the survivor and
remembers every extent it wrote as dirty for the failed copy; the pool persists those bits at
flush and ``resync`` later copies exactly those extents. ``touched`` collects the extents written
since the last flush, whose checksums the pool records at that flush.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from . import native
from .datafile import DataFile

log = logging.getLogger("blockstore")

Buffer = bytes | bytearray | memoryview


class MirrorFile:
    """Two copies of one extent space. ``copies[i]`` is None while copy ``i`` is missing or failed."""

    def __init__(self, primary: DataFile | None, secondary: DataFile | None, extent_size: int,
                 on_event: Callable[[str, dict], None] | None = None) -> None:
        self.copies: list[DataFile | None] = [primary, secondary]
        self.paths = [c.path if c else "" for c in self.copies]
        self.E = extent_size
        self.dirty: dict[int, set[int]] = {0: set(), 1: set()}
        self.touched: set[int] = set()
        self.on_event = on_event
        self.dirty_flag = False

    # -- state -------------------------------------------------------------------------------

    @property
    def degraded(self) -> list[int]:
        """Indexes of the copies that are missing or failed."""
        return [i for i, c in enumerate(self.copies) if c is None]

    @property
    def fd(self) -> int:
        """A readable copy's descriptor, for the LU's lock-free read path."""
        c = self.copies[0] or self.copies[1]
        return c.fd if c else -1

    @property
    def dirty_flag_any(self) -> bool:
        return any(c is not None and c.dirty for c in self.copies)

    def fail(self, i: int, why: str) -> None:
        """Stop using copy ``i``; I/O carries on with the other."""
        if self.copies[i] is None:
            return
        if self.copies[1 - i] is None:
            raise OSError(5, f"both copies failed: {why}")
        self.copies[i] = None
        log.warning("failure group %d (%s) failed: %s; continuing degraded", i, self.paths[i], why)
        if self.on_event:
            self.on_event("mirror_degraded", {"copy": i, "path": self.paths[i], "why": why})

    def _mark(self, offset: int, length: int) -> None:
        first, last = offset // self.E, (offset + max(length, 1) - 1) // self.E
        exts = range(first, last + 1)
        self.touched.update(exts)
        for i in self.degraded:
            self.dirty[i].update(exts)

    # -- the DataFile interface ----------------------------------------------------------------

    @property
    def dirty(self) -> dict[int, set[int]]:  # type: ignore[no-redef]
        return self._dirty

    @dirty.setter
    def dirty(self, value: dict[int, set[int]]) -> None:
        self._dirty = value

    def pwrite(self, data: Buffer, offset: int) -> None:
        c0, c1 = self.copies
        if c0 is not None and c1 is not None:
            c0.dirty = c1.dirty = True
            r, failed = native.pwrite2(c0.fd, c1.fd, data, offset)
            for i in (0, 1):
                if failed & (1 << i):
                    self.fail(i, f"write at offset {offset}: error {-r}")
        else:
            i = 0 if c0 is not None else 1
            self._survivor(i).pwrite(data, offset)
        self._mark(offset, len(data))

    def _survivor(self, i: int) -> DataFile:
        c = self.copies[i]
        if c is None:
            raise OSError(5, "both copies of the mirror are missing")
        return c

    def pread(self, offset: int, length: int) -> bytes:
        for i in (0, 1):
            c = self.copies[i]
            if c is None:
                continue
            try:
                data = c.pread(offset, length)
            except OSError as e:
                self.fail(i, f"read at offset {offset}: {e.strerror}")
                continue
            if i == 1 and self.copies[0] is None and not self.degraded_since_open(0):
                pass
            return data
        raise OSError(5, "no readable copy")

    def degraded_since_open(self, i: int) -> bool:
        return bool(self.dirty[i])

    def readinto(self, buf: memoryview, offset: int) -> None:
        buf[:] = self.pread(offset, len(buf))

    def punch(self, offset: int, length: int) -> None:
        for i, c in enumerate(self.copies):
            if c is not None:
                try:
                    c.punch(offset, length)
                except OSError as e:
                    self.fail(i, f"punch at offset {offset}: {e.strerror}")
        self._mark(offset, length)

    def sync(self) -> None:
        for i, c in enumerate(self.copies):
            if c is not None:
                try:
                    c.sync()
                except OSError as e:
                    self.fail(i, f"sync: {e.strerror}")

    def size(self) -> int:
        return self._survivor(0 if self.copies[0] else 1).size()

    def grow(self, size: int) -> None:
        for c in self.copies:
            if c is not None:
                c.grow(size)

    def close(self) -> None:
        for c in self.copies:
            if c is not None:
                c.close()
