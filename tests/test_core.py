"""The engine's semantics through the Python API."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from blockstore import AlreadyExists, Busy, InvalidArgument, NotAPool, OutOfRange, PoolCorrupt, PoolFull, ReadOnly
from blockstore.pool import Pool
from blockstore.check import check

E = 64 << 10


def test_thin_lu_allocates_on_first_write_and_reads_zeros(pool):
    lu = pool.create_lu("a", "10M")
    assert lu.allocated_bytes == 0
    assert lu.read(0, 1000) == bytes(1000)
    lu.write(E + 10, b"abc")
    assert lu.allocated_bytes == E
    assert lu.read(E + 8, 7) == b"\0\0abc\0\0"
    lu.close()


def test_zero_write_to_hole_allocates_nothing(pool):
    with pool.create_lu("a", "10M") as lu:
        lu.write(0, bytes(3 * E + 5))
        assert lu.allocated_bytes == 0
        lu.write(0, b"x")
        lu.write(0, bytes(E))  # a whole extent of zeros unmaps it
        assert lu.allocated_bytes == 0
        assert lu.read(0, 2) == b"\0\0"


def test_block_status_says_where_data_zeros_and_holes_are(pool, tmp_path):
    """As QEMU's block status: holes of the map read as zeros and take no space; a mapped
    extent is allocated, with data where it was written and zeros where its store has a hole.
    An export reads only the data and leaves the rest sparse."""
    from blockstore.storage import ALLOCATED, DATA, ZERO
    from blockstore.transfer import export_file
    E = pool.extent_size
    with pool.create_lu("b", 8 * E) as lu:
        lu.write(2 * E, b"x" * 100)              # a partial first write: the rest of the extent a hole
        lu.write(5 * E, os.urandom(E))
        assert lu.block_status(0, 8 * E) == (ZERO, 2 * E)
        assert lu.block_status(E, 4096) == (ZERO, 4096)
        flags, n = lu.block_status(2 * E, 8 * E - 2 * E)
        assert flags == DATA | ALLOCATED and 100 <= n < E
        assert lu.block_status(2 * E + n, E - n) == (ZERO | ALLOCATED, E - n)
        assert lu.block_status(3 * E, 5 * E) == (ZERO, 2 * E)
        assert lu.block_status(5 * E, 3 * E) == (DATA | ALLOCATED, E)
        with pytest.raises(OutOfRange):
            lu.block_status(7 * E, 2 * E)
        out = tmp_path / "b.raw"
        export_file(lu, str(out))
        assert out.read_bytes() == lu.read(0, 8 * E)
        assert os.stat(out).st_blocks * 512 <= E + n  # extent 5 and the written block of extent 2


def test_discard_frees_whole_extents_and_zeroes_partial(pool):
    with pool.create_lu("a", "10M") as lu:
        data = os.urandom(4 * E)
        lu.write(0, data)
        lu.discard(100, 2 * E)  # partial head, one whole extent, partial tail
        assert lu.allocated_bytes == 3 * E
        expect = data[:100] + bytes(2 * E) + data[100 + 2 * E:]
        assert lu.read(0, 4 * E) == expect
        lu.flush()
    st = pool.status()
    assert st["allocated"] == 3 * E


def test_unaligned_multi_extent_io(pool):
    with pool.create_lu("a", "10M") as lu:
        data = os.urandom(5 * E + 333)
        lu.write(E - 7, data)
        assert lu.read(E - 7, len(data)) == data
        buf = bytearray(len(data))
        lu.readinto(E - 7, buf)
        assert bytes(buf) == data


def test_data_survives_reopen(pool_dir):
    data = os.urandom(3 * E)
    with Pool.create(pool_dir, "64M", extent_size=E) as p:
        with p.create_lu("a", "1M") as lu:
            lu.write(1234, data)
    with Pool.open(pool_dir) as p:
        with p.lu("a", writable=False) as lu:
            assert lu.read(1234, len(data)) == data
        assert check(p)["clean"]


def test_snapshot_is_frozen_and_shares_extents(pool):
    lu = pool.create_lu("a", "4M")
    old = os.urandom(2 * E)
    lu.write(0, old)
    pool.snapshot("a", "s1")
    before = pool.status()["allocated"]
    lu.write(10, b"new")  # copy-on-write of the first extent only
    lu.flush()
    assert pool.status()["allocated"] == before + E
    with pool.lu("a@s1") as snap:
        assert snap.readonly
        assert snap.read(0, 2 * E) == old
        with pytest.raises(ReadOnly):
            snap.write(0, b"x")
    assert lu.read(10, 3) == b"new"
    lu.close()


def test_clone_chain_any_depth(pool):
    with pool.create_lu("base", "1M") as lu:
        lu.write(0, b"0" * E)
    names = ["base"]
    for depth in range(1, 12):
        new = f"c{depth}"
        pool.clone(names[-1], new)
        with pool.lu(new) as c:
            c.write(depth * 10, str(depth % 10).encode() * 10)
        names.append(new)
    with pool.lu("c11", writable=False) as c:
        got = c.read(0, 130)
    expect = bytearray(b"0" * 130)
    for depth in range(1, 12):
        expect[depth * 10:depth * 10 + 10] = str(depth % 10).encode() * 10
    assert got == bytes(expect)
    with pool.lu("base", writable=False) as b:
        assert b.read(0, 130) == b"0" * 130


def test_removing_snapshot_frees_only_unshared(pool):
    with pool.create_lu("a", "2M") as lu:
        lu.write(0, os.urandom(4 * E))
        pool.snapshot("a", "s")
        lu.write(0, os.urandom(2 * E))  # 2 extents now private, 2 still shared
        lu.flush()
        assert pool.status()["allocated"] == 6 * E
    pool.remove("a@s")
    assert pool.status()["allocated"] == 4 * E


def test_rollback_restores_content_and_size(pool):
    with pool.create_lu("a", "1M") as lu:
        lu.write(0, b"first")
    pool.snapshot("a", "s")
    with pool.lu("a") as lu:
        lu.write(0, b"second")
    pool.resize("a", "2M")
    pool.rollback("a", "s")
    with pool.lu("a") as lu:
        assert lu.size == 1 << 20
        assert lu.read(0, 6) == b"first\0"


def test_flatten_stops_sharing(pool):
    with pool.create_lu("a", "1M") as lu:
        lu.write(0, os.urandom(3 * E))
    pool.clone("a", "c")
    with pytest.raises(Busy):
        pool.remove("a")
    assert pool.flatten("c") == 3
    info = pool.lu_info("c")
    assert info["parent"] is None and info["kind"] == "lu"
    with pool.lu("a", writable=False) as a, pool.lu("c", writable=False) as c:
        assert a.read(0, 3 * E) == c.read(0, 3 * E)
    pool.remove("a")
    with pool.lu("c", writable=False) as c:
        assert c.read(0, 1) != b""


def test_resize_grow_and_forced_shrink(pool):
    with pool.create_lu("a", "1M") as lu:
        lu.write(0, b"x" * (1 << 20))
    with pytest.raises(InvalidArgument):
        pool.resize("a", "512K")
    pool.resize("a", 300 * 1024, force=True)
    pool.resize("a", "1M")
    with pool.lu("a") as lu:
        assert lu.read(0, 300 * 1024) == b"x" * (300 * 1024)
        assert lu.read(300 * 1024, 1000) == bytes(1000)  # the cut tail comes back as zeros
    assert pool.lu_info("a")["allocated"] == 5 * E


def test_io_past_end_is_refused(pool):
    with pool.create_lu("a", "1M") as lu:
        with pytest.raises(OutOfRange):
            lu.write((1 << 20) - 1, b"ab")
        with pytest.raises(OutOfRange):
            lu.read(1 << 20, 1)
        with pytest.raises(OutOfRange):
            lu.read(-1, 1)


def test_pool_full_is_enospc_and_loses_nothing(pool_dir):
    with Pool.create(pool_dir, 8 * E, extent_size=E) as p:
        with p.create_lu("a", "4M") as lu:
            keep = os.urandom(6 * E)
            lu.write(0, keep)
            lu.flush()
            with pytest.raises(PoolFull) as ei:
                lu.write(6 * E, os.urandom(3 * E))
            assert ei.value.errno == 28
            assert lu.read(0, 6 * E) == keep
            assert lu.read(6 * E, 3 * E) == bytes(3 * E)  # the refused write left nothing behind
            lu.write(6 * E, os.urandom(2 * E))  # what fits still goes
        assert check(p)["clean"]
    with Pool.open(pool_dir) as p, p.lu("a", writable=False) as lu:
        assert lu.read(0, 6 * E) == keep


def test_thick_reserves_everything(pool):
    with pool.create_lu("t", "1M", thick=True) as lu:
        assert lu.allocated_bytes == 1 << 20
        lu.write(0, bytes(E))  # zeros do not give a thick extent back
        lu.discard(0, 2 * E)
        assert lu.allocated_bytes == 1 << 20
        assert lu.read(0, 10) == bytes(10)


def test_overcommit_and_threshold(pool_dir, caplog):
    with Pool.create(pool_dir, 16 * E, extent_size=E, threshold=0.5) as p:
        p.create_lu("a", "10M").close()
        st = p.status()
        assert st["overcommit"] == pytest.approx(10 * 2**20 / (16 * E))
        with p.lu("a") as lu, caplog.at_level("WARNING", logger="blockstore"):
            lu.write(0, os.urandom(10 * E))
        assert any("threshold" in r.message for r in caplog.records)
        assert p.status()["threshold_exceeded"]


def test_grow_pool(pool_dir):
    with Pool.create(pool_dir, 4 * E, extent_size=E) as p:
        with p.create_lu("a", "1M") as lu:
            with pytest.raises(PoolFull):
                lu.write(0, os.urandom(6 * E))
            p.grow(8 * E)
            lu.write(0, os.urandom(6 * E))
        assert p.status()["capacity"] == 8 * E
        with pytest.raises(InvalidArgument):
            p.grow(2 * E)
        assert check(p)["clean"]


def test_names_and_duplicates(pool):
    for bad in ["", "a" * 65, "a/b", "..", "a..b", "a\0b", "a b", "x@y@z"]:
        with pytest.raises(InvalidArgument):
            pool.create_lu(bad, "1M")
    pool.create_lu("a", "1M").close()
    with pytest.raises(AlreadyExists):
        pool.create_lu("a", "1M")
    pool.snapshot("a", "s")
    with pytest.raises(AlreadyExists):
        pool.snapshot("a", "s")
    with pytest.raises(Busy):
        pool.remove("a")  # has a snapshot
    assert pool.remove("a", recursive=True) == ["a", "a@s"]


def test_bad_pools(tmp_path):
    with pytest.raises(NotAPool):
        Pool.open(str(tmp_path / "missing"))
    with pytest.raises(NotAPool):
        Pool.open(str(tmp_path))
    d = str(tmp_path / "p")
    Pool.create(d, "16M", extent_size=E).close()
    with open(os.path.join(d, "meta", "data.mdb"), "r+b") as f:
        f.write(os.urandom(8192))
    with pytest.raises(PoolCorrupt):
        Pool.open(d)
    with pytest.raises(InvalidArgument):
        Pool.create(str(tmp_path / "q"), "16M", extent_size=100 * 1024)
    with pytest.raises(InvalidArgument):
        Pool.create(str(tmp_path / "q"), "16M", extent_size="32M")


def test_second_process_writer_is_refused_readers_see_commits(pool_dir):
    with Pool.create(pool_dir, "64M", extent_size=E) as p:
        lu = p.create_lu("a", "1M")
        lu.write(0, b"v1")
        lu.flush()
        code = textwrap.dedent(f"""
            import sys
            from blockstore import Busy
            from blockstore.pool import Pool
            with Pool.open({pool_dir!r}) as p:
                try:
                    p.open_lu("a")
                except Busy as e:
                    print("BUSY", e)
                r = p.open_lu("a", writable=False)
                print(r.read(0, 2).decode())
                sys.stdout.flush()
                sys.stdin.readline()
                print(r.read(0, 2).decode())
        """)
        child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        first = child.stdout.readline()
        assert first.startswith("BUSY") and f"pid {os.getpid()}" in first
        assert child.stdout.readline().strip() == "v1"
        lu.write(0, b"v2")
        lu.flush()
        out, _ = child.communicate("go\n", timeout=60)
        assert out.strip() == "v2"
        lu.close()
        assert check(p)["clean"]


def test_killed_session_reservations_are_reclaimed(pool_dir):
    Pool.create(pool_dir, "64M", extent_size=E).close()
    code = textwrap.dedent(f"""
        import os
        from blockstore.pool import Pool
        p = Pool.open({pool_dir!r})
        lu = p.create_lu("a", "4M")
        lu.write(0, os.urandom(1 << 20))
        os.kill(os.getpid(), 9)
    """)
    subprocess.run([sys.executable, "-c", code])
    with Pool.open(pool_dir) as p:
        st = p.status()
        assert st["allocated"] == 0 and st["reserved"] == 0
        assert check(p)["clean"]
        with p.lu("a", writable=False) as lu:
            assert lu.read(0, 100) == bytes(100)  # never flushed, so the LU is as created


def test_threads_write_disjoint_ranges(pool):
    import threading
    lu = pool.create_lu("a", "8M")
    blobs = {i: os.urandom(3 * E + 17) for i in range(8)}

    def work(i: int) -> None:
        for _ in range(5):
            lu.write(i * (1 << 20), blobs[i])
    ts = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for i, b in blobs.items():
        assert lu.read(i * (1 << 20), len(b)) == b
    lu.close()


def test_rename_moves_snapshots_and_keeps_clones(pool):
    with pool.create_lu("a", "1M") as lu:
        lu.write(0, b"data")
    pool.snapshot("a", "s")
    pool.clone("a@s", "c")
    pool.rename("a", "b")
    names = {r["name"]: r for r in pool.list_lus()}
    assert set(names) == {"b", "b@s", "c"}
    assert names["b@s"]["parent"] == "b" and names["c"]["parent"] == "b@s"
    with pool.lu("b@s") as s:
        assert s.read(0, 4) == b"data"
    with pytest.raises(AlreadyExists):
        pool.rename("b", "c")
    with pool.lu("b") as lu:  # renaming an LU this process has open
        pool.rename("b", "d")
        lu.write(0, b"DATA")
    with pool.lu("d", writable=False) as lu:
        assert lu.read(0, 4) == b"DATA"
    with pytest.raises(Busy):
        pool.remove("d", recursive=True)  # d@s has the clone c


def test_a_slow_listener_never_holds_up_a_write(pool_dir):
    """Events go to listeners from a thread of their own (issue 15, item 3): the cluster bridge
    fsyncs a payload file per event, and the threshold event used to be published by the
    allocator under the pool lock, in the middle of the write that crossed the threshold."""
    import threading
    import time
    with Pool.create(pool_dir, "16M", extent_size="64K", threshold=0.5) as p:
        release, heard = threading.Event(), []

        def slow(kind: str, info: dict) -> None:
            release.wait(30)  # a listener stuck on a slow disk
            heard.append(kind)
        p.listeners.append(slow)
        p.create_lu("a", "12M")
        t = time.monotonic()
        with p.lu("a") as lu:
            lu.write(0, b"x" * (10 << 20))  # crosses the 50% threshold
            lu.flush()
        assert time.monotonic() - t < 5 and heard == []  # done while the listener still waits
        release.set()
    assert heard == ["lu_created", "pool_threshold"]  # close delivered them, in order


def test_an_event_carries_the_record_as_it_was_when_emitted(pool):
    """Delivery is later than the change (a thread of its own): a service that updates the same
    record object again at once (paging migrate: migrating, then active) must not have its
    first event report the second state."""
    import threading
    gate, heard = threading.Event(), []
    pool.listeners.append(lambda kind, info: (gate.wait(30), heard.append(info["record"]["state"])))
    rec = {"state": "migrating"}
    pool.svc_put("lpar", "lp1", rec)
    rec.update(state="active")
    pool.svc_put("lpar", "lp1", rec)
    gate.set()
    pool.listeners.drain()
    assert heard == ["migrating", "active"]
