"""Cost that does not grow with the number of LUs: create, open, snapshot, clone, remove and
show read the records they need (by name, or by the catalog's indexes: a name's snapshots are
one prefix, a record lists its clones), never the whole catalog. Counted in records read and in
lock-directory entries listed, which a timing could only suggest (the bench times them)."""
from __future__ import annotations

import os

from blockstore.pool import Pool
from blockstore.check import check


def _work(p: Pool) -> dict[str, int]:
    """Records read and directory entries listed by one round of lifecycle operations."""
    counts = {"records": 0, "entries": 0}
    real_record, real_listdir = p.meta.lu_record, os.listdir

    def record(*a, **k):  # type: ignore[no-untyped-def]
        counts["records"] += 1
        return real_record(*a, **k)

    def listdir(path):  # type: ignore[no-untyped-def]
        out = real_listdir(path)
        counts["entries"] += len(out)
        return out
    p.meta.lu_record = record  # type: ignore[method-assign]
    os.listdir = listdir  # type: ignore[assignment]
    try:
        p.create_lu("x", "1M").close()
        with p.lu("x") as lu:
            lu.write(0, b"x" * 4096)
        p.snapshot("x", "s")
        p.clone("x@s", "y")
        p.lu_info("x")
        p.lu_info("x@s")
        p.remove("y")
        p.remove("x", recursive=True)
    finally:
        p.meta.lu_record = real_record  # type: ignore[method-assign]
        os.listdir = real_listdir
    return counts


def test_lifecycle_work_is_the_same_with_ten_or_six_hundred_lus(tmp_path):
    with Pool.create(str(tmp_path / "few"), "1G") as few, Pool.create(str(tmp_path / "many"), "1G") as many:
        for p, n in ((few, 10), (many, 600)):
            for i in range(n):
                p.create_lu(f"lu{i:04d}", "1M").close()
        assert _work(few) == _work(many)  # was: every remove read all 600 records, every open listed 600 locks
        assert check(many)["clean"]


def test_the_clone_index_is_checked_and_rebuilt(tmp_path):
    import json

    import lmdb
    pool = str(tmp_path / "pool")
    with Pool.create(pool, "64M") as p:
        p.create_lu("a", "1M").close()
        p.clone("a", "b")
        assert p.lu_info("a")["clones"] == ["b"]
    env = lmdb.open(os.path.join(pool, "meta"), max_dbs=16)
    with env.begin(write=True) as txn:  # an index gone wrong (or one a pool of an older version lacks)
        db = env.open_db(b"lus", txn=txn)
        rec = json.loads(txn.get(b"a", db=db))
        rec["clones"] = []
        txn.put(b"a", json.dumps(rec).encode(), db=db)
    env.close()
    with Pool.open(pool) as p:
        rep = check(p)
        assert rep["code"] == 4 and "list their clones wrongly" in " ".join(rep["errors"])
        assert check(p, repair=True)["clean"]
        assert p.lu_info("a")["clones"] == ["b"]
