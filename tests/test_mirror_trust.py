"""The defects a hostile pass found in the mirror, one test each: a repair that destroyed live
data, corruption baked into a checksum, reads that changed after a crash, failures nobody saw,
stale checksums nothing cleared, and a copied pool writing into the original's mirror."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from blockstore.pool import Pool
from blockstore.check import check
from blockstore.scrub import replace, scrub, verify
from conftest import flip, run_cli

E = 64 << 10


def phys(pool: Pool, name: str) -> list[int]:
    with pool.lu(name, writable=False) as lu:
        return [lu.physical_extent(x) for x in range(len(lu.extent_map)) if lu.physical_extent(x) is not None]


def sha(pool: Pool, name: str) -> str:
    with pool.lu(name, writable=False) as lu:
        return hashlib.sha256(lu.read(0, lu.size)).hexdigest()


# -- 1. a checksum record outlives its extent -----------------------------------------------------

@pytest.mark.parametrize("how", ["removed", "unmirrored then removed"])
def test_scrub_repair_never_touches_an_unmirrored_lu_on_a_reused_extent(tmp_path, how):
    pool = str(tmp_path / "pool")
    run_cli("pool", "create", "--size", "256M", "--mirror-dir", str(tmp_path / "M"), pool=pool)
    run_cli("lu", "create", "old", "--size", "4M", *(["--mirrored"] if how == "removed" else []), pool=pool)
    run_cli("lu", "write", "old", "--offset", "0", pool=pool, stdin=os.urandom(4 << 20))
    if how != "removed":
        run_cli("lu", "mirror", "old", pool=pool)
        run_cli("lu", "unmirror", "old", pool=pool)
    run_cli("lu", "rm", "old", pool=pool)
    b = os.urandom(4 << 20)
    run_cli("lu", "create", "new", "--size", "4M", pool=pool)
    run_cli("lu", "write", "new", "--offset", "0", pool=pool, stdin=b)
    run_cli("pool", "check", pool=pool)
    assert b"clean" in run_cli("pool", "scrub", pool=pool).stdout  # exit 0: nothing to judge wrong
    run_cli("pool", "scrub", "--repair", pool=pool)
    assert run_cli("lu", "read", "new", "--offset", "0", "--length", str(4 << 20), pool=pool).stdout == b


def test_unmirror_leaves_nothing_for_scrub_and_repair_does_not_grow_the_mirror(tmp_path):
    pool = str(tmp_path / "pool")
    run_cli("pool", "create", "--size", "256M", "--mirror-dir", str(tmp_path / "M"), pool=pool)
    run_cli("lu", "create", "x", "--size", "8M", "--mirrored", pool=pool)
    data = os.urandom(8 << 20)
    run_cli("lu", "write", "x", "--offset", "0", pool=pool, stdin=data)
    run_cli("lu", "unmirror", "x", pool=pool)
    used = os.stat(tmp_path / "M" / "data").st_blocks
    r = run_cli("pool", "scrub", "--json", pool=pool)
    assert b'"clean": true' in r.stdout and b'"extents": 0' in r.stdout
    run_cli("pool", "scrub", "--repair", pool=pool)
    assert os.stat(tmp_path / "M" / "data").st_blocks == used
    assert run_cli("lu", "read", "x", "--offset", "0", "--length", str(8 << 20), pool=pool).stdout == data


# -- 2. corruption must not get into a checksum ---------------------------------------------------

@pytest.mark.parametrize("write", [(4096, 4096), (70, 10)], ids=["aligned 4K", "unaligned, same block"])
def test_a_write_beside_a_flipped_byte_does_not_bake_it_in(tmp_path, write):
    with Pool.create(str(tmp_path / "pool"), "64M", extent_size="1M", mirror_dir=str(tmp_path / "M")) as p:
        want = bytearray(os.urandom(2 << 20))
        with p.create_lu("d", "2M", mirrored=True) as lu:
            lu.write(0, want)
        e = phys(p, "d")[1]
        flip(str(tmp_path / "pool" / "fg0" / "data"), e * (1 << 20) + 100)  # copy 0 goes bad
        off, n = write
        blob = os.urandom(n)
        with p.lu("d") as lu:
            lu.write((1 << 20) + off, blob)  # an ordinary write in the same extent
        want[(1 << 20) + off:(1 << 20) + off + n] = blob
        rep = scrub(p)
        if off >= 4096:  # the bad copy is blamed, not the good one
            assert [(b["extent"], b["copy"]) for b in rep["bad"]] == [(e, 0)]
            assert rep["bad"][0]["blocks"] == 1
            assert scrub(p, repair=True)["repaired"] == 1
        else:  # the write completed its block from the copy that matched the checksum: healed
            assert rep["bad"] == [] and rep["clean"]
        with p.lu("d", writable=False) as lu:
            assert lu.read(0, 2 << 20) == want
        assert scrub(p)["clean"] and verify(p, "d")["mismatched"] == []


# -- 3 and 5. a crash with writes in flight -------------------------------------------------------

CHILD = textwrap.dedent("""
    import os, signal, sys
    from blockstore.pool import Pool
    pool, version, tear = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    p = Pool.open(pool)
    lu = p.open_lu("d")
    data = bytes([int(version)]) * (1 << 20)
    lu.write(0, data)  # in place, not flushed
    if tear:  # the second copy never got the write: put the flushed bytes back in it
        e = lu.physical_extent(0)
        with open(sys.argv[4], "r+b") as f:
            f.seek(e << 20)
            f.write(bytes([1]) * (1 << 20))
            f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.parametrize("tear", [True, False], ids=["one copy written", "both copies written"])
def test_after_a_crash_reads_and_snapshots_never_change(tmp_path, tear):
    pool, mirror = str(tmp_path / "pool"), str(tmp_path / "M")
    with Pool.create(pool, "64M", extent_size="1M", mirror_dir=mirror) as p:
        with p.create_lu("d", "1M", mirrored=True) as lu:
            lu.write(0, bytes([1]) * (1 << 20))
    r = subprocess.run([sys.executable, "-c", CHILD, pool, "2", "1" if tear else "0", mirror + "/data"])
    assert r.returncode == -signal.SIGKILL
    with Pool.open(pool) as p:
        with p.lu("d", writable=False) as lu:
            first = lu.read(0, 1 << 20)
        assert first in (bytes([1]) * (1 << 20), bytes([2]) * (1 << 20))
        p.snapshot("d", "s1")
        snap = sha(p, "d@s1")
        rep = scrub(p)
        assert rep["clean"] and not rep["bad"] and not rep["unrecoverable"]  # nothing stale left
        v = verify(p, "d", repair=True)
        assert v["mismatched"] == [] and v["repaired"] == 0
        scrub(p, repair=True)
        with p.lu("d", writable=False) as lu:
            assert lu.read(0, 1 << 20) == first
        assert sha(p, "d@s1") == snap
    r = run_cli("pool", "scrub", pool=pool)
    assert b"stale" not in r.stdout and b"clean" in r.stdout


# -- 4. failures that went unseen -----------------------------------------------------------------

def test_a_deleted_mirror_is_seen_at_flush_and_replaced_from_scratch(tmp_path):
    pool, mirror = str(tmp_path / "pool"), str(tmp_path / "M")
    p = Pool.create(pool, "64M", extent_size=E, mirror_dir=mirror)
    events = []
    p.listeners.append(lambda kind, info: events.append(kind))
    data = bytearray(os.urandom(4 << 20))
    with p.create_lu("m", "4M", mirrored=True) as lu:
        lu.write(0, data[:2 << 20])
        lu.flush()
        shutil.rmtree(mirror)  # gone while the LU is open and written
        lu.write(2 << 20, data[2 << 20:])
        lu.flush()
    assert "mirror_degraded" in events
    info = p.lu_info("m")["mirror"]
    assert info["state"] == "degraded" and info["dirty_extents"] == 32
    os.mkdir(mirror)  # back as an empty directory: not the pool's copy
    with pytest.raises(Exception, match="still unavailable"):
        p.resync("m")
    with open(mirror + "/data", "wb") as f:  # an empty file of the right size is no copy either
        f.truncate(64 << 20)
    with pytest.raises(Exception, match="no matching label"):
        p.resync("m")
    rep = replace(p)
    assert rep["extents"] == 64 and rep["unrecoverable"] == []
    assert p.lu_info("m")["mirror"] == {"state": "in-sync", "missing_copy": None, "dirty_extents": 0}
    assert verify(p, "m")["mismatched"] == [] and scrub(p)["clean"] and check(p)["clean"]
    with p.lu("m", writable=False) as lu:
        assert lu.read(0, 4 << 20) == data
    p.close()
    r = run_cli("pool", "failgrp", "list", "--json", pool=pool)
    assert r.stdout.count(b'"ok"') == 2


def test_verify_refuses_an_lu_another_process_writes(tmp_path):
    """Its copies may be mid-write: verify names the holder instead of calling it clean."""
    pool = str(tmp_path / "pool")
    with Pool.create(pool, "16M", extent_size=E, mirror_dir=str(tmp_path / "M")) as p:
        p.create_lu("m", "1M", mirrored=True).close()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from blockstore.pool import Pool
        p = Pool.open({pool!r}); lu = p.open_lu("m"); lu.write(0, b"x" * 4096)
        print("open", flush=True); time.sleep(60)
    """)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"open\n"
        r = run_cli("lu", "verify", "m", pool=pool, check_rc=1)
        assert b"open for writing" in r.stderr or b"held" in r.stderr, r.stderr
    finally:
        holder.kill()
        holder.wait()
    run_cli("lu", "verify", "m", pool=pool)


def test_a_truncated_primary_is_read_from_the_mirror_not_as_zeros(tmp_path):
    pool = str(tmp_path / "pool")
    with Pool.create(pool, "16M", extent_size=E, mirror_dir=str(tmp_path / "M")) as p:
        data = os.urandom(4 << 20)
        with p.create_lu("m", "4M", mirrored=True) as lu:
            lu.write(0, data)
            lu.flush()
            os.truncate(tmp_path / "pool" / "fg0" / "data", 1 << 20)  # cut under the open LU
            assert lu.read(0, 4 << 20) == data
            assert lu.read((4 << 20) - 4096, 4096) == data[-4096:]
        assert p.lu_info("m")["mirror"]["state"] == "degraded"


# -- 6. a copied pool is another pool -------------------------------------------------------------

def test_a_copied_pool_never_writes_into_the_originals_mirror(tmp_path):
    a, mirror, b = str(tmp_path / "a"), str(tmp_path / "M"), str(tmp_path / "b")
    with Pool.create(a, "16M", extent_size=E, mirror_dir=mirror) as p:
        with p.create_lu("m", "1M", mirrored=True) as lu:
            lu.write(0, os.urandom(1 << 20))
    before = open(mirror + "/data", "rb").read()
    subprocess.run(["cp", "-a", a, b], check=True)
    with Pool.open(b) as q:
        assert q.failure_groups()[1]["state"] == "failed"  # refused: it belongs to a
        with q.lu("m") as lu:
            lu.write(0, os.urandom(1 << 20))
    assert open(mirror + "/data", "rb").read() == before
    r = run_cli("pool", "failgrp", "replace", str(tmp_path / "M2"), pool=b)
    assert b"rebuilt" in r.stdout
    run_cli("pool", "scrub", pool=b)
    run_cli("pool", "scrub", pool=a)
    with Pool.open(a) as p:
        assert p.failure_groups()[1]["state"] == "ok" and verify(p, "m")["mismatched"] == []


def test_a_mirror_inside_the_pool_is_stored_relative_and_travels_with_a_copy(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    with Pool.create(a, "16M", extent_size=E, mirror_dir=a + "/fg1") as p:
        with p.create_lu("m", "1M", mirrored=True) as lu:
            lu.write(0, os.urandom(1 << 20))
        assert p.failure_groups()[1]["path"] == a + "/fg1/data"
    subprocess.run(["cp", "-a", a, b], check=True)
    before = open(a + "/fg1/data", "rb").read()
    with Pool.open(b) as q:
        assert [g["path"] for g in q.failure_groups()] == [b + "/fg0/data", b + "/fg1/data"]
        with q.lu("m") as lu:
            lu.write(0, os.urandom(1 << 20))
        assert verify(q, "m")["mismatched"] == [] and scrub(q)["clean"]
    assert open(a + "/fg1/data", "rb").read() == before


def test_failures_under_a_mounted_mirrored_lu_are_seen(tmp_path):
    """Through the real mount: the redundant copy's directory deleted while the LU is written
    (seen at the next fsync: degraded, the writes since marked dirty, the log says why), and the
    primary's file truncated under it (reads come from the mirror, not as zeros)."""
    pool, mirror, mnt = str(tmp_path / "pool"), str(tmp_path / "M"), str(tmp_path / "mnt")
    os.mkdir(mnt)
    run_cli("pool", "create", "--size", "256M", "--extent-size", "1M", "--mirror-dir", mirror, pool=pool)
    run_cli("lu", "create", "d", "--size", "16M", "--mirrored", pool=pool)
    data = os.urandom(16 << 20)
    run_cli("mount", mnt, pool=pool)
    try:
        with open(f"{mnt}/d", "r+b") as f:
            f.write(data[:8 << 20])
            f.flush()
            os.fsync(f.fileno())
            shutil.rmtree(mirror)
            f.write(data[8 << 20:])
            f.flush()
            os.fsync(f.fileno())
        show = json.loads(run_cli("lu", "show", "d", "--json", pool=pool).stdout)
        assert show["mirror"]["state"] == "degraded" and show["mirror"]["dirty_extents"] == 8
        logs = os.path.join(pool, "mounts")
        assert any("failure group 1" in open(os.path.join(logs, f)).read() for f in os.listdir(logs) if f.endswith(".log"))
    finally:
        run_cli("umount", mnt)
    r = run_cli("pool", "failgrp", "replace", pool=pool)
    assert b"16 extent(s) copied and verified" in r.stdout
    run_cli("mount", mnt, pool=pool)
    try:
        with open(f"{mnt}/d", "rb") as f:
            assert f.read(1 << 20) == data[: 1 << 20]
            os.truncate(os.path.join(pool, "fg0", "data"), 4 << 20)  # cut under the mounted LU
            f.seek(0)
            assert f.read() == data
    finally:
        run_cli("umount", mnt)
    rows = json.loads(run_cli("pool", "failgrp", "list", "--json", pool=pool, check_rc=4).stdout)  # 4: a damaged file
    assert [r["state"] for r in rows] == ["failed", "ok"]  # the mount failed it (the cut file has no label left)
    run_cli("lu", "create", "plain", "--size", "1M", pool=pool, check_rc=1)  # unmirrored: refused
    assert run_cli("lu", "read", "d", "--offset", "0", "--length", str(16 << 20), pool=pool).stdout == data
    r = run_cli("pool", "failgrp", "replace", "--group", "0", pool=pool)
    assert b"fg0 rebuilt" in r.stdout
    with Pool.open(pool) as p:
        assert [g["state"] for g in p.failure_groups()] == ["ok", "ok"]
        assert verify(p, "d")["mismatched"] == [] and scrub(p)["clean"] and check(p)["clean"]
        assert sha(p, "d") == hashlib.sha256(data).hexdigest()
        assert [r["name"] for r in p.list_lus()] == ["d"]  # the refused create left nothing
