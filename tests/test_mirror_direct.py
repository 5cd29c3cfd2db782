"""Mirrored LUs on the C direct path, through the real mount: fio with verify, then both copies
compared byte for byte and scrub clean; a copy that fails under the writes (its writes failing,
its file removed) degrades the LU without an error reaching the client; SIGKILL after fsync
keeps both copies whole."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from blockstore.pool import Pool
from blockstore.check import check
from blockstore.meta import Meta
from blockstore.scrub import scrub
from conftest import daemon_pid, direct_counts, mount_log, run_cli

MiB = 1 << 20


def fio_verify(path: str, rw: str, bs: str, size: str = "48M", **extra: str) -> dict:
    cmd = ["fio", "--name=v", f"--filename={path}", f"--rw={rw}", f"--bs={bs}", "--direct=1",
           "--ioengine=libaio", "--iodepth=16", "--numjobs=2", f"--size={size}", "--offset_increment=64M",
           "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0",
           "--group_reporting", "--output-format=json"] + [f"--{k}={v}" for k, v in extra.items()]
    r = subprocess.run(cmd, capture_output=True, timeout=300)
    assert r.returncode == 0, (r.stdout.decode()[-2000:], r.stderr.decode()[-2000:])
    job = json.loads(r.stdout[r.stdout.index(b"{"):])["jobs"][0]
    assert job["error"] == 0
    return job


def copies_differ(pool: Pool, name: str) -> list[int]:
    """Logical extents of ``name`` whose two copies are not byte for byte the same."""
    E = pool.extent_size
    with pool.lu(name, writable=False) as lu:
        fds = [pool.groups.files[i].fd for i in (0, 1)]
        return [int(e) for e in lu.mapped_extents()
                if len({os.pread(fd, E, lu.physical_extent(int(e)) * E) for fd in fds}) != 1]


@pytest.fixture
def mirrored(tmp_path):
    pool, mnt = str(tmp_path / "pool"), str(tmp_path / "mnt")
    os.mkdir(mnt)
    run_cli("pool", "create", "--size", "1G", "--mirror-dir", str(tmp_path / "M"), pool=pool)
    run_cli("lu", "create", "m", "--size", "128M", "--mirrored", pool=pool)
    yield pool, mnt
    if os.path.ismount(mnt):
        run_cli("umount", mnt, check_rc=None)


@pytest.mark.parametrize("rw,bs", [("randwrite", "4k"), ("write", "1M")])
def test_fio_verify_on_a_mirrored_lu_and_both_copies_agree(mirrored, rw, bs):
    pool, mnt = mirrored
    run_cli("mount", mnt, pool=pool)
    fio_verify(f"{mnt}/m", "write", "1M")      # first writes: the engine allocates (Python)
    fio_verify(f"{mnt}/m", rw, bs)             # in place: the direct path writes both copies
    run_cli("umount", mnt)
    counts = direct_counts(pool)
    second = 2 * 48 * MiB // (MiB if bs == "1M" else 4096)  # requests of the in-place run
    assert counts["write direct"] >= 0.8 * second and counts["read direct"] > 0, counts
    with Pool.open(pool) as p:
        assert copies_differ(p, "m") == []
        rep = scrub(p)
        assert rep["clean"] and rep["bad"] == [] and rep["copies"] == [0, 1], rep
        assert check(p)["clean"]


def test_a_copy_failing_under_direct_writes_degrades_without_an_error(tmp_path, faulty):
    """The second copy lives on a file system whose writes start failing mid-run: the direct
    write that meets the error is done again by the engine, which takes the copy out of service;
    fio sees no error and verifies; after the copy is back, resync makes them agree."""
    fmnt, ctl = faulty
    pool, mnt = str(tmp_path / "pool"), str(tmp_path / "mnt")
    os.mkdir(mnt)
    run_cli("pool", "create", "--size", "256M", "--mirror-dir", fmnt, pool=pool)
    run_cli("lu", "create", "m", "--size", "64M", "--mirrored", pool=pool)
    run_cli("mount", mnt, pool=pool)
    try:
        fio_verify(f"{mnt}/m", "write", "1M", size="16M", numjobs="1")
        fails = str(ctl) + ".write"
        proc = subprocess.Popen(["sh", "-c", f"sleep 1.5; touch {fails}"])  # once fio writes, on a busy machine too
        job = fio_verify(f"{mnt}/m", "randwrite", "4k", size="16M", numjobs="1", runtime="4", time_based="1")
        proc.wait()
        assert os.path.exists(fails)
        assert job["write"]["io_bytes"] > 0
    finally:
        run_cli("umount", mnt)
    counts = direct_counts(pool)
    assert counts["write direct"] > 0, counts
    assert "failure group 1" in mount_log(pool) and "continuing degraded" in mount_log(pool)
    meta = Meta(os.path.join(pool, "meta"))
    with meta.read() as txn:
        missed = meta.fg_array(txn, "dirty", 1, 256, bool, 0)
    meta.close()
    assert missed.any()                         # what copy 1 missed is on record
    os.unlink(str(ctl) + ".write")
    with Pool.open(pool) as p:                  # the copy is back: a resync (an explicit act) copies what it missed
        assert p.failure_groups()[1]["state"] == "failed"
        assert p.resync() > 0
        assert p.failure_groups()[1]["dirty_extents"] == 0
        assert copies_differ(p, "m") == []
        assert scrub(p)["clean"] and check(p)["clean"]


def test_a_removed_copy_is_dropped_at_the_next_flush(mirrored):
    pool, mnt = mirrored
    run_cli("mount", mnt, pool=pool)
    fio_verify(f"{mnt}/m", "write", "1M", size="16M", numjobs="1")
    os.unlink(os.path.join(os.path.dirname(pool), "M", "data"))
    job = fio_verify(f"{mnt}/m", "randwrite", "4k", size="16M", numjobs="1", end_fsync="1")
    assert job["write"]["io_bytes"] >= 16 * MiB
    status = run_cli("pool", "failgrp", "list", "--json", pool=pool, check_rc=5).stdout  # 5: degraded
    assert json.loads(status)[1]["state"] == "failed"
    run_cli("umount", mnt)
    with Pool.open(pool) as p:
        with p.lu("m", writable=False) as lu:
            assert lu.read(0, 4096) != bytes(4096)
        rep = check(p)
        assert rep["code"] == 5 and not rep["errors"] and not rep["leaks"], rep  # degraded, nothing else


def test_sigkill_after_fsync_keeps_both_copies(mirrored):
    pool, mnt = mirrored
    run_cli("mount", mnt, pool=pool)
    blobs = {}
    for rnd in range(2):  # the first round fills holes (the engine), the second goes direct
        with open(f"{mnt}/m", "r+b", buffering=0) as f:
            for k in range(64):
                blobs[k] = os.urandom(64 << 10)
                os.pwrite(f.fileno(), blobs[k], k * 2 * MiB + rnd * 4096)
            os.fsync(f.fileno())
    os.kill(daemon_pid(pool), signal.SIGKILL)
    time.sleep(0.3)
    run_cli("umount", mnt)
    with Pool.open(pool) as p:
        with p.lu("m", writable=False) as lu:
            for k, blob in blobs.items():
                assert lu.read(k * 2 * MiB + 4096, len(blob)) == blob, k
        assert copies_differ(p, "m") == []
        rep = scrub(p)
        assert rep["clean"] and rep["bad"] == [], rep
