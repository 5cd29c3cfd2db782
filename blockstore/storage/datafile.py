"""One failure group's data file: a sparse file where physical extent ``i`` occupies bytes
``[i * extent_size, (i + 1) * extent_size)``. The bottom of the stack: it moves bytes and knows
nothing of LUs.

The file's last ``LABEL`` bytes are its label: which pool and failure group it belongs to (and,
for a group outside the pool's directory, the pool's path). The label travels with the file (a
copied pool's files carry it) and is missing from any file not made by the pool (an empty file
made by ``truncate``), so the pool can refuse a copy that is not its own.
"""
from __future__ import annotations

import errno
import json
import os
from typing import Any

import numpy as np

from .. import native
from ..errors import BlockstoreError
from ..pooldir import open_file

try:
    from fcntl import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, fallocate  # type: ignore[attr-defined]
except ImportError:  # Python < 3.12 has no fcntl.fallocate; reach it through libc
    import ctypes

    _libc = ctypes.CDLL(None, use_errno=True)
    _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02

    def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
        if _libc.fallocate(fd, mode, offset, length) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))

#: Address space a data file's mapping reserves (bytes): growth past it is written by pwrite.
MAP_RESERVE = 1 << 40
#: Bytes at the end of a data file that hold its label.
LABEL = 4096
_MAGIC = b"blockstore-data-file\n"


class DataFile:
    """Positional I/O on one sparse file. ``dirty`` is set by every write and cleared by sync; it
    lives in ``dirty_flag`` (one int32), where the C direct path sets it too."""

    def __init__(self, path: str, *, root: str, create_size: int | None = None,
                 label: dict[str, Any] | None = None, readonly: bool = False) -> None:
        """Open the data file at ``path`` (``readonly``: for reading only), or with
        ``create_size`` make a new one holding that many bytes of extents, followed by ``label``.
        ``root``: the pool's directory, from which a path inside it is reached without following
        a link (pooldir.open_file); a file elsewhere is reached from its own directory."""
        self.path = path
        flags = os.O_RDONLY if readonly else os.O_RDWR
        flags |= os.O_CREAT | os.O_EXCL if create_size is not None else 0
        try:
            self.fd = open_file(root, path, flags)
        except OSError as e:
            raise BlockstoreError(f"cannot open data file {path}: {e.strerror}") from None
        if create_size is not None:
            # size, label and name durable before any metadata can name the file
            os.ftruncate(self.fd, create_size + LABEL)
            self.write_label(label or {})
            fsync_dir(os.path.dirname(os.path.abspath(path)))
        self.dirty_flag = np.zeros(1, np.int32)
        #: the errno of a sync that failed in C (the direct path's fsync), which stands as ours does
        self.sync_failed = np.zeros(1, np.int32)
        self._sync_error: str | None = None
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

    #: its reads are not checked against checksums (a single file has none)
    verifies = False

    @property
    def unverified(self) -> "DataFile":
        return self

    def publish_table(self, table: "native.DirectTable", *, unit: int, size: int, chunk: int, phys: list[Any],
                      direct: list[Any] | None, zero_slow: bool, map_writes: bool, serve: bool,
                      republish: object = None, verify: bool = False) -> None:
        """Point ``table`` (held by the caller) at this file: the units ``phys`` maps, written in
        place where ``direct`` allows, whole pieces through the mapping if ``map_writes``;
        ``serve`` False: nothing. A single file never changes under its tables, so ``republish``
        is not kept."""
        mapping = self.mapping() if serve and map_writes and direct is not None else native.NO_MAP
        table.publish(self.fd if serve else -1, mapping, unit, size, chunk, phys, direct, zero_slow, self.dirty_flag,
                      self.sync_failed)

    def pread(self, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes; a read the file's end cuts short is EIO (a data file is
        never shorter than what is read from it: a short one was truncated under us)."""
        data = os.pread(self.fd, length, offset)
        if len(data) < length:
            native.raise_errno(-errno.EIO, "short read (truncated?) of", self.path, offset + len(data))
        return data

    def readinto(self, buf: memoryview, offset: int) -> int:
        """Read into ``buf`` from ``offset``; the bytes read (fewer only at the file's end)."""
        return os.preadv(self.fd, [buf], offset)

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
                native.raise_errno(-(e.errno or 5), "write", self.path, offset)
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

    def cow(self, src_off: int, dst_off: int, length: int, data: bytes | bytearray | memoryview | None,
            start: int) -> None:
        """Copy ``length`` bytes within this file with ``data`` laid over them at ``start`` (in
        C: one read and one write, or copy_file_range when there is nothing to lay over)."""
        self.dirty = True
        r, _ = native.cow(self.fd, src_off, self.fd, -1, dst_off, length, data, start, _scratch(length))
        if r < 0:
            raise OSError(-r, f"copy-on-write in {self.path} at offset {dst_off}: {os.strerror(-r)}")

    #: ``copy`` may run while other threads use this file, without the pool lock (storage/).
    concurrent_copy = True

    def copy(self, src_off: int, dst_off: int, length: int) -> None:
        """Copy ``length`` bytes within this file (copy_file_range; no shared buffer)."""
        self.dirty = True
        native.copy(self.fd, src_off, self.fd, dst_off, length, self.path)

    def release(self, offset: int, length: int) -> None:
        """Drop the data of extents nothing references any more (the allocator's punch)."""
        self.punch(offset, length)

    def block_status(self, offset: int, length: int) -> tuple[int, int]:
        """(flags, n) of the first ``n`` bytes of the range (storage/__init__.py): a hole of
        the file reads as zeros and takes no space; anything else is data (SEEK_DATA and
        SEEK_HOLE; a file system without them reports data everywhere)."""
        from . import ALLOCATED, DATA, ZERO
        end = offset + length
        try:
            data = os.lseek(self.fd, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno != errno.ENXIO:
                raise
            data = end  # no data from here to the file's end
        if data > offset:
            return ZERO, min(data, end) - offset
        return DATA | ALLOCATED, min(os.lseek(self.fd, offset, os.SEEK_HOLE), end) - offset

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def grow(self, size: int) -> None:
        """Make room for ``size`` bytes of extents; the label moves to the new end. Durable when
        it returns: the caller commits metadata that counts on the new extents next."""
        old = self.size()
        if size + LABEL > old:
            label = self.label()
            os.ftruncate(self.fd, size + LABEL)
            if label is not None:
                self.write_label(label)
                # the old label's place now lies among the extents, which must read as zeros: a
                # hole where the file system punches one, zeros written where it cannot
                self.punch(old - LABEL, LABEL)
            os.fdatasync(self.fd)

    # -- identity --------------------------------------------------------------------------

    def label(self) -> dict[str, Any] | None:
        """The label at the file's end, or None when the file carries none (not the pool's)."""
        size = self.size()
        if size < LABEL:
            return None
        raw = os.pread(self.fd, LABEL, size - LABEL)
        if not raw.startswith(_MAGIC):
            return None
        try:
            out = json.loads(raw[len(_MAGIC):].rstrip(b"\0"))
        except ValueError:
            return None
        return out if isinstance(out, dict) else None

    def write_label(self, label: dict[str, Any]) -> None:
        """Write ``label`` into the file's last LABEL bytes and make it durable."""
        raw = _MAGIC + json.dumps(label, sort_keys=True).encode()
        if len(raw) > LABEL:
            raise BlockstoreError(f"data file label too long ({len(raw)} bytes)")
        os.pwrite(self.fd, raw + bytes(LABEL - len(raw)), self.size() - LABEL)
        os.fsync(self.fd)

    def problem(self, need: int) -> str | None:
        """Why this open file can no longer be trusted as the one at ``path`` holding ``need``
        bytes of extents (deleted, replaced, truncated), or None."""
        try:
            st, now = os.fstat(self.fd), os.stat(self.path)
        except OSError as e:
            return f"{self.path}: {e.strerror}"
        if (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino):
            return f"{self.path} was replaced by another file"
        if st.st_nlink == 0:
            return f"{self.path} was deleted"
        if st.st_size < need:
            return f"{self.path} was truncated to {st.st_size} bytes (needs {need})"
        return None

    def sync(self) -> None:
        """Make every write so far durable. A failed sync stands: the kernel may have dropped the
        pages it could not write and call them clean, so a later sync that "succeeds" proves
        nothing; every sync after a failure fails too, until the file is opened again (one
        the direct path's fsync made fails the same way: ``sync_failed``)."""
        if self._sync_error is None and self.sync_failed[0]:
            self._sync_error = os.strerror(int(self.sync_failed[0]))
        if self._sync_error is not None:
            raise OSError(errno.EIO, f"an earlier sync of {self.path} failed ({self._sync_error}); "
                                     "writes acknowledged since may be lost", self.path)
        if self.dirty:
            self.dirty = False  # before the sync: a write racing with it sets it again
            try:
                os.fdatasync(self.fd)
            except OSError as e:
                self.dirty = True
                self._sync_error = e.strerror or str(e)
                raise

    def close(self) -> None:
        """Every direct table that writes through ``mapping`` must have been retired."""
        if self._map is not None:
            self._map.close()
            self._map = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1



def fsync_dir(path: str) -> None:
    """Make the entries of directory ``path`` (files made or renamed in it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_scratch_buffers: dict[int, bytearray] = {}


def _scratch(size: int) -> memoryview:
    """A reusable buffer of ``size`` bytes, cut from one per power of two (callers hold the
    pool lock)."""
    k = max(4096, 1 << (size - 1).bit_length())
    buf = _scratch_buffers.get(k)
    if buf is None:
        buf = _scratch_buffers[k] = bytearray(k)
    return memoryview(buf)[:size]
