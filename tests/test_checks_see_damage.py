"""Checks that see the damage: a damaged data file is exit 4 naming the file on every check; a
degraded mirror has an exit status of its own (5) on every check, and a failure the mount saw is
what every other process's commands report."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from blockstore.pool import Pool

from conftest import mounted, run_cli

E = 64 << 10
CHECKS = (("pool", "check"), ("pool", "scrub"), ("pool", "failgrp", "list"))


@pytest.fixture
def mirrored_pool(tmp_path):
    pool, mirror = str(tmp_path / "pool"), str(tmp_path / "M")
    with Pool.create(pool, "8M", extent_size=E, mirror_dir=mirror) as p:
        with p.create_lu("m", "1M", mirrored=True) as lu:
            lu.write(0, b"m" * E)
        with p.create_lu("u", "1M") as lu:
            lu.write(0, b"u" * E)
    return pool, mirror


@pytest.mark.parametrize("damage", ["label", "cut short"])
def test_a_damaged_primary_data_file_is_exit_4_naming_it(mirrored_pool, damage):
    pool, _ = mirrored_pool
    data = os.path.join(pool, "fg0", "data")
    if damage == "label":
        size = os.path.getsize(data)
        with open(data, "r+b") as f:
            f.seek(size - 4096)
            f.write(b"\0" * 64)
    else:
        os.truncate(data, 4 * E)
    for cmd in CHECKS:
        r = run_cli(*cmd, pool=pool, check_rc=None)
        assert r.returncode == 4, (cmd, r.returncode, r.stdout, r.stderr)
        assert data.encode() in r.stdout, (cmd, r.stdout)
    r = run_cli("lu", "read", "u", "--length", "4", pool=pool, check_rc=None)
    assert r.returncode != 0 and b"failure group 0" in r.stderr


def test_a_degraded_mirror_has_an_exit_status_of_its_own(mirrored_pool):
    pool, mirror = mirrored_pool
    shutil.rmtree(mirror)
    for cmd in CHECKS:
        r = run_cli(*cmd, pool=pool, check_rc=None)
        assert r.returncode == 5, (cmd, r.returncode, r.stdout, r.stderr)
        assert b"degraded" in r.stdout or b"failed" in r.stdout, (cmd, r.stdout)
    st = json.loads(run_cli("pool", "status", "--json", pool=pool).stdout)
    assert st["copies"] == ["ok", "failed"]
    assert b"DEGRADED" in run_cli("pool", "status", pool=pool).stdout


def test_a_sync_error_the_mount_meets_is_what_every_command_reports(tmp_path, faulty):
    fmnt, ctl = faulty
    pool = str(tmp_path / "pool")
    run_cli("pool", "create", "--size", "64M", "--mirror-dir", os.path.join(fmnt, "fg1"), pool=pool)
    run_cli("lu", "create", "m", "--size", "8M", "--mirrored", pool=pool)
    with mounted(pool, str(tmp_path / "mnt")) as mp:
        with open(f"{mp}/m", "r+b", buffering=0) as f:
            f.write(b"a" * (1 << 20))
            os.fsync(f.fileno())
            open(ctl, "w").close()                # the second copy's fsync fails from now on
            f.write(b"b" * (1 << 20))
            os.fsync(f.fileno())                  # acknowledged: the mount carries on degraded
            os.unlink(ctl)
            show = json.loads(run_cli("lu", "show", "m", "--json", pool=pool).stdout)
            assert show["mirror"]["state"] == "degraded" and show["mirror"]["missing_copy"] == 1
            r = run_cli("pool", "failgrp", "list", "--json", pool=pool, check_rc=5)
            assert [g["state"] for g in json.loads(r.stdout)] == ["ok", "failed"]
            assert json.loads(run_cli("pool", "status", "--json", pool=pool).stdout)["copies"] == ["ok", "failed"]
