"""One failure group's data file: a sparse file where physical extent ``i`` occupies bytes
``[i * extent_size, (i + 1) * extent_size)``. The bottom of the stack: it moves bytes and knows
nothing of LUs."""
from __future__ import annotations

import os

import numpy as np

from . import native
from .errors import BlockstoreError

try:
    from fcntl import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, fallocate  # type: ignore[attr-defined]
except ImportError:  # Python < 3.12 has no fcntl.fallocate; reach it through libc
    import ctypes

    _libc = ctypes.CDLL(None, use_errno=True)
    _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02

    def fallocate(fd: int, mode: int, offset: int, length: int) -> None:  # type: ignore[misc]
        if _libc.fallocate(fd, mode, offset, length) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))

#: Address space a data file's mapping reserves (bytes): growth past it is written by pwrite.
MAP_RESERVE = 1 << 40


class DataFile:
    """Positional I/O on one sparse file. ``dirty`` is set by every write and cleared by sync; it
    lives in ``dirty_flag`` (one int32), where the C direct path sets it too."""

    def __init__(self, path: str, *, create_size: int | None = None) -> None:
        self.path = path
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT | os.O_EXCL if create_size is not None else 0)
        try:
            self.fd = os.open(path, flags, 0o600)
        except OSError as e:
            raise BlockstoreError(f"cannot open data file {path}: {e.strerror}") from None
        if create_size is not None:
            os.ftruncate(self.fd, create_size)
        self.dirty_flag = np.zeros(1, np.int32)
        self._can_punch = True
        self._map: native.FileMap | None = None

    @property
    def dirty(self) -> bool:
        return bool(self.dirty_flag[0])

    @dirty.setter
    def dirty(self, value: bool) -> None:
        self.dirty_flag[0] = value

    def mapping(self) -> native.FileMap:
        """The file mapped shared, for the C direct path's writes (native/fastpath.h). It reserves
        ``MAP_RESERVE`` bytes of address space (or the file's size, if larger) so the file can
        grow under it; bytes past the file's end are never copied through it."""
        if self._map is None:  # NULL when there is no address space to spare: pwrite it is
            self._map = native.FileMap(self.fd, max(self.size(), MAP_RESERVE))
        return self._map

    def pread(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        if len(data) < length:  # past the file's end is a hole
            data += bytes(length - len(data))
        return data

    def read_multi(self, buf: memoryview, offsets: "np.ndarray", lengths: "np.ndarray") -> None:
        """Scatter-read: consecutive pieces of ``buf`` from ``offsets`` (-1: a hole, zeros), in C."""
        native.pread_multi(self.fd, buf, offsets, lengths, self.path)

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        """Write all of ``data`` at ``offset``: in C, in pieces that keep the page cache in small
        folios (native/blockstore_native.c). One piece or less goes straight to ``os.pwrite``,
        which costs a small write a third less than the call into C."""
        self.dirty_flag[0] = 1  # the flag itself, not the property: this is every small write's path
        done = 0
        if len(data) <= native.WRITE_PIECE:
            try:
                done = os.pwrite(self.fd, data, offset)
            except OSError as e:
                native.raise_errno(-e.errno, "write", self.path, offset)
            if done == len(data):
                return
            # a short write (the disk filling up): the C loop writes the rest or says why not
        native.pwrite_all(self.fd, memoryview(data)[done:], offset + done, self.path)

    def punch(self, offset: int, length: int) -> None:
        """Make the range read as zeros and give its blocks back to the filesystem."""
        self.dirty = True
        if self._can_punch:
            try:
                fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
                return
            except OSError:
                self._can_punch = False  # a filesystem without hole punching: write zeros
        zeros = bytes(min(length, 1 << 20))
        for pos in range(0, length, len(zeros)):
            self.pwrite(zeros[: min(len(zeros), length - pos)], offset + pos)

    def cow(self, src_off: int, dst_off: int, extent: int, data: bytes | bytearray | memoryview | None,
            start: int) -> None:
        """Copy one extent within this file with ``data`` laid over it at ``start`` (in C: one read
        and one write, or copy_file_range when there is nothing to lay over)."""
        self.dirty = True
        r, _ = native.cow(self.fd, src_off, self.fd, -1, dst_off, extent, data, start, _scratch(extent))
        if r < 0:
            raise OSError(-r, f"copy-on-write in {self.path} at offset {dst_off}: {os.strerror(-r)}")

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def grow(self, size: int) -> None:
        if size > self.size():
            os.ftruncate(self.fd, size)

    def sync(self) -> None:
        if self.dirty:
            self.dirty = False
            os.fdatasync(self.fd)

    def close(self) -> None:
        """Every direct table that writes through ``mapping`` must have been retired."""
        if self._map is not None:
            self._map.close()
            self._map = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


_scratch_buffers: dict[int, bytearray] = {}


def _scratch(size: int) -> bytearray:
    """One reusable extent-sized buffer per size (callers hold the pool lock)."""
    buf = _scratch_buffers.get(size)
    if buf is None:
        buf = _scratch_buffers[size] = bytearray(size)
    return buf
