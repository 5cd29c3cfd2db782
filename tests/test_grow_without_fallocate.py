"""``pool grow`` on a file system without fallocate (a FUSE passthrough that has no such call,
faultfs.py): the old label's place is written as zeros instead of punched, durably, and the pool
grows; before, it failed with a bare "Operation not supported"."""
from __future__ import annotations

import json
import os

from conftest import run_cli


def test_pool_grow_where_holes_cannot_be_punched(faulty):
    fmnt, _ = faulty
    pool = os.path.join(fmnt, "pool")
    run_cli("pool", "create", "--size", "4M", "--extent-size", "64K", pool=pool)
    run_cli("lu", "create", "a", "--size", "8M", pool=pool)
    run_cli("lu", "write", "a", "--offset", "0", pool=pool, stdin=b"x" * (4 << 20))  # fills the pool
    r = run_cli("pool", "grow", "--size", "16M", pool=pool)
    assert b"16 MiB" in r.stdout, r.stdout
    run_cli("lu", "write", "a", "--offset", str(4 << 20), pool=pool, stdin=b"y" * (4 << 20))  # new extents
    got = run_cli("lu", "read", "a", "--length", str(8 << 20), pool=pool).stdout
    assert got == b"x" * (4 << 20) + b"y" * (4 << 20)
    assert json.loads(run_cli("pool", "status", "--json", pool=pool).stdout)["capacity"] == 16 << 20
    run_cli("pool", "check", pool=pool)
