"""The direct path (native/fastpath.h): C I/O through an LU's translation table, which must follow
every change of the LU's map, and must never write where the engine would not (a hole, a shared
extent, a whole extent of zeros, past the end, a mirrored or closed LU)."""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from blockstore.pool import Pool
from blockstore.check import check
from conftest import page_cached

E = 64 << 10
SLOW = 1


@pytest.fixture
def pool(tmp_path):
    with Pool.create(str(tmp_path / "pool"), "64M", extent_size=E, mirror_dir=str(tmp_path / "fg1")) as p:
        yield p
        rep = check(p)
        assert rep["clean"], (rep, p.failure_groups())


def test_in_place_writes_and_reads(pool):
    with pool.create_lu("d", 8 * E) as lu:
        lu.write(0, os.urandom(3 * E))           # extents 0-2 are the LU's own
        t = lu.direct_table()
        pool.flush()
        df = pool.groups.files[0]
        assert not df.dirty
        data = os.urandom(2 * E)
        assert t.pwrite(data, E // 2) == 0       # across extents 0, 1, 2
        assert df.dirty                         # so the next flush syncs it
        assert lu.read(E // 2, 2 * E) == data
        buf = bytearray(4 * E)
        assert t.pread(buf, 0) == 0              # extent 3 is a hole: zeros
        assert bytes(buf) == lu.read(0, 4 * E) and bytes(buf[3 * E:]) == bytes(E)
        allocated = lu.allocated_bytes
        before = lu.read(0, 8 * E)
        refusals = [
            (os.urandom(100), 3 * E + 5),        # a hole: the engine allocates
            (os.urandom(E), 2 * E + 1),          # runs into the hole
            (bytes(E), E),                       # a whole extent of zeros: the engine unmaps it
            (os.urandom(10), 8 * E - 5),         # past the end
        ]
        for data, off in refusals:
            assert t.pwrite(data, off) == SLOW, off
        assert lu.read(0, 8 * E) == before and lu.allocated_bytes == allocated
        assert t.pwrite(bytes(100), E) == 0      # zeros inside an extent are just bytes
        assert t.pread(bytearray(10), 8 * E - 5) == SLOW
        # Pages that are not in memory are written all the same (by pwrite; with extents smaller
        # than a piece, as here, every direct write is: test_native has the mapped ones).
        lu.write(5 * E, os.urandom(2 * E))
        pool.flush()
        os.posix_fadvise(df.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        p = lu.physical_extent(5) * E
        assert not page_cached(df.fd, p)
        data = os.urandom(E)
        assert t.pwrite(data, 5 * E + 100) == 0 and df.dirty
        assert lu.read(5 * E + 100, E) == data


def test_table_follows_snapshots_resizes_rollback_and_close(pool):
    lu = pool.create_lu("d", 4 * E)
    lu.write(0, os.urandom(4 * E))
    t = lu.direct_table()
    snap_bytes = lu.read(0, 4 * E)
    pool.snapshot("d", "s")
    assert t.pwrite(os.urandom(10), 0) == SLOW   # shared with the snapshot now
    lu.write(0, b"x" * 10)                       # the engine copies it
    assert t.pwrite(b"y" * 10, 20) == 0          # and then it is the LU's own again
    assert t.pwrite(b"z" * 10, E + 20) == SLOW   # extent 1 is still shared
    with pool.lu("d@s", writable=False) as s:
        assert s.read(0, 4 * E) == snap_bytes
    pool.resize("d", 8 * E)
    buf = bytearray(E)
    assert t.pread(buf, 6 * E) == 0 and bytes(buf) == bytes(E)
    pool.resize("d", 2 * E, force=True)
    assert t.pread(bytearray(10), 3 * E) == SLOW
    pool.rollback("d", "s")
    out = bytearray(4 * E)
    assert t.pread(out, 0) == 0 and bytes(out) == snap_bytes
    assert t.pwrite(b"q", 0) == SLOW             # rolled back: every extent shared again
    lu.close()
    assert t.pread(bytearray(10), 0) == SLOW     # a closed handle serves nothing


def copies_of(pool, lu, ext):
    """Logical extent ``ext`` of ``lu`` as each failure group's file holds it."""
    p = lu.physical_extent(ext)
    return [os.pread(pool.groups.files[i].fd, E, p * E) for i in (0, 1)]


def test_mirrored_lus_are_written_directly_to_both_copies(pool):
    """A mirrored LU's table reads the first copy and writes both, storing the checksums of what
    it wrote, but only whole blocks of extents the engine armed since the last flush."""
    with pool.create_lu("d", 4 * E) as lu:
        lu.write(0, os.urandom(E))
        t = lu.direct_table()
        assert t.pwrite(b"a" * 4096, 0) == 0     # unmirrored: the primary's own
        pool.set_mirrored("d", True)
        buf = bytearray(E)
        assert t.pread(buf, 0) == SLOW           # reads are verified: no checksums known here yet
        assert lu.read(0, E) == lu.read(0, E)    # the engine's read loads them for the table too
        assert t.pread(buf, 0) == 0 and bytes(buf) == lu.read(0, E)
        pool.flush()
        assert t.pwrite(os.urandom(4096), 0) == SLOW   # not armed since the flush
        lu.write(0, os.urandom(4096))            # the engine's write arms the extent
        data = os.urandom(8192)
        assert t.pwrite(data, 4096) == 0
        a, b = copies_of(pool, lu, 0)
        assert a == b and a[4096:12288] == data
        assert t.pwrite(os.urandom(100), 4096) == SLOW    # a partial block: the engine completes it
        assert t.pwrite(os.urandom(4096), 100) == SLOW
        assert t.pwrite(os.urandom(4096), E) == SLOW      # a hole
        before = copies_of(pool, lu, 0)
        pool.flush()                             # checksums of the direct write are committed
        assert copies_of(pool, lu, 0) == before
        from blockstore.scrub import verify
        rep = verify(pool, "d")
        assert rep["clean"] and not rep["bad"] and not rep["mismatched"], rep
        assert t.pwrite(os.urandom(4096), 0) == SLOW   # disarmed by the flush
    with pool.create_lu("m", 4 * E, mirrored=True) as m:
        t = m.direct_table()
        m.write(0, os.urandom(E))
        assert t is not None and t.pwrite(os.urandom(E), 0) == 0
        assert len(set(copies_of(pool, m, 0))) == 1
        pool.set_mirrored("m", False)            # the primary alone from now on
        assert t.pwrite(os.urandom(100), 5) == 0
        a, b = copies_of(pool, m, 0)
        assert a != b or pool.mirror.copies[1] is None


def test_a_failing_copy_stops_direct_writes_to_it(pool, tmp_path):
    """When a copy fails the tables are re-pointed at the survivor (reads) and write nothing
    directly: the engine's writes mark what the lost copy misses."""
    with pool.create_lu("m", 4 * E, mirrored=True) as m:
        t = m.direct_table()
        m.write(0, os.urandom(2 * E))            # arms what it writes (a table is there to use it)
        assert t.pwrite(os.urandom(4096), 0) == 0
        pool.mirror.fail(1, "test: the second disk is gone")
        assert t.pwrite(os.urandom(4096), 0) == SLOW
        data = os.urandom(4096)
        m.write(0, data)                         # degraded: the engine writes copy 0 alone
        assert t.pwrite(os.urandom(4096), 0) == SLOW     # and arms nothing
        buf = bytearray(4096)
        assert m.read(0, 4096) == data                   # verified, which the table can do next
        assert t.pread(buf, 0) == 0 and bytes(buf) == data
        assert m.physical_extent(0) in pool.mirror.dirty[1]
    pool.resync()
    with pool.lu("m") as m:
        t = m.direct_table()
        m.write(0, os.urandom(4096))             # healthy again: armed, written to both
        assert t.pwrite(os.urandom(4096), 4096) == 0
        assert len(set(copies_of(pool, m, 0))) == 1


@pytest.mark.parametrize("mirrored", [False, True], ids=["single", "mirrored"])
def test_snapshots_stay_frozen_under_direct_writes(pool, mirrored):
    """C threads write in place without the GIL while snapshots are taken (and flushes disarm a
    mirror's extents): every snapshot must read the same when it is taken and after the writers
    went on (no write into a shared extent), a mirror's copies must agree and scrub clean, and
    the engine's invariants hold."""
    lu = pool.create_lu("d", 16 * E, mirrored=mirrored)
    lu.write(0, os.urandom(16 * E))
    t = lu.direct_table()
    stop = threading.Event()
    served = [0, 0]

    def writer(k: int) -> None:
        rng = np.random.default_rng(k)
        while not stop.is_set():
            off = int(rng.integers(0, 16 * E - 4096))
            off -= off % 4096 if mirrored else 0  # a mirror's table takes whole blocks only
            data = rng.bytes(4096)
            r = t.pwrite(data, off)
            served[r] += 1
            if r == SLOW:  # what the engine does with it instead (copy-on-write)
                lu.write(off, data)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(2)]
    for th in threads:
        th.start()
    taken = {}
    try:
        for i in range(40):
            pool.snapshot("d", f"s{i}")
            with pool.lu(f"d@s{i}", writable=False) as s:
                taken[i] = s.read(0, 16 * E)
            if i % 3 == 0:
                pool.flush()
            seen = served[0]
            for _ in range(1000):  # let the writers get some direct writes in before the next one
                if served[0] >= seen + 20:
                    break
                stop.wait(0.001)
    finally:
        stop.set()
        for th in threads:
            th.join()
    pool.flush()
    for i, before in taken.items():
        with pool.lu(f"d@s{i}", writable=False) as s:
            assert s.read(0, 16 * E) == before, i
    assert served[0] > 100 and served[1] > 0, served
    if mirrored:
        assert all(len(set(copies_of(pool, lu, ext))) == 1 for ext in range(16))
    lu.close()
    if mirrored:
        from blockstore.scrub import scrub
        rep = scrub(pool)
        assert rep["clean"] and not rep["bad"], rep
