"""The C functions alone (native/), then through the engine."""
from __future__ import annotations

import errno
import os
import subprocess

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


def test_short_reads_past_the_end_are_zeros(tmp_path):
    fd = os.open(str(tmp_path / "f"), os.O_RDWR | os.O_CREAT)
    os.write(fd, b"abc")
    buf = bytearray(b"\xff" * 10)
    native.pread_all(fd, buf, 0, "f")
    assert bytes(buf) == b"abc" + bytes(7)
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


def test_a_table_write_that_faults_in_the_mapping_says_why_by_pwrite(tmp_path):
    """A page of a hole is in the page cache (it was read) when the filesystem fills up: the
    table's write copies into the mapping, the kernel cannot allocate the block and sends SIGBUS,
    and the pwrite that follows returns ENOSPC. The process lives on."""
    img, mnt = tmp_path / "fs.img", tmp_path / "fs"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(16 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)
    try:
        E = 1 << 20
        fd = os.open(str(mnt / "data"), os.O_RDWR | os.O_CREAT)
        os.ftruncate(fd, E)
        os.pread(fd, 4096, 65536)
        filler = os.open(str(mnt / "filler"), os.O_RDWR | os.O_CREAT)
        for size in (E, 4096):
            with pytest.raises(OSError) as e:
                while True:
                    os.write(filler, bytes(size))
            assert e.value.errno == errno.ENOSPC
        os.fsync(filler)
        assert page_cached(fd, 65536)
        t, m = native.DirectTable(), native.FileMap(fd, E)
        t.publish(fd, m, E, E, np.zeros(1, np.uint32), np.ones(1, np.bool_), False, np.zeros(1, np.int32))
        assert t.pwrite(b"x" * 4096, 65536) == -errno.ENOSPC
        os.close(filler)
        os.unlink(mnt / "filler")
        assert t.pwrite(b"x" * 4096, 65536) == 0  # room again
        assert os.pread(fd, 4096, 65536) == b"x" * 4096
        with t:
            t.publish(-1, native.NO_MAP, E, E, np.zeros(1, np.uint32), np.ones(1, np.bool_), False,
                      np.zeros(1, np.int32))
        m.close()
        os.close(fd)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
