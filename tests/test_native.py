"""The C functions alone (native/), then through the engine."""
from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator

import numpy as np
import pytest

from blockstore import native
from blockstore._native import ffi, lib
from conftest import page_cached


def test_is_zero():
    assert native.is_zero(bytes(1 << 20))
    assert native.is_zero(b"")
    assert native.is_zero(bytes(5))
    for pos in (0, 15, 16, 17, 4095, (1 << 20) - 1):
        b = bytearray(1 << 20)
        b[pos] = 1
        assert not native.is_zero(b), pos


def test_pwrite2_writes_both_and_reports_a_failed_copy(tmp_path):
    a, b = (os.open(str(tmp_path / n), os.O_RDWR | os.O_CREAT) for n in ("a", "b"))
    data = os.urandom(300_000)
    r, failed = native.pwrite2(a, b, data, 12345)
    assert (r, failed) == (0, 0)
    assert os.pread(a, len(data), 12345) == data == os.pread(b, len(data), 12345)
    ro = os.open(str(tmp_path / "a"), os.O_RDONLY)
    r, failed = native.pwrite2(ro, b, b"x" * 10, 0)  # the first copy cannot be written
    assert r == -errno.EBADF and failed == 1
    assert os.pread(b, 10, 0) == b"x" * 10  # the other copy still was
    for fd in (a, b, ro):
        os.close(fd)


def test_cow_overlays_and_copies(tmp_path):
    E = 65536
    src, d0, d1 = (os.open(str(tmp_path / n), os.O_RDWR | os.O_CREAT) for n in ("s", "d0", "d1"))
    old = os.urandom(E)
    os.pwrite(src, old, 3 * E)
    scratch = bytearray(E)
    r, failed = native.cow(src, 3 * E, d0, d1, 5 * E, E, b"NEW", 100, scratch)
    assert (r, failed) == (0, 0)
    want = old[:100] + b"NEW" + old[103:]
    assert os.pread(d0, E, 5 * E) == want == os.pread(d1, E, 5 * E)
    r, failed = native.cow(src, 3 * E, d0, -1, 0, E, None, 0, scratch)  # plain copy: copy_file_range
    assert (r, failed) == (0, 0) and os.pread(d0, E, 0) == old
    for fd in (src, d0, d1):
        os.close(fd)


def test_errors_come_back_as_errno(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        fd = os.open(str(mnt / "f"), os.O_RDWR | os.O_CREAT)
        with pytest.raises(OSError) as e:
            native.pwrite_all(fd, os.urandom(2 << 20), 0, str(mnt / "f"))
        assert e.value.errno == errno.ENOSPC and str(mnt / "f") in str(e.value)
        os.close(fd)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert lib.bs_pread_all(-1, ffi.new("char[10]"), 10, 0) == -errno.EBADF


def test_a_read_cut_short_by_the_files_end_is_an_error(tmp_path):
    """A data file is never shorter than what is read from it: a short read means it was
    truncated under us, which must fail the read (EIO), not pad it with zeros."""
    fd = os.open(str(tmp_path / "f"), os.O_RDWR | os.O_CREAT)
    os.write(fd, b"abc")
    buf = bytearray(b"\xff" * 10)
    with pytest.raises(OSError) as e:
        native.pread_all(fd, buf, 0, "f")
    assert e.value.errno == errno.EIO
    native.pread_all(fd, memoryview(buf)[:3], 0, "f")
    assert bytes(buf[:3]) == b"abc"
    os.close(fd)


def test_a_copy_into_the_mapping_that_faults_comes_back_as_efault(tmp_path):
    fd = os.open(str(tmp_path / "f"), os.O_RDWR | os.O_CREAT)
    os.ftruncate(fd, 4096)
    m = native.FileMap(fd, 3 * 4096)  # reaches past the file's end
    assert m.ptr
    assert lib.bs_copy_to_map(m.ptr + 100, b"mapped", 6) == 0
    assert os.pread(fd, 6, 100) == b"mapped"  # the same page cache: pread sees it at once
    assert lib.bs_copy_to_map(m.ptr + 4096, b"past the end", 12) == -errno.EFAULT  # SIGBUS, caught
    assert lib.bs_copy_to_map(m.ptr + 4000, bytes(200), 200) == -errno.EFAULT  # stops part-way
    assert os.fstat(fd).st_size == 4096
    m.close()
    os.close(fd)


@pytest.fixture
def small_ext4(tmp_path):
    """A 16 MiB ext4 filesystem on a loop device of its own: (mount point, the device's name)."""
    img, mnt = tmp_path / "fs.img", tmp_path / "fs"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(16 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)
    dev = subprocess.run(["findmnt", "-no", "SOURCE", str(mnt)], capture_output=True, text=True).stdout.strip()
    try:
        yield mnt, os.path.basename(dev)
    finally:  # lazily if a failed test left a file open
        if subprocess.run(["umount", str(mnt)]).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=True)


@contextlib.contextmanager
def _table(fd: int, unit: int, n: int) -> Iterator[tuple[native.DirectTable, native.FileMap]]:
    """A table of ``n`` units of ``fd`` through a mapping of it, unit i at unit i, all writable in
    place, and the mapping; the table is retired before the mapping goes."""
    m = native.FileMap(fd, n * unit)
    t = native.DirectTable()
    phys, direct = [np.arange(n, dtype=np.uint32)], [np.ones(n, np.uint8)]  # one chunk of n units
    t.publish(fd, m, unit, n * unit, n, phys, direct, False, np.zeros(1, np.int32))
    try:
        yield t, m
    finally:
        with t:
            t.publish(-1, native.NO_MAP, unit, n * unit, n, phys, direct, False, np.zeros(1, np.int32))
        m.close()


def test_a_table_write_that_faults_in_the_mapping_says_why_by_pwrite(small_ext4):
    """The pages of a hole are in the page cache (they were read) when the filesystem fills up:
    the table's write of a whole piece copies into the mapping, the kernel cannot allocate a block
    and sends SIGBUS, and the pwrite that follows returns ENOSPC. The process lives on."""
    mnt, _ = small_ext4
    E = 1 << 20
    fd = os.open(str(mnt / "data"), os.O_RDWR | os.O_CREAT)
    os.ftruncate(fd, E)
    P = native.WRITE_PIECE
    os.pread(fd, P, P)
    filler = os.open(str(mnt / "filler"), os.O_RDWR | os.O_CREAT)
    for size in (E, 4096):
        with pytest.raises(OSError) as e:
            while True:
                os.write(filler, bytes(size))
        assert e.value.errno == errno.ENOSPC
    os.fsync(filler)
    assert all(page_cached(fd, off) for off in range(P, 2 * P, 4096))
    with _table(fd, E, 1) as (t, _):
        assert t.pwrite(b"x" * P, P) == -errno.ENOSPC
        os.close(filler)
        os.unlink(mnt / "filler")
        assert t.pwrite(b"x" * P, P) == 0  # room again
        assert os.pread(fd, P, P) == b"x" * P
    os.close(fd)


def _sectors(dev: str) -> tuple[int, int]:
    """(read, written) 512-byte sectors of a block device so far."""
    with open(f"/sys/block/{dev}/stat") as f:
        fields = f.read().split()
    return int(fields[2]), int(fields[6])


def _mapped_kib(address: int) -> int:
    """Resident KiB of this process's mapping that starts at ``address`` (/proc/self/smaps)."""
    with open("/proc/self/smaps") as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        if line.split("-", 1)[0] == f"{address:x}":
            return next(int(x.split()[1]) for x in lines[i + 1:] if x.startswith("Rss:"))
    raise AssertionError(f"no mapping at {address:x}")


def test_small_table_writes_dirty_only_what_they_write(small_ext4):
    """4 KiB writes into pages of large folios reach the disk as about 4 KiB each (pwrite), not
    as the folios they fall in (what a write fault through the mapping would dirty); whole pieces
    in memory are copied into the mapping, whole pieces not in memory are pwritten (a mapped copy
    would read them from the disk first)."""
    mnt, dev = small_ext4
    E, P = 1 << 20, native.WRITE_PIECE
    fd = os.open(str(mnt / "data"), os.O_RDWR | os.O_CREAT)
    native.pwrite_all(fd, os.urandom(8 * E), 0, "data")  # in pieces: folios of up to a piece
    os.fsync(fd)
    with _table(fd, E, 8) as (t, m):
        address = int(ffi.cast("uintptr_t", m.ptr))
        before = _sectors(dev)[1]
        for i in range(16):
            assert t.pwrite(b"y" * 4096, i * E // 2 + 8192) == 0
        os.fdatasync(fd)
        written = (_sectors(dev)[1] - before) * 512
        assert written < 16 * 4096 + (256 << 10), written  # 16 folios of 256 KiB would be 4 MiB
        for i in range(16):
            assert os.pread(fd, 4096, i * E // 2 + 8192) == b"y" * 4096
        assert _mapped_kib(address) == 0  # nothing went through the mapping so far
        big = os.urandom(2 * P)
        assert t.pwrite(big, 3 * E) == 0 and os.pread(fd, 2 * P, 3 * E) == big
        assert _mapped_kib(address) == 2 * P // 1024  # those pages in memory: copied into it
        os.fdatasync(fd)
        os.posix_fadvise(fd, 6 * E, E, os.POSIX_FADV_DONTNEED)
        assert not page_cached(fd, 6 * E)
        reads = _sectors(dev)[0]
        assert t.pwrite(big, 6 * E) == 0
        assert _sectors(dev)[0] == reads  # pwritten: nothing read first
        assert _mapped_kib(address) == 2 * P // 1024
        assert os.pread(fd, 2 * P, 6 * E) == big
    os.close(fd)
