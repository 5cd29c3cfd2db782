"""Lifecycle operations on every kind of target: a command must never write metadata that the
checks call damage. Each refused operation leaves the pool exactly as it was."""
from __future__ import annotations

import json
import os

import lmdb

from blockstore.pool import Pool

from conftest import run_cli


def _listing(pool: str) -> str:
    return run_cli("--json", "lu", "list", "--kind", "all", pool=pool).stdout.decode()


def test_flatten_of_a_snapshot_is_refused_and_the_pool_stays_usable(tmp_path):
    pool = str(tmp_path / "pool")
    with Pool.create(pool, "32M", extent_size="64K", mirror_dir=str(tmp_path / "fg1")) as p:
        with p.create_lu("a", "1M") as lu:
            lu.write(0, b"x" * 70000)
        p.snapshot("a", "s")
    before = _listing(pool)
    for cmd in (("lu", "flatten", "a@s"), ("lu", "mirror", "a@s"), ("lu", "unmirror", "a@s")):
        r = run_cli(*cmd, pool=pool, check_rc=None)
        assert r.returncode != 0, cmd
        err = r.stderr.decode().strip()
        assert "snapshot" in err and "\n" not in err and "Traceback" not in err, err
        assert _listing(pool) == before
        assert run_cli("pool", "check", pool=pool, check_rc=None).returncode == 0
    assert run_cli("lu", "read", "a@s", "--length", "4", pool=pool).stdout == b"xxxx"


def test_check_repair_gives_a_snapshot_back_the_parent_its_name_proves(tmp_path):
    """A pool whose snapshot lost its parent link (what the old flatten wrote) is repaired."""
    pool = str(tmp_path / "pool")
    with Pool.create(pool, "32M", extent_size="64K") as p:
        with p.create_lu("a", "1M") as lu:
            lu.write(0, b"y" * 70000)
        p.snapshot("a", "s")
    env = lmdb.open(os.path.join(pool, "meta"), max_dbs=16, subdir=True)
    with env.begin(write=True) as txn:
        db = env.open_db(b"lus", txn=txn)
        rec = json.loads(txn.get(b"a@s", db=db))
        rec["parent"] = None
        txn.put(b"a@s", json.dumps(rec).encode(), db=db)
    env.close()
    r = run_cli("pool", "check", pool=pool, check_rc=4)
    assert b"lost the link" in r.stdout + r.stderr
    run_cli("pool", "check", "--repair", pool=pool)
    run_cli("pool", "check", pool=pool)
    assert run_cli("lu", "read", "a@s", "--length", "2", pool=pool).stdout == b"yy"
    assert json.loads(run_cli("--json", "lu", "show", "a@s", pool=pool).stdout)["parent"] == "a"
