"""The C hot path (native/), loaded once. Buffers pass without copies (``ffi.from_buffer``) and
the calls release the GIL; negative errno results become OSError naming the file and offset,
which the layers above turn into the engine's own exceptions."""
from __future__ import annotations

import ctypes
import mmap
import os
import sys
import threading
from typing import Any, NoReturn

import numpy as np

from ._native import ffi, lib
from .extents import BUSY, HELD, OWNED

Buffer = bytes | bytearray | memoryview

#: bs_pwrite_all writes in pieces of at most this many bytes (native/blockstore_native.c).
WRITE_PIECE: int = lib.BS_WRITE_PIECE


def raise_errno(r: int, what: str, path: str, offset: int) -> NoReturn:
    """Raise OSError(-r) naming what failed, the file and the offset (the engine's one wording)."""
    e = -r
    raise OSError(e, f"{what} {path} at offset {offset}: {os.strerror(e)}", path)


def fault_exit(line: str, code: int) -> None:
    """From now on a SIGBUS or SIGSEGV ends the process with ``line`` on stderr and ``code``."""
    lib.bs_fault_exit(line.encode(), code)


def is_zero(buf: Buffer) -> bool:
    return bool(lib.bs_is_zero(ffi.from_buffer(buf), len(buf)))


_local = threading.local()

#: Bytes per checksummed block (native/blockstore_native.h).
SUM_BLOCK: int = lib.BS_SUM_BLOCK


def pwrite2(fd0: int, fd1: int, buf: Buffer, offset: int, sums: "np.ndarray | None" = None,
            sums_c: object = None, stripe: int = -1) -> tuple[int, int]:
    """Write ``buf`` at ``offset`` to both files (-1: skip one). Returns (result, failed bits).
    ``sums`` (uint64, one per SUM_BLOCK of ``buf``), or ``sums_c`` (a ``sums_pointer`` to such an
    array), receives the checksums of ``buf``'s blocks. ``stripe``: the extent written, when
    another writer (the direct path) may write it at the same time (bs_pwrite2)."""
    failed = ffi.new("int *")
    r = lib.bs_pwrite2(fd0, fd1, ffi.from_buffer(buf), len(buf), offset,
                       sums_c if sums_c is not None else ffi.NULL if sums is None else sums_pointer(sums),
                       stripe, failed)
    return r, failed[0]


def stripe_lock(stripe: int) -> None:
    """Hold the lock the C writers of extent ``stripe`` take (bs_stripe_lock): none of them is
    in flight until ``stripe_unlock``."""
    lib.bs_stripe_lock(stripe)


def stripe_unlock(stripe: int) -> None:
    lib.bs_stripe_unlock(stripe)


def sums_pointer(sums: np.ndarray):  # type: ignore[no-untyped-def]
    """A C pointer into ``sums`` (uint64), to hand to ``pwrite2`` many times: making one costs
    a small write more than the hash does."""
    return ffi.from_buffer("uint64_t[]", sums, require_writable=True)


def sum_file(fd: int, offset: int, length: int, path: str, block: int = SUM_BLOCK) -> np.ndarray:
    """The checksums of the blocks of ``length`` bytes of ``fd`` at ``offset`` (in C, through a
    buffer that stays in the CPU cache: no copy of the range is made in Python)."""
    out = np.empty(length // block, np.uint64)
    buf = getattr(_local, "sum_buf", None)
    if buf is None:  # 256 KiB: fewer system calls than 64 KiB, and still within a core's L2 cache
        buf = _local.sum_buf = ffi.new("char[]", 256 << 10)
    r = lib.bs_sum_file(fd, offset, len(out) * block, block, ffi.from_buffer("uint64_t[]", out), buf, len(buf))
    if r < 0:
        raise_errno(r, "read", path, offset)
    return out


def sum_blocks(buf: Buffer, block: int = SUM_BLOCK) -> np.ndarray:
    """xxh3-64 of each whole ``block`` of ``buf`` (never 0), as a uint64 array."""
    out = np.empty(len(buf) // block, np.uint64)
    if len(out):
        lib.bs_sum_blocks(ffi.from_buffer(buf), len(out) * block, block, ffi.from_buffer("uint64_t[]", out))
    return out


def cow(src: int, src_off: int, dst0: int, dst1: int, dst_off: int, extent: int, data: Buffer | None,
        start: int, scratch: bytearray | memoryview) -> tuple[int, int]:
    """Copy ``extent`` bytes from ``src_off`` to ``dst_off`` in one or two files with ``data``
    laid over them at ``start``. Returns (result, failed bits)."""
    failed = ffi.new("int *")
    d = ffi.from_buffer(data) if data else ffi.NULL
    r = lib.bs_cow(src, src_off, dst0, dst1, dst_off, extent, d, start, len(data) if data else 0,
                   ffi.from_buffer(scratch, require_writable=True), failed)
    return r, failed[0]


def pwrite_all(fd: int, buf: Buffer, offset: int, path: str) -> None:
    r = lib.bs_pwrite_all(fd, ffi.from_buffer(buf), len(buf), offset)
    if r < 0:
        raise_errno(r, "write", path, offset)


def pread_all(fd: int, buf: bytearray | memoryview, offset: int, path: str) -> None:
    r = lib.bs_pread_all(fd, ffi.from_buffer(buf, require_writable=True), len(buf), offset)
    if r < 0:
        raise_errno(r, "read", path, offset)


def copy(src: int, src_off: int, dst: int, dst_off: int, length: int, path: str) -> None:
    """Copy a range between files (copy_file_range where the kernel can)."""
    r = lib.bs_copy(src, src_off, dst, dst_off, length)
    if r < 0:
        raise_errno(r, "copy into", path, dst_off)


def pread_multi(fd: int, buf: memoryview, offsets: "np.ndarray", lengths: "np.ndarray", path: str) -> None:
    """Fill ``buf`` with consecutive pieces read at ``offsets`` (int64; -1 reads zeros)."""
    offs = np.ascontiguousarray(offsets, np.int64)
    lens = np.ascontiguousarray(lengths, np.uint64)
    r = lib.bs_pread_multi(fd, ffi.from_buffer(buf, require_writable=True), ffi.from_buffer("int64_t[]", offs),
                           ffi.from_buffer("size_t[]", lens), len(offs))
    if r < 0:
        raise_errno(r, "read", path, int(offs[offs >= 0][0]) if (offs >= 0).any() else 0)


class FileMap:
    """A shared read-write mapping of a file's first ``length`` bytes (native/fastpath.h,
    bs_map_file); ``ptr`` is NULL when the mapping could not be made (or ``fd`` is -1)."""

    def __init__(self, fd: int, length: int) -> None:
        self.length = length
        self.ptr = lib.bs_map_file(fd, length) if fd >= 0 else ffi.NULL

    def close(self) -> None:
        lib.bs_unmap_file(self.ptr, self.length)
        self.ptr = ffi.NULL


#: No mapping: a table given it writes by pwrite.
NO_MAP = FileMap(-1, 0)


# The direct entries' values are the extent map's owner bytes, published as they are.
assert (lib.BS_DIRECT_WRITE, lib.BS_DIRECT_HELD, lib.BS_DIRECT_BUSY) == (OWNED, HELD, BUSY)


class DirectTable:
    """A translation table the C direct path does I/O through (native/fastpath.h): the units of a
    byte range, where each lives in one file and whether it may be written in place. ``with
    table:`` holds it exclusively, so no I/O through it is in flight until the block ends: hold it
    to change anything published."""

    def __init__(self) -> None:
        self.ptr = ffi.gc(lib.bs_table_new(), lib.bs_table_free)
        self._keep: Any = ()  # buffers C points into

    def __enter__(self) -> None:
        lib.bs_table_lock(self.ptr)

    def __exit__(self, *exc: object) -> None:
        lib.bs_table_unlock(self.ptr)

    def publish(self, fd: int, mapping: FileMap, unit: int, size: int, chunk: int, phys: list[Any], direct: list[Any] | None,
                zero_slow: bool, dirty: np.ndarray, sync_error: np.ndarray | None = None) -> None:
        """Point the table at ``phys`` (per chunk of ``chunk`` units: a uint32 buffer, or None
        for all holes) and ``direct`` (per chunk: a byte buffer, nonzero where a unit may be
        written in place, or None; ``direct`` None: nothing is) of ``fd``, mapped by ``mapping``
        (which must outlive its use here); ``fd`` -1 serves nothing. The lists are the owner's
        and are followed by ``chunk_made``. ``dirty`` and ``sync_error`` (one int32 each) are the
        file's dirty flag and sticky sync failure word; without ``sync_error`` the table serves no
        fsync (``fsync``). Hold the table (``with``) unless no I/O can use it yet."""
        k = max(1, len(phys))
        self._lists: tuple[list[Any], list[Any] | None] = (phys, direct)
        self._dirs: tuple[Any, Any] = (ffi.new("uint32_t *[]", k), ffi.new("uint8_t *[]", k))
        self._bufs: dict[int, tuple[Any, ...]] = {}  # C holds pointers into these buffers
        self._keep = (dirty, sync_error)
        for c, tab in enumerate(phys):
            if tab is not None:
                self.chunk_made(c)
        lib.bs_table_publish(self.ptr, fd, mapping.ptr, mapping.length, unit, size, self._dirs[0], self._dirs[1],
                             chunk, len(phys), int(zero_slow), ffi.from_buffer("int[]", dirty),
                             ffi.from_buffer("int[]", sync_error) if sync_error is not None else ffi.NULL)

    def mirror(self, fd2: int, mapping2: FileMap, dirty2: np.ndarray | None, armed: "UnitArrays",
               verify: "UnitArrays | None" = None, sync_error2: np.ndarray | None = None) -> None:
        """Make the table just published mirrored: ``fd2`` the second copy (-1: none) mapped by
        ``mapping2``, and only the units ``armed`` names are written; with ``verify``, reads are
        checked against the checksums it names (native/fastpath.h). ``dirty2`` and
        ``sync_error2`` are the second copy's, as for publish. Hold the table, as for publish."""
        self._keep2 = (dirty2, armed, verify, sync_error2)
        lib.bs_table_mirror(self.ptr, fd2, mapping2.ptr, mapping2.length,
                            ffi.from_buffer("int[]", dirty2) if dirty2 is not None else ffi.NULL,
                            ffi.from_buffer("int[]", sync_error2) if sync_error2 is not None else ffi.NULL,
                            armed.directory, armed.chunk, len(armed.directory))
        if verify is not None:
            lib.bs_table_verify(self.ptr, verify.directory, verify.chunk, len(verify.directory))

    def held(self, chunk: int, chunks: int, arrays: "dict[int, np.ndarray]") -> None:
        """Point the table at the block arrays of its HELD units (native/fastpath.h,
        bs_table_held): ``arrays`` maps a logical unit to its array (one byte per block), in a
        directory of ``chunks`` chunks of ``chunk`` units. Call after every publish, holding the
        table as for publish."""
        self._hchunk = chunk
        self._hdir = ffi.new("uint8_t **[]", max(1, chunks))
        self._htabs: dict[int, Any] = {}
        self._hbufs: dict[int, object] = {}
        for unit, arr in arrays.items():
            self.set_held(unit, arr)
        lib.bs_table_held(self.ptr, self._hdir, max(1, chunks))

    def set_held(self, unit: int, arr: "np.ndarray | None") -> None:
        """Give held ``unit`` its block array (or take it away: None). Only while the unit is
        not HELD in the published lists, so C never reads an entry that changes."""
        c, j = divmod(unit, self._hchunk)
        if c >= len(self._hdir):
            return  # past the directory: its writes stay slow until the next publish
        tab = self._htabs.get(c)
        if tab is None:
            tab = self._htabs[c] = ffi.new("uint8_t *[]", self._hchunk)
            self._hdir[c] = tab
        if arr is None:
            tab[j] = ffi.NULL
            self._hbufs.pop(unit, None)
        else:
            buf = self._hbufs[unit] = ffi.from_buffer("uint8_t[]", arr, require_writable=True)
            tab[j] = buf

    def chunk_made(self, c: int) -> None:
        """Chunk ``c`` of the published lists now exists: point its directory slots at it (hold
        the table, as every change of an entry does)."""
        phys, direct = self._lists
        p = ffi.from_buffer("uint32_t[]", phys[c])
        d = ffi.from_buffer("uint8_t[]", direct[c]) if direct is not None and direct[c] is not None else ffi.NULL
        self._bufs[c] = (p, d)
        self._dirs[0][c], self._dirs[1][c] = p, d

    @property
    def changes(self) -> int:
        """The count of what may have left metadata to commit (bs_table_fsync): read it before a
        flush begins, give it to ``clean`` once the flush committed everything pending."""
        return int(lib.bs_table_changes(self.ptr))

    def clean(self, seen: int, commits: "SharedWord | None" = None, commits_seen: int = 0) -> None:
        """A flush that began at count ``seen`` (and at ``commits_seen`` of the commit word
        ``commits``) left nothing it must commit: until either moves, an fsync is the files'
        fdatasync, served in C."""
        self._commits = commits  # C points into its mapping
        lib.bs_table_clean(self.ptr, seen, commits.ptr if commits is not None else ffi.NULL, commits_seen)

    @property
    def written(self) -> int:
        """Bytes written through this table so far."""
        return int(lib.bs_table_written(self.ptr))

    def fence(self, until_ns: int) -> None:
        """Serve writes in C only before ``until_ns`` (CLOCK_MONOTONIC, time.monotonic_ns);
        later ones go to Python, which decides (the data path's fence, fence.py)."""
        lib.bs_table_fence(self.ptr, until_ns)

    def watch(self, word: SharedWord, seen: int) -> None:
        """Serve reads only while ``word`` is ``seen`` (bs_table_watch); after every publish, holding
        the table as for publish."""
        self._watched = word  # C points into its mapping
        lib.bs_table_watch(self.ptr, word.ptr, seen)

    def pread(self, buf: bytearray | memoryview, offset: int) -> int:
        """0 when read, 1 when the table cannot serve it (nothing read), or a negative errno."""
        return int(lib.bs_table_pread(self.ptr, ffi.from_buffer(buf, require_writable=True), len(buf), offset))

    def pwrite(self, buf: Buffer, offset: int) -> int:
        """0 when written, 1 when the table cannot serve it (nothing written), or a negative errno."""
        return int(lib.bs_table_pwrite(self.ptr, ffi.from_buffer(buf), len(buf), offset))


class SharedWord:
    """A 64-bit word in a file that every process of this machine maps: ``fd`` (open on a file of
    at least 8 bytes; it may be closed after), read and bumped atomically in C (bs_word_load,
    bs_word_bump). The watch word of the direct path's redirected tables (bs_table_watch)."""

    def __init__(self, fd: int, *, writable: bool) -> None:
        self._mm = mmap.mmap(fd, 8, mmap.MAP_SHARED, mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0))
        self._buf = ffi.from_buffer(self._mm)
        self.ptr = ffi.cast("uint64_t *", self._buf)
        self.writable = writable

    @property
    def value(self) -> int:
        return int(lib.bs_word_load(self.ptr))

    def bump(self) -> int:
        return int(lib.bs_word_bump(self.ptr))


class UnitArrays:
    """A checksum array per physical unit, for the C direct path of mirrored tables
    (native/fastpath.h): which units a table may write, each pointing at the array its checksums
    go to (bs_table_mirror), or the checksums a unit's reads are verified against
    (bs_table_verify). A directory of chunks of ``chunk`` pointers, made for ``units`` units and
    grown by ``grow`` (republish the tables after). Changing an entry from a pointer to NULL
    needs every table that uses it held; adding one needs nothing (I/O that does not see it yet
    takes the slow path)."""

    def __init__(self, units: int, chunk: int = 1 << 14) -> None:
        self.chunk = chunk
        self.directory = ffi.new("uint64_t **[]", max(1, -(-units // chunk)))
        self._chunks: dict[int, object] = {}
        self._armed: set[int] = set()

    def grow(self, units: int) -> None:
        k = max(1, -(-units // self.chunk))
        if k > len(self.directory):
            old, self.directory = self.directory, ffi.new("uint64_t **[]", k)
            for c in range(len(old)):
                self.directory[c] = old[c]

    def arm(self, unit: int, sums: object) -> None:
        """Let unit ``unit`` be written, its checksums going to ``sums`` (a ``sums_pointer``,
        which the caller keeps alive until the unit is disarmed)."""
        c, j = divmod(unit, self.chunk)
        if c >= len(self.directory):
            return  # past the published directory: it stays on the slow path until a grow
        tab = self._chunks.get(c)
        if tab is None:
            tab = self._chunks[c] = ffi.new("uint64_t *[]", self.chunk)
            self.directory[c] = tab
        tab[j] = sums  # type: ignore[index]
        self._armed.add(unit)

    def disarm(self, units: "list[int] | set[int] | None" = None) -> None:
        """Disarm ``units`` (default: every unit armed)."""
        for unit in list(self._armed) if units is None else units:
            if unit in self._armed:
                c, j = divmod(unit, self.chunk)
                self._chunks[c][j] = ffi.NULL  # type: ignore[index]
                self._armed.discard(unit)

    def __contains__(self, unit: int) -> bool:
        return unit in self._armed


# -- the FUSE callbacks of the direct path (native/fastpath.h) --------------------------------

def offer_open_reply() -> None:
    """Make this library's answer to opens (fuse_reply_open, native/fastpath.h) the one libfuse
    calls: before libfuse is loaded, which binds its calls as it loads."""
    ctypes.CDLL(sys.modules[f"{__package__}._native"].__file__, mode=os.RTLD_GLOBAL | os.RTLD_NOLOAD)


def fuse_open_flags(*, parallel_writes: bool, noflush: bool) -> None:
    """Answer opens of direct-io files (``offer_open_reply``) allowing parallel writes, and
    asking for no FLUSH on close (native/fastpath.h)."""
    lib.bs_fuse_open_flags((lib.BS_OPEN_PARALLEL_WRITES if parallel_writes else 0) |
                           (lib.BS_OPEN_NOFLUSH if noflush else 0))


def fuse_open_flags_sent() -> int:
    """Opens answered with those flags, so far."""
    return int(lib.bs_fuse_open_flags_sent())


def fuse_direct_setup(fh_offset: int, slow_read: int, slow_write: int, slow_fsync: int) -> tuple[int, int, int]:
    """Make the C read, write and fsync callbacks fall back to the callbacks at ``slow_read``,
    ``slow_write`` and ``slow_fsync`` (addresses); returns the addresses of the C callbacks to
    register instead. ``fh_offset``: where fuse_file_info keeps ``fh``."""
    lib.bs_fuse_setup(fh_offset, ffi.cast("bs_fuse_read_fn", slow_read), ffi.cast("bs_fuse_write_fn", slow_write),
                      ffi.cast("bs_fuse_fsync_fn", slow_fsync))
    return tuple(int(ffi.cast("uintptr_t", ffi.addressof(lib, f"bs_fuse_{op}")))  # type: ignore[return-value]
                 for op in ("read", "write", "fsync"))


def fuse_direct_attach(fh: int, table: DirectTable | None, stat: int = -1) -> bool:
    """Serve file handle ``fh`` through ``table`` (None: the fallback always), counting its
    requests under ``stat`` (``fuse_stat``; -1: not counted). False: no free slot, the handle
    keeps the fallback and is not counted."""
    return bool(lib.bs_fuse_attach(fh, table.ptr if table is not None else ffi.NULL, stat) == 0)


def fuse_direct_detach(fh: int) -> None:
    lib.bs_fuse_detach(fh)


#: LUs a mount counts requests of (``fuse_stat``'s indexes are 0 .. STAT_LUS - 1)
STAT_LUS = int(lib.BS_STAT_LUS)


def fuse_stat(index: int) -> dict[str, dict[str, Any]]:
    """The request counters of LU ``index`` of the mount: per ``read`` and ``write``, ``ops``,
    ``bytes``, ``seconds`` (their sum) and ``buckets`` (requests by time: bucket i shorter than
    2**i microseconds, the last the rest; not cumulative)."""
    words, nb = int(lib.BS_STAT_WORDS), int(lib.BS_STAT_BUCKETS)
    out = ffi.new(f"uint64_t[{words}]")
    lib.bs_fuse_stat(index, out)
    vals = list(out)
    per = {}
    for op, at in (("read", 0), ("write", 3 + nb)):
        per[op] = {"ops": vals[at], "bytes": vals[at + 1], "seconds": vals[at + 2] / 1e9,
                   "buckets": vals[at + 3:at + 3 + nb]}
    return per


def fuse_stat_add(index: int, write: bool, result: int, ns: int) -> None:
    """Count one request served without the C callbacks (a mount without the direct path)."""
    lib.bs_fuse_stat_add(index, int(write), result, ns)


def fuse_direct_counts() -> dict[str, int]:
    """Requests served by the C callbacks and passed to the fallbacks since setup."""
    out = ffi.new("uint64_t[6]")
    lib.bs_fuse_counts(out)
    return {f"{op} {how}": out[2 * i + j] for i, op in enumerate(("read", "write", "fsync"))
            for j, how in enumerate(("direct", "passed"))}
