"""Mirror health is one truth across processes (health.py): a copy failed by one process is
failed for every process; opening the pool elsewhere never resyncs behind a degraded writer's
back; a resync runs where the LU is held; nothing reads a copy for an extent it lacks. The
copy fails for real: its directory is a fault-injecting FUSE passthrough (faultfs.py)."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap

import pytest

from blockstore.pool import Pool
from blockstore.check import check

E = 64 << 10


def other_process(pool: str, code: str) -> dict:
    """Run ``code`` in another process with ``p``, the pool opened read-write; what it assigns
    to ``out`` comes back."""
    prog = (f"import json, os\nfrom blockstore.pool import Pool\nout = {{}}\n"
            f"with Pool.open({pool!r}) as p:\n" + "".join(f"    {line}\n" for line in code.splitlines())
            + "print(json.dumps(out))\n")
    r = subprocess.run([sys.executable, "-c", prog], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    return json.loads(r.stdout.decode().splitlines()[-1])


@pytest.fixture
def degraded(tmp_path, faulty):
    """A pool whose second copy lives on the faulty file system; LUs ``m`` and ``n`` mirrored,
    ``m`` held by this process and written after copy 1 failed under it."""
    fmnt, ctl = faulty
    pool = str(tmp_path / "pool")
    Pool.create(pool, "32M", extent_size=E, mirror_dir=os.path.join(fmnt, "fg1")).close()
    p = Pool.open(pool)
    p.create_lu("n", "1M", mirrored=True).close()
    lu = p.create_lu("m", "1M", mirrored=True)
    lu.write(0, b"A" * (4 * E))
    lu.flush()
    open(str(ctl) + ".write", "w").close()
    lu.write(0, b"B" * E)  # copy 1 fails under this write: degraded from here on
    lu.flush()
    assert p.mirror.degraded == [1]
    os.unlink(str(ctl) + ".write")  # the file system is back; the copy stays failed until a resync
    yield pool, p, lu
    lu.close()
    p.close()


def test_a_copy_failed_in_one_process_is_failed_in_every_other(degraded):
    pool, p, lu = degraded
    seen = other_process(pool, """
out["groups"] = [g["state"] for g in p.failure_groups()]
out["m"] = p.lu_info("m")["mirror"]["state"]
with p.lu("n") as n:
    n.write(0, b"N" * 4096)
out["n_dirty"] = p.dirty_extents("n")[1]
out["copied"] = p.resync("n")              # n is nobody else's: copy 1 back in service, resyncing
out["after"] = [g["state"] for g in p.failure_groups()]
with p.open_redundant("n") as r:
    out["n_redirected"] = r.read(0, 4).decode()
with p.open_redundant("m") as r:
    try:
        out["m_redirected"] = r.read(0, 4).decode()
    except OSError as e:
        out["m_error"] = str(e)
""")
    assert seen["groups"] == ["ok", "failed"] and seen["m"] == "degraded"
    assert seen["n_dirty"] == 1            # its writes without copy 1 are on record too
    assert seen["copied"] == 1 and seen["after"] == ["ok", "resyncing"]
    assert seen["n_redirected"] == "NNNN"
    assert "m_redirected" not in seen      # copy 1's old bytes ("AAAA") are never read
    assert "lacks" in seen["m_error"]
    assert p.dirty_extents("m")[1] == 1
    lu.write(E, b"D" * E)                  # still without copy 1 here: marked
    lu.flush()                             # and this commit follows the record: copy 1 is back
    assert p.mirror.degraded == [] and p.dirty_extents("m")[1] == 2
    lu.write(2 * E, b"D" * E)              # written to both copies: not marked
    lu.flush()
    assert p.dirty_extents("m")[1] == 2
    assert p.resync() == 2 and p.failure_groups()[1]["state"] == "ok"
    assert check(p)["clean"]


def test_an_open_elsewhere_never_resyncs_behind_a_degraded_writer(degraded, tmp_path):
    """Before: the other process's open resynced and cleared the bits while this one kept
    writing without copy 1; a later loss of copy 0 then lost acknowledged writes silently."""
    pool, p, lu = degraded
    other_process(pool, "out['opened'] = True")    # an ordinary read-write open, elsewhere
    lu.write(0, b"C" * E)                            # still degraded here: marked again
    lu.flush()
    assert p.dirty_extents("m")[1] == 1
    refused = other_process(pool, """
try:
    p.resync("m")
except Exception as e:
    out["error"] = type(e).__name__ + ": " + str(e)
""")
    assert refused["error"].startswith("Busy") and str(os.getpid()) in refused["error"]
    assert p.resync("m") == 1                        # where the LU is held
    assert p.failure_groups()[1]["state"] == "ok" and p.lu_info("m")["mirror"]["state"] == "in-sync"
    lu.close()
    os.truncate(os.path.join(pool, "fg0", "data"), 0)  # copy 0 lost: copy 1 must hold every write
    with p.lu("m", writable=False) as r:
        assert r.read(0, 2 * E) == b"C" * E + b"A" * E


def test_the_pool_wide_resync_leaves_a_held_lu_to_its_holder(degraded):
    pool, p, lu = degraded
    refused = other_process(pool, """
try:
    p.resync()
except Exception as e:
    out["error"] = type(e).__name__
""")
    assert refused["error"] == "Busy" and p.failure_groups()[1]["state"] == "failed"  # as before
    assert p.resync() == 1 and p.failure_groups()[1]["state"] == "ok"
    assert check(p)["clean"]


DIES_WRITING = """
import os, signal, sys
from blockstore.pool import Pool
p = Pool.open(sys.argv[1])
lu = p.open_lu("m")
lu.write(0, b"C" * (3 * 65536))  # in place and into new extents, never flushed
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_recovery_is_a_duty_never_a_side_effect_of_opening(tmp_path):
    """A pool opened with recover=False (a cluster node's serving process) leaves what a dead
    session left (its activity log, its reserved extents) to ``recover()``, the duty of the
    node that takes the session's LUs over; reading LUs meanwhile changes nothing."""
    from blockstore.storage.activity import dead_logs
    pool = str(tmp_path / "pool")
    with Pool.create(pool, "32M", extent_size=E, mirror_dir=str(tmp_path / "M")) as p:
        with p.create_lu("m", "1M", mirrored=True) as lu:
            lu.write(0, b"A" * E)
    r = subprocess.run([sys.executable, "-c", DIES_WRITING, pool])
    assert r.returncode == -9
    with Pool.open(pool, recover=False) as p:
        with p.lu("m", writable=False) as lu:  # a region in flight is refused until settled, never misread
            with pytest.raises(OSError) as e:
                lu.read(0, E)
            assert e.value.errno == errno.EIO
            assert lu.read(E, 2 * E) == bytes(2 * E)
        with p.open_redundant("m") as lu:  # one copy alone: what it holds, flushed or not
            assert lu.read(0, E) in (b"A" * E, b"C" * E) and lu.read(E, 2 * E) == bytes(2 * E)
        assert len(dead_logs(p.locks_dir, p.liveness.session_alive)) == 1
        before = check(p)
        assert before["reclaimable"] >= 2, before  # what it wrote into, and what it had reserved ahead
        got = p.recover()
        assert got["settled"] >= 1 and got["reclaimed"] == before["reclaimable"], got
        assert dead_logs(p.locks_dir, p.liveness.session_alive) == []
        after = check(p)
        assert after["clean"] and after["reclaimable"] == 0, after
        with p.lu("m", writable=False) as lu, p.open_redundant("m") as copy1:
            assert lu.read(0, E) == copy1.read(0, E) == b"C" * E  # both copies had it: adopted
    with Pool.open(pool) as p:  # and an ordinary open recovers as before
        assert p.recover() == {"settled": 0, "reclaimed": 0}


def test_the_c_table_of_a_redirected_reader_never_serves_what_the_copy_lacks(degraded):
    """Copy 1 failed under a write of m's extent 0 (m held by this process) and is back in
    service: a reader of copy 1 in another process gets EIO there, from C's table as from
    Python, until m's resync has given the copy the extent; then C serves it."""
    pool, p, held = degraded
    code = textwrap.dedent("""
        import errno, sys
        from blockstore.pool import Pool
        E = 64 << 10
        with Pool.open(sys.argv[1]) as q, q.open_redundant("m") as lu:
            table, buf = lu.direct_table(), bytearray(E)
            for line in sys.stdin:
                off = int(line)
                try:
                    py = lu.read(off, E)[:1].decode()
                except OSError as e:
                    py = errno.errorcode[e.errno]
                c = table.pread(buf, off)
                print(py, "served" if c == 0 and buf[:1].decode() == py else "slow" if c == 1 else c, flush=True)
    """)
    p.resync("n")  # copy 1 back in service (a reader of a failed copy is refused at open); m's extent 0 lacking
    reader = subprocess.Popen([sys.executable, "-c", code, pool], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)

    def read(off: int) -> str:
        reader.stdin.write(f"{off}\n")
        reader.stdin.flush()
        return reader.stdout.readline().strip()
    try:
        assert read(E) == "A served"
        assert read(0) == "EIO slow"                 # C hands it to Python, which refuses it
        p.resync("m")
        assert read(0) == "B served"
    finally:
        reader.stdin.close()
        assert reader.wait(timeout=30) == 0
