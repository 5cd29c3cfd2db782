"""Read redirection (Pool.open_redundant: what a node reads of an LU another node owns) while the
owner, another process, writes, frees and reuses extents: a read is never another LU's bytes and
never a torn mix, only a state of the LU some commit left."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from blockstore.pool import Pool

from pool_peer import Peer

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


class Through:
    """Reads of a redirected handle the way a mount makes them: by the C direct path's table
    while it serves, else by the handle (which republishes the table)."""

    def __init__(self, lu, direct: bool) -> None:  # type: ignore[no-untyped-def]
        self.lu, self.table = lu, lu.direct_table() if direct else None
        self.fast = self.slow = 0

    def read(self, offset: int, n: int) -> bytes:
        if self.table is not None:
            buf = bytearray(n)
            if self.table.pread(buf, offset) == 0:
                self.fast += 1
                return bytes(buf)
        self.slow += 1
        return self.lu.read(offset, n)


@pytest.mark.parametrize("direct", [False, True], ids=["python", "c"])
def test_redirected_reads_never_see_another_lus_bytes(tmp_path, direct):
    path = str(tmp_path / "pool")
    with Pool.create(path, "64M", extent_size="64K", mirror_dir=str(tmp_path / "fg1")) as p:
        p.create_lu("a", "1M", mirrored=True).close()
        p.create_lu("b", "1M", mirrored=True).close()
    owner = subprocess.Popen([sys.executable, "-c", OWNER, path, "3"], stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None and owner.stdout.readline().strip() == "ready"
    seen: dict[str, int] = {"zeros": 0, "a": 0}
    with Pool.open(path) as p, p.open_redundant("a") as lu:
        r = Through(lu, direct)
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
    if direct:
        assert r.fast > 0 and r.slow > 0, (r.fast, r.slow)  # C served reads, and let commits through


def test_the_c_table_of_a_redirected_reader_serves_only_between_commits(tmp_path):
    path = str(tmp_path / "pool")
    with Pool.create(path, "64M", extent_size="64K", mirror_dir=str(tmp_path / "fg1")) as p:
        p.create_lu("a", "1M", mirrored=True).close()
    owner = Peer(path)
    try:
        assert owner.ask(op="own", name="a") == {"ok": True}
        owner.ask(op="write", name="a", offset=0, hex=(b"1" * E).hex())
        owner.ask(op="flush")
        with Pool.open(path) as p, p.open_redundant("a") as lu:
            table, buf = lu.direct_table(), bytearray(E)
            assert table is not None and table.pread(buf, 0) == 1   # nothing known yet: Python reads
            assert lu.read(0, E) == b"1" * E
            assert table.pread(buf, 0) == 0 and buf == b"1" * E     # then C, without a transaction
            owner.ask(op="write", name="a", offset=E, hex=(b"2" * E).hex())  # a new extent, not committed
            assert table.pread(buf, E) == 0 and buf == bytes(E)     # a hole, as the last commit has it
            owner.ask(op="flush")                                   # a commit: C stops trusting its map
            assert table.pread(buf, 0) == 1 and table.pread(buf, E) == 1
            assert lu.read(E, E) == b"2" * E
            assert table.pread(buf, E) == 0 and buf == b"2" * E
    finally:
        owner.end()
