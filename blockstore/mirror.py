"""The mirror layer: a data file over two failure groups' data files (the same interface as
DataFile, stacked as s3backer stacks its stores). A mirrored LU's physical extent ``p`` lives at
the same offset in both files, so snapshots, clones and copy-on-write need nothing new: a write
goes to both copies in one C call (acknowledged only when both are written, like DRBD's protocol
C), a read comes from the primary copy and falls back to the redundant one (the failing primary is
then taken out of service; ``pool scrub --repair`` rewrites bad extents from the good copy).

When a copy fails (missing file, I/O error) the mirror carries on degraded on the survivor and
remembers every extent it wrote as dirty for the failed copy; each bit is made durable before the
write it covers is acknowledged, and ``resync`` later copies exactly those extents. ``touched`` collects the extents written
since the last flush, whose checksums the pool records at that flush.
"""
from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import native
from .datafile import DataFile

log = logging.getLogger("blockstore")

if TYPE_CHECKING:
    import numpy as np

Buffer = bytes | bytearray | memoryview


class MirrorFile:
    """Two copies of one extent space. ``copies[i]`` is None while copy ``i`` is missing or failed.

    ``persist_dirty(i, extents)`` is called before a write to an extent that copy ``i`` lacks is
    acknowledged, so the dirty bitmap names every such extent even after a crash.
    """

    def __init__(self, primary: DataFile | None, secondary: DataFile | None, paths: list[str], extent_size: int,
                 persist_dirty: Callable[[int, list[int]], None],
                 on_event: Callable[[str, dict], None] | None = None) -> None:
        self.copies: list[DataFile | None] = [primary, secondary]
        self.paths = paths
        self.E = extent_size
        self.dirty: dict[int, set[int]] = {0: set(), 1: set()}
        self.touched: set[int] = set()
        self.persist_dirty = persist_dirty
        self.on_event = on_event

    @property
    def degraded(self) -> list[int]:
        """Indexes of the copies that are missing or failed."""
        return [i for i, c in enumerate(self.copies) if c is None]

    @property
    def fd(self) -> int:
        """A readable copy's descriptor, for the LU's lock-free read path."""
        c = self.copies[0] or self.copies[1]
        return c.fd if c else -1

    def fail(self, i: int, why: str) -> None:
        """Stop using copy ``i``; I/O carries on with the other, and what the failed copy may have
        missed since the last flush becomes dirty for it."""
        if self.copies[i] is None:
            return
        if self.copies[1 - i] is None:
            raise OSError(errno.EIO, f"both copies of the mirror failed: {why}")
        self.copies[i] = None
        log.warning("failure group %d (%s) failed: %s; continuing degraded", i, self.paths[i], why)
        if self.on_event:
            self.on_event("mirror_degraded", {"copy": i, "path": self.paths[i], "why": why})
        self._dirty_for(i, self.touched)

    def _dirty_for(self, i: int, extents: set[int] | range) -> None:
        new = [e for e in extents if e not in self.dirty[i]]
        if new:
            self.persist_dirty(i, new)
            self.dirty[i].update(new)

    def _mark(self, offset: int, length: int) -> None:
        exts = range(offset // self.E, (offset + max(length, 1) - 1) // self.E + 1)
        self.touched.update(exts)
        for i in self.degraded:
            self._dirty_for(i, exts)

    def _one(self) -> tuple[int, DataFile]:
        for i, c in enumerate(self.copies):
            if c is not None:
                return i, c
        raise OSError(errno.EIO, "both copies of the mirror are missing")

    # -- the DataFile interface ----------------------------------------------------------------

    @property
    def dirty_data(self) -> bool:
        return any(c is not None and c.dirty for c in self.copies)

    def pwrite(self, data: Buffer, offset: int) -> None:
        c0, c1 = self.copies
        if c0 is not None and c1 is not None:
            c0.dirty = c1.dirty = True
            r, failed = native.pwrite2(c0.fd, c1.fd, data, offset)
            for i in (0, 1):
                if failed & (1 << i):
                    self.fail(i, f"write at offset {offset}: {os.strerror(-r)}")
        else:
            for i in self.degraded:  # write-ahead: the bit is durable before the data is acknowledged
                self._dirty_for(i, range(offset // self.E, (offset + len(data) - 1) // self.E + 1))
            self._one()[1].pwrite(data, offset)
        self._mark(offset, len(data))

    def cow(self, src_off: int, dst_off: int, extent: int, data: Buffer | None, start: int) -> None:
        """Copy-on-write of one extent into both copies: one read of the old extent, one write per copy."""
        from .datafile import _scratch

        src_i, src = self._one()
        c0, c1 = self.copies
        for c in (c0, c1):
            if c is not None:
                c.dirty = True
        r, failed = native.cow(src.fd, src_off, c0.fd if c0 else -1, c1.fd if c1 else -1, dst_off, extent,
                               data, start, _scratch(extent))
        if r < 0 and not failed:
            raise OSError(-r, f"copy-on-write read from {src.path} at offset {src_off}: {os.strerror(-r)}")
        for i in (0, 1):
            if failed & (1 << i):
                self.fail(i, f"write at offset {dst_off}: {os.strerror(-r)}")
        self._mark(dst_off, extent)

    def pread(self, offset: int, length: int) -> bytes:
        """From the primary; if it fails, from the redundant copy (the primary leaves service)."""
        for i in (0, 1):
            c = self.copies[i]
            if c is None:
                continue
            try:
                data = c.pread(offset, length)
            except OSError as e:
                self.fail(i, f"read at offset {offset}: {e.strerror}")
                continue
            return data
        raise OSError(errno.EIO, "no readable copy")

    def read_multi(self, buf: memoryview, offsets: "np.ndarray", lengths: "np.ndarray") -> None:
        """As DataFile.read_multi, from the primary, failing over to the redundant copy."""
        for i in (0, 1):
            c = self.copies[i]
            if c is None:
                continue
            try:
                c.read_multi(buf, offsets, lengths)
                return
            except OSError as e:
                self.fail(i, f"read: {e.strerror}")
        raise OSError(errno.EIO, "no readable copy")

    def punch(self, offset: int, length: int) -> None:
        for i, c in enumerate(self.copies):
            if c is not None:
                try:
                    c.punch(offset, length)
                except OSError as e:
                    self.fail(i, f"punch at offset {offset}: {e.strerror}")
        self._mark(offset, length)

    def sync(self) -> None:
        """Sync both copies at once: the second on a thread (fdatasync releases the GIL), so a
        flush waits for the slower disk, not for the two in turn."""
        errors: dict[int, OSError] = {}

        def one(i: int, c: DataFile) -> None:
            try:
                c.sync()
            except OSError as e:
                errors[i] = e
        live = [(i, c) for i, c in enumerate(self.copies) if c is not None and c.dirty]
        helper = None
        if len(live) == 2:
            helper = threading.Thread(target=one, args=live[1])
            helper.start()
            live = live[:1]
        for i, c in live:
            one(i, c)
        if helper:
            helper.join()
        for i, e in errors.items():
            self.fail(i, f"sync: {e.strerror}")

    def size(self) -> int:
        return self._one()[1].size()
