"""Read redirection (Pool.open_redundant: what a node reads of an LU another node owns) while the
owner, another process, writes, frees and reuses extents: a read is never another LU's bytes and
never a torn mix, only a state of the LU some commit left."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time

from blockstore.pool import Pool

E = 64 * 1024
N = 16 * E   # all of LU a: a read of it takes long enough for a commit to land meanwhile
OWNER = textwrap.dedent("""
    import sys, time
    from blockstore.pool import Pool
    N = 16 * 64 * 1024
    pool = Pool.open(sys.argv[1])
    a, b = pool.open_lu("a"), pool.open_lu("b")
    print("ready", flush=True)
    end, k = time.monotonic() + float(sys.argv[2]), 0
    while time.monotonic() < end:
        a.write(0, bytes([k % 200 + 1]) * N)   # new extents for all of a
        pool.flush()
        a.discard(0, N)                        # freed by this commit...
        pool.flush()
        b.write(0, b"\\xee" * N)               # ...and handed to LU b after it
        pool.flush()
        b.discard(0, N)
        pool.flush()
        k += 1
    print(k, flush=True)
    pool.close()
""")


def test_redirected_reads_never_see_another_lus_bytes(tmp_path):
    path = str(tmp_path / "pool")
    with Pool.create(path, "64M", extent_size="64K", mirror_dir=str(tmp_path / "fg1")) as p:
        p.create_lu("a", "1M", mirrored=True).close()
        p.create_lu("b", "1M", mirrored=True).close()
    owner = subprocess.Popen([sys.executable, "-c", OWNER, path, "3"], stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None and owner.stdout.readline().strip() == "ready"
    seen: dict[str, int] = {"zeros": 0, "a": 0}
    with Pool.open(path) as p, p.open_redundant("a") as r:
        end = time.monotonic() + 3
        while time.monotonic() < end:
            got = r.read(0, N)
            first = got[0]
            assert got == bytes([first]) * N, f"a torn read: {sorted(set(got))}"
            assert first != 0xEE, "LU b's bytes read through LU a"
            seen["zeros" if first == 0 else "a"] += 1
    rounds = int(owner.stdout.readline())
    assert owner.wait() == 0
    assert rounds > 20 and seen["a"] > 0 and seen["zeros"] > 0, (rounds, seen)
