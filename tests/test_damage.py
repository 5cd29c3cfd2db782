"""Damaged metadata (issue 14, item 9): a record or a map entry damaged by hand, and random flips
in copies of a real pool's ``data.mdb`` fed to every read-only command. Each must answer in one
line with exit 4 (damage) or 1 (a refusal such as "no LU named"), never with a traceback or an
"internal error", and a map entry out of range must never read as zeros."""
from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys

import lmdb
import pytest

from blockstore.pool import Pool

from conftest import SLOW, run_cli

READ_ONLY = [
    ("pool", "status"), ("pool", "check"), ("pool", "failgrp", "list"), ("pool", "scrub"),
    ("lu", "list"), ("lu", "show", "vol"), ("lu", "show", "vol@s1"), ("lu", "read", "vol"),
    ("lu", "read", "m"), ("lu", "read", "vol@s1"), ("lu", "verify", "m"), ("cec", "list"),
    ("paging", "list"), ("image", "list"), ("partition", "list"),
]


@pytest.fixture
def damaged_pool(tmp_path):
    """A pool with plain, mirrored, snapshot and clone LUs and service records."""
    pool = str(tmp_path / "pool")
    Pool.create(pool, "32M", extent_size="64K", mirror_dir=str(tmp_path / "fg1")).close()
    with Pool.open(pool) as p:
        p.create_lu("vol", "2M")
        p.create_lu("m", "1M", mirrored=True)
        with p.lu("vol") as lu:
            lu.write(0, os.urandom(1 << 20))
        with p.lu("m") as lu:
            lu.write(0, os.urandom(1 << 20))
        p.snapshot("vol", "s1")
        p.clone("vol@s1", "c1")
        with p.lu("vol") as lu:
            lu.write(0, b"x" * 65536)
    run_cli("cec", "add", "cec1", "--node", "v1", pool=pool)
    run_cli("paging", "request", "--lpar", "lp1", "--min-size", "1M", "--node", "v1", pool=pool)
    return pool


def _lus(pool: str):
    env = lmdb.open(os.path.join(pool, "meta"), max_dbs=16, subdir=True)
    return env, env.open_db(b"lus"), env.open_db(b"maps")


def test_a_record_without_its_name_is_reported_not_a_keyerror(damaged_pool):
    pool = damaged_pool
    env, lus, _ = _lus(pool)
    with env.begin(write=True) as txn:
        rec = json.loads(txn.get(b"c1", db=lus))
        del rec["name"]
        txn.put(b"c1", json.dumps(rec).encode(), db=lus)
    env.close()
    r = run_cli("pool", "check", "--json", pool=pool, check_rc=4)
    rep = json.loads(r.stdout)
    assert any("LU record 'c1' has the wrong name" in e for e in rep["errors"]), rep
    before = open(os.path.join(pool, "meta", "data.mdb"), "rb").read()
    r = run_cli("pool", "check", "--repair", pool=pool, check_rc=4)
    assert b"not repaired: damaged LU records" in r.stdout
    # the repair refused: counts rebuilt without c1's map would have freed the extents it holds
    env, lus, _ = _lus(pool)
    with env.begin() as txn:
        assert b"name" not in txn.get(b"c1", db=lus)
    env.close()
    for args in (("lu", "list"), ("lu", "show", "c1"), ("lu", "read", "c1")):
        r = run_cli(*args, pool=pool, check_rc=4)
        assert r.stderr.decode().count("\n") == 1 and "LU record 'c1'" in r.stderr.decode(), r.stderr
    # put it back: nothing else was touched
    env, lus, _ = _lus(pool)
    with env.begin(write=True) as txn:
        rec["name"] = "c1"
        txn.put(b"c1", json.dumps(rec).encode(), db=lus)
    env.close()
    assert json.loads(run_cli("pool", "check", "--json", pool=pool).stdout)["clean"]
    assert len(before) > 0


def test_a_map_entry_out_of_range_never_reads_as_zeros(damaged_pool):
    pool = damaged_pool
    with Pool.open(pool) as p:
        with p.lu("vol", writable=False) as lu:
            want = lu.read(0, 1 << 20)
        lu_id = next(r for r in p.list_lus() if r["name"] == "vol")["id"]
    env, _, maps = _lus(pool)
    with env.begin(write=True) as txn:
        key = struct.pack(">QI", lu_id, 0)
        raw = bytearray(txn.get(key, db=maps))
        raw[3] ^= 0x40  # one bit of the first entry's high byte: far outside a 32 MiB pool
        txn.put(key, bytes(raw), db=maps)
    env.close()
    for args, stdin in ((("lu", "read", "vol"), None), (("lu", "write", "vol"), b"y" * 100)):
        r = run_cli(*args, pool=pool, stdin=stdin, check_rc=4)
        err = r.stderr.decode()
        assert err.count("\n") == 1 and "the map of LU 'vol'" in err and "outside the pool" in err, err
        assert r.stdout == b""
    rep = json.loads(run_cli("pool", "check", "--json", pool=pool, check_rc=4).stdout)
    assert any("outside the pool" in e for e in rep["errors"]), rep
    env, _, maps = _lus(pool)
    with env.begin(write=True) as txn:
        raw[3] ^= 0x40
        txn.put(key, bytes(raw), db=maps)
    env.close()
    assert run_cli("lu", "read", "vol", pool=pool).stdout[: 1 << 20] == want


# Runs every read-only command in one process (a process per command would take minutes),
# with fds 1 and 2 sent to files, and prints one JSON line per command.
_RUNNER = r"""
import json, os, sys
from blockstore.cli import main
pool, cmds = sys.argv[1], json.loads(sys.argv[2])
for cmd in cmds:
    err = os.open("err.txt", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    null = os.open(os.devnull, os.O_WRONLY)
    saved = os.dup(1), os.dup(2)
    os.dup2(null, 1); os.dup2(err, 2)
    try:
        rc = main(["--pool", pool] + cmd)
    except SystemExit as e:
        rc = e.code
    sys.stdout.flush(); sys.stderr.flush()
    os.dup2(saved[0], 1); os.dup2(saved[1], 2)
    os.lseek(err, 0, 0)
    text = os.read(err, 1 << 20).decode(errors="replace")
    os.close(err); os.close(null); os.close(saved[0]); os.close(saved[1])
    print(json.dumps({"cmd": cmd, "rc": rc, "stderr": text}), flush=True)
"""


def _page_damage(original: bytes, rng: random.Random) -> bytes:
    """A few bits of a few pages, as a bad sector or a stray write would leave them; only pages
    that hold something (LMDB's meta pages, branches, leaves, overflow), since flips in free
    space prove nothing."""
    content = [i for i in range(len(original) // 4096) if original[i * 4096:(i + 1) * 4096].count(0) < 4000]
    damaged = bytearray(original)
    for _ in range(rng.choice((1, 4, 16, 64))):
        off = rng.choice(content) * 4096 + rng.randrange(4096)
        damaged[off] ^= 1 << rng.randrange(8)
    return bytes(damaged)


def _value_damage(meta_dir: str, rng: random.Random) -> None:
    """One bit of one stored value, written through LMDB: the file stays a valid LMDB file and the
    damage reaches the engine's own parsing (JSON that still parses, a digit changed, a map or a
    count entry changed)."""
    env = lmdb.open(meta_dir, max_dbs=16, subdir=True)
    names = ["lus", "maps", "rc", "mrc", "free", "svc", "config", "bsums", "dirty", "resv"]
    with env.begin(write=True) as txn:
        items = [(db, k) for name in names for db in [env.open_db(name.encode(), txn=txn)]
                 for k in txn.cursor(db=db).iternext(values=False)]
        db, key = rng.choice(items)
        value = bytearray(txn.get(key, db=db))
        value[rng.randrange(len(value))] ^= 1 << rng.randrange(8)
        txn.put(key, bytes(value), db=db)
    env.close()


@pytest.mark.parametrize("damage", ["pages", "values"])
def test_random_damage_to_data_mdb_gives_one_line_errors(damaged_pool, tmp_path, damage):
    pool = damaged_pool
    mdb = os.path.join(pool, "meta", "data.mdb")
    original = open(mdb, "rb").read()
    rng = random.Random(14)
    workdir = tmp_path / "run"
    workdir.mkdir()
    seen: dict[tuple[int, str], int] = {}
    failures = []
    for copy in range(int(os.environ.get('DAMAGE_COPIES', 80 if SLOW else 12))):
        lock = os.path.join(pool, "meta", "lock.mdb")
        if os.path.exists(lock):
            os.unlink(lock)
        if damage == "pages":
            with open(mdb, "wb") as f:
                f.write(_page_damage(original, rng))
        else:
            with open(mdb, "wb") as f:
                f.write(original)
            _value_damage(os.path.join(pool, "meta"), rng)
        r = subprocess.run([sys.executable, "-c", _RUNNER, pool, json.dumps([list(c) for c in READ_ONLY])],
                           capture_output=True, timeout=120, cwd=workdir)
        results = [json.loads(line) for line in r.stdout.decode().splitlines()]
        if r.returncode != 0:
            # LMDB was sent past the end of its file: the process ends with one line and exit 4
            done = len(results)
            results.append({"cmd": list(READ_ONLY[done]), "rc": r.returncode,
                            "stderr": (workdir / "err.txt").read_text()})
            assert r.returncode == 4 and "memory fault reading the pool" in results[-1]["stderr"], (copy, results[-1])
        for res in results:
            err, rc = res["stderr"], res["rc"]
            if "Traceback" in err or "internal error" in err or rc not in (0, 1, 3, 4, 5):
                failures.append((copy, res))
            reports = res["cmd"][:2] in (["pool", "check"], ["pool", "scrub"], ["pool", "failgrp"], ["lu", "verify"])
            # a refusal ends in one line (a warning such as "failure group 1 is unavailable" may
            # come before it); check, scrub and verify report on stdout and may exit 4 quietly
            lines = err.splitlines()
            assert all(line.startswith("blockstore: ") for line in lines), (copy, res)
            assert lines or not rc or reports, (copy, res)
            seen[(rc, res["cmd"][0])] = seen.get((rc, res["cmd"][0]), 0) + 1
    with open(mdb, "wb") as f:
        f.write(original)
    os.unlink(os.path.join(pool, "meta", "lock.mdb"))
    print("outcomes (exit code, command group): count", seen)
    assert not failures, failures
    # the damage was seen: some commands refused it
    assert any(rc == 4 for rc, _ in seen), seen
    assert json.loads(run_cli("pool", "check", "--json", pool=pool).stdout)["clean"]


def test_a_metadata_file_cut_short_is_refused_before_it_is_read(damaged_pool):
    mdb = os.path.join(damaged_pool, "meta", "data.mdb")
    os.truncate(mdb, 8192)  # LMDB's two meta pages survive; every page they point to is gone
    for args in (("lu", "list"), ("pool", "check"), ("lu", "read", "vol")):
        r = run_cli(*args, pool=damaged_pool, check_rc=4)
        assert r.stderr.decode().count("\n") == 1 and "the file was cut short" in r.stderr.decode(), r.stderr


def test_a_memory_fault_ends_the_command_in_one_line(tmp_path):
    """What LMDB does with a damaged page that points past the end of its file, done directly: a
    read through a mapping beyond the end of the file it maps (SIGBUS)."""
    f = tmp_path / "mapped"
    f.write_bytes(b"x" * 8192)
    code = ("import mmap, os; import blockstore.native as n; "
            "n.fault_exit('blockstore: memory fault reading the pool\\n', 4); "
            f"fd = os.open({str(f)!r}, os.O_RDWR); m = mmap.mmap(fd, 8192); os.truncate({str(f)!r}, 0); m[4096]")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert r.returncode == 4 and r.stderr == b"blockstore: memory fault reading the pool\n", r
