"""The C hot path (native/), loaded once. Buffers pass without copies (``ffi.from_buffer``) and
the calls release the GIL; negative errno results become OSError naming the file and offset,
which the layers above turn into the engine's own exceptions."""
from __future__ import annotations

import os

import numpy as np

from ._native import ffi, lib

Buffer = bytes | bytearray | memoryview


def _raise(r: int, what: str, path: str, offset: int) -> None:
    e = -r
    raise OSError(e, f"{what} {path} at offset {offset}: {os.strerror(e)}", path)


def is_zero(buf: Buffer) -> bool:
    return bool(lib.bs_is_zero(ffi.from_buffer(buf), len(buf)))


def pwrite2(fd0: int, fd1: int, buf: Buffer, offset: int) -> tuple[int, int]:
    """Write ``buf`` at ``offset`` to both files (-1: skip one). Returns (result, failed bits)."""
    failed = ffi.new("int *")
    r = lib.bs_pwrite2(fd0, fd1, ffi.from_buffer(buf), len(buf), offset, failed)
    return r, failed[0]


def cow(src: int, src_off: int, dst0: int, dst1: int, dst_off: int, extent: int, data: Buffer | None,
        start: int, scratch: bytearray) -> tuple[int, int]:
    """Copy one extent from ``src_off`` to ``dst_off`` in one or two files with ``data`` laid over
    it at ``start``. Returns (result, failed bits)."""
    failed = ffi.new("int *")
    d = ffi.from_buffer(data) if data else ffi.NULL
    r = lib.bs_cow(src, src_off, dst0, dst1, dst_off, extent, d, start, len(data) if data else 0,
                   ffi.from_buffer(scratch, require_writable=True), failed)
    return r, failed[0]


def pwrite_all(fd: int, buf: Buffer, offset: int, path: str) -> None:
    r = lib.bs_pwrite_all(fd, ffi.from_buffer(buf), len(buf), offset)
    if r < 0:
        _raise(r, "write", path, offset)


def pread_all(fd: int, buf: bytearray | memoryview, offset: int, path: str) -> None:
    r = lib.bs_pread_all(fd, ffi.from_buffer(buf, require_writable=True), len(buf), offset)
    if r < 0:
        _raise(r, "read", path, offset)


def copy(src: int, src_off: int, dst: int, dst_off: int, length: int, path: str) -> None:
    """Copy a range between files (copy_file_range where the kernel can)."""
    r = lib.bs_copy(src, src_off, dst, dst_off, length)
    if r < 0:
        _raise(r, "copy into", path, dst_off)


def pread_multi(fd: int, buf: memoryview, offsets: "np.ndarray", lengths: "np.ndarray", path: str) -> None:
    """Fill ``buf`` with consecutive pieces read at ``offsets`` (int64; -1 reads zeros)."""
    offs = np.ascontiguousarray(offsets, np.int64)
    lens = np.ascontiguousarray(lengths, np.uint64)
    r = lib.bs_pread_multi(fd, ffi.from_buffer(buf, require_writable=True), ffi.from_buffer("int64_t[]", offs),
                           ffi.from_buffer("size_t[]", lens), len(offs))
    if r < 0:
        _raise(r, "read", path, int(offs[offs >= 0][0]) if (offs >= 0).any() else 0)
