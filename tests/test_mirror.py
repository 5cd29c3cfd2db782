"""Redundant LUs under real faults: flipped bytes in a data file, a failure group's file gone,
a failure group's filesystem turning read-only in the middle of writes."""
from __future__ import annotations

import os
import random
import subprocess

import pytest

from blockstore.pool import Pool
from blockstore.check import check
from blockstore.scrub import scrub, verify
from conftest import cli_json, flip, run_cli

E = 64 << 10


@pytest.fixture
def mpool(tmp_path):
    p = Pool.create(str(tmp_path / "pool"), "64M", extent_size=E, mirror_dir=str(tmp_path / "fg1"))
    yield p
    p.close()


def phys_extents(pool: Pool, name: str) -> list[int]:
    with pool.lu(name, writable=False) as lu:
        return sorted(set(lu.extent_map.mapped().tolist()))


def test_writes_land_in_both_copies(mpool, tmp_path):
    data = os.urandom(5 * E + 77)
    with mpool.create_lu("m", "4M", mirrored=True) as lu:
        lu.write(1000, data)
    exts = phys_extents(mpool, "m")
    with open(str(tmp_path / "pool" / "fg0" / "data"), "rb") as a, open(str(tmp_path / "fg1" / "data"), "rb") as b:
        for e in exts:
            a.seek(e * E)
            b.seek(e * E)
            assert a.read(E) == b.read(E)
    assert verify(mpool, "m")["mismatched"] == []


def test_scrub_finds_and_repairs_flipped_bytes(mpool, tmp_path):
    rng = random.Random(3)
    data = os.urandom(2 << 20)
    with mpool.create_lu("m", "4M", mirrored=True) as lu:
        lu.write(0, data)
    exts = phys_extents(mpool, "m")
    files = [str(tmp_path / "pool" / "fg0" / "data"), str(tmp_path / "fg1" / "data")]
    victims = {(e, rng.randrange(2)) for e in rng.sample(exts, 8)}
    for e, copy in victims:
        flip(files[copy], e * E + rng.randrange(E))
    rep = scrub(mpool)
    assert {(b["extent"], b["copy"]) for b in rep["bad"]} == victims and not rep["clean"]
    rep = scrub(mpool, repair=True)
    assert rep["repaired"] == len(victims)
    assert scrub(mpool)["clean"]
    with mpool.lu("m", writable=False) as lu:
        assert lu.read(0, len(data)) == data
    assert verify(mpool, "m")["mismatched"] == []


def test_same_extent_bad_in_both_copies_is_unrecoverable(mpool, tmp_path):
    with mpool.create_lu("m", "1M", mirrored=True) as lu:
        lu.write(0, os.urandom(E))
    (e,) = phys_extents(mpool, "m")
    flip(str(tmp_path / "pool" / "fg0" / "data"), e * E + 10)
    flip(str(tmp_path / "fg1" / "data"), e * E + 20)
    before = [open(p, "rb").read() for p in (str(tmp_path / "pool" / "fg0" / "data"), str(tmp_path / "fg1" / "data"))]
    rep = scrub(mpool, repair=True)
    assert rep["unrecoverable"] == [e] and rep["repaired"] == 0 and not rep["clean"]
    after = [open(p, "rb").read() for p in (str(tmp_path / "pool" / "fg0" / "data"), str(tmp_path / "fg1" / "data"))]
    assert before == after  # never "fixed" wrongly
    r = run_cli("pool", "scrub", "--repair", pool=str(tmp_path / "pool"), check_rc=4)
    assert b"unrecoverable" in r.stdout


def test_missing_group_degrades_and_resync_copies_only_dirty(tmp_path):
    pool_dir, fg1 = str(tmp_path / "pool"), str(tmp_path / "fg1")
    with Pool.create(pool_dir, "64M", extent_size=E, mirror_dir=fg1) as p:
        with p.create_lu("m", "4M", mirrored=True) as lu:
            lu.write(0, os.urandom(2 << 20))  # 32 extents, in sync
    os.rename(f"{fg1}/data", f"{fg1}/away")
    with Pool.open(pool_dir) as p:
        events = []
        p.listeners.append(lambda kind, info: events.append(kind))
        assert p.lu_info("m")["mirror"]["state"] == "degraded"
        with p.lu("m") as lu:
            lu.write(E // 2, os.urandom(3 * E))        # extents 0-3, in place
            lu.write(3 << 20, os.urandom(2 * E))      # 2 new extents
        assert sum(p.dirty_extents("m").values()) == 6
        with pytest.raises(Exception):
            p.resync()  # still missing
        os.rename(f"{fg1}/away", f"{fg1}/data")
        assert p.resync("m") == 6
        assert p.lu_info("m")["mirror"] == {"state": "in-sync", "missing_copy": None, "dirty_extents": 0}
        assert verify(p, "m")["mismatched"] == []
        assert scrub(p)["clean"]
        assert check(p)["clean"]


def test_group_failing_during_writes(tmp_path):
    """The second group's filesystem fills up in the middle of writes (ENOSPC from the kernel):
    writes carry on degraded; when it has room again, resync copies what it missed."""
    fs = tmp_path / "fs"
    fs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(fs)], check=True)
    try:
        pool_dir = str(tmp_path / "pool")
        p = Pool.create(pool_dir, "64M", extent_size=E, mirror_dir=str(fs / "fg1"))
        events = []
        p.listeners.append(lambda kind, info: events.append((kind, info.get("copy"))))
        data = os.urandom(4 << 20)
        with p.create_lu("m", "4M", mirrored=True) as lu:
            lu.write(0, data[: 1 << 20])
            lu.flush()
            for pos in range(1 << 20, 4 << 20, E):  # the second copy runs out of room on the way
                lu.write(pos, data[pos:pos + E])
            lu.flush()
            assert lu.read(0, len(data)) == data
        assert ("mirror_degraded", 1) in events
        info = p.lu_info("m")["mirror"]
        assert info["state"] == "degraded" and info["dirty_extents"] >= 16
        subprocess.run(["mount", "-o", "remount,size=128m", str(fs)], check=True)
        assert p.resync("m") == info["dirty_extents"]
        assert verify(p, "m")["mismatched"] == [] and scrub(p)["clean"]
        p.close()
    finally:
        subprocess.run(["umount", "-l", str(fs)], check=False)


def test_snapshots_and_clones_of_mirrored_lus_are_mirrored(mpool):
    with mpool.create_lu("m", "1M", mirrored=True) as lu:
        lu.write(0, os.urandom(4 * E))
    mpool.snapshot("m", "s")
    mpool.clone("m@s", "c")
    assert mpool.lu_info("m@s")["mirrored"] and mpool.lu_info("c")["mirrored"]
    with mpool.lu("c") as c:
        c.write(10, b"cow in both copies")
    assert verify(mpool, "c")["mismatched"] == []
    assert scrub(mpool)["clean"]


def test_mirror_and_unmirror_an_existing_lu(tmp_path):
    pool_dir = str(tmp_path / "pool")
    run_cli("pool", "create", "--size", "64M", "--extent-size", "64K", pool=pool_dir)
    run_cli("lu", "create", "a", "--size", "4M", pool=pool_dir)
    run_cli("lu", "write", "a", pool=pool_dir, stdin=os.urandom(1 << 20))
    r = run_cli("lu", "create", "m", "--size", "1M", "--mirrored", pool=pool_dir, check_rc=1)
    assert b"second failure group" in r.stderr
    run_cli("pool", "failgrp", "add", str(tmp_path / "fg1"), pool=pool_dir)
    rows = cli_json("pool", "failgrp", "list", pool=pool_dir)
    assert [r["state"] for r in rows] == ["ok", "ok"]
    assert b"16 extent(s) copied" in run_cli("lu", "mirror", "a", pool=pool_dir).stdout
    info = cli_json("lu", "show", "a", pool=pool_dir)
    assert info["mirrored"] and info["mirror"]["state"] == "in-sync"
    run_cli("lu", "verify", "a", pool=pool_dir)
    run_cli("pool", "scrub", pool=pool_dir)
    run_cli("lu", "unmirror", "a", pool=pool_dir)
    assert not cli_json("lu", "show", "a", pool=pool_dir)["mirrored"]
    assert os.stat(str(tmp_path / "fg1" / "data")).st_blocks * 512 <= 4096  # only its label is left: space returned
    run_cli("pool", "check", pool=pool_dir)
    r = run_cli("pool", "failgrp", "add", str(tmp_path / "fg2"), pool=pool_dir, check_rc=1)
    assert b"already has a second failure group" in r.stderr
