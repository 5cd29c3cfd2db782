"""Raw image files in and out of LUs, sparse-aware: holes and zero runs stay unallocated."""
from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import BinaryIO

from .errors import BlockstoreError, InvalidArgument
from .lu import LU
from .catalog import MAX_LU_EXTENTS, SECTOR
from .pool import Pool
from .storage import DATA
from .zero import is_zero

STEP = 1 << 20


def data_ranges(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """The (start, end) byte ranges of a file that hold data, by SEEK_DATA / SEEK_HOLE."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: no data past pos
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        pos = end


def import_file(pool: Pool, name: str, path: str, progress: Callable[[int, int], None] | None = None) -> LU:
    """Create LU ``name`` sized to the file (rounded up to 512 bytes) holding its bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise BlockstoreError(f"cannot read {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise InvalidArgument(f"{path} is {what}: give a raw image file (or - and a pipe)")
        size = st.st_size
        if size == 0:
            raise InvalidArgument(f"{path} is empty")
        with _filling(pool, name, -(-size // SECTOR) * SECTOR) as lu:
            ranges = list(data_ranges(fd, size))
            total = sum(e - s for s, e in ranges)
            done = 0
            for start, end in ranges:
                for pos in range(start, end, STEP):
                    n = min(STEP, end - pos)
                    lu.write(pos, os.pread(fd, n, pos))
                    done += n
                    if progress:
                        progress(done, total)
        return lu
    finally:
        os.close(fd)


def export_file(lu: LU, path: str, progress: Callable[[int, int], None] | None = None) -> None:
    """Write the LU's bytes to ``path`` as a sparse raw file: holes where the LU has none, and
    where its block status says a mapped extent reads as zeros (nothing read there)."""
    E = lu.extent_size
    mapped = lu.mapped_extents()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.ftruncate(fd, lu.size)
        for i, ext in enumerate(mapped.tolist()):
            pos, end = ext * E, min((ext + 1) * E, lu.size)
            while pos < end:
                flags, n = lu.block_status(pos, end - pos)
                if flags & DATA:
                    data = lu.read(pos, n)
                    if not is_zero(data):  # zeros written as data stay a hole too
                        os.pwrite(fd, data, pos)
                pos += n
            if progress:
                progress(i + 1, len(mapped))
        os.fsync(fd)
    finally:
        os.close(fd)


def import_stream(pool: Pool, name: str, src: BinaryIO, progress: Callable[[int, int], None] | None = None) -> LU:
    """Create LU ``name`` from a stream of unknown length (a pipe): written as it comes into an
    LU as large as the pool allows, all-zero pieces skipped, then cut to the stream's length
    rounded up to 512 bytes. Nothing is left behind if it fails."""
    with _filling(pool, name, MAX_LU_EXTENTS * pool.extent_size) as lu:
        pos = 0
        while chunk := src.read(STEP):
            if not is_zero(chunk):
                lu.write(pos, chunk)
            pos += len(chunk)
            if progress:
                progress(pos, 0)
        if pos == 0:
            raise InvalidArgument("the input is empty")
        pool.resize(name, -(-pos // SECTOR) * SECTOR, force=True)
    return lu


@contextmanager
def _filling(pool: Pool, name: str, size: int) -> Iterator[LU]:
    """A new LU of ``size`` bytes to fill, flushed after; removed again if filling it fails."""
    lu = pool.create_lu(name, size)
    try:
        yield lu
        lu.flush()
    except BaseException:
        lu.close()
        pool.remove(name)
        raise


def export_stream(lu: LU, out: BinaryIO, progress: Callable[[int, int], None] | None = None) -> None:
    """Write the LU's bytes to ``out`` in order (a pipe: holes become zeros)."""
    E = lu.extent_size
    mapped = set(lu.mapped_extents().tolist())
    for pos in range(0, lu.size, STEP):
        n = min(STEP, lu.size - pos)
        out.write(lu.read(pos, n) if any(e in mapped for e in range(pos // E, (pos + n - 1) // E + 1)) else bytes(n))
        if progress:
            progress(pos + n, lu.size)
    out.flush()
