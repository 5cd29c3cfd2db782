"""Deferred copy on write (lu.py): a write of whole 4 KiB blocks into a shared extent lands in a
new extent at once and the rest is copied later. Every lifecycle operation meets such extents
here, with the LU's and every snapshot's bytes checked against a model after each step."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from blockstore.pool import Pool
from blockstore import InvalidArgument
from blockstore import lu as lu_module
from blockstore.check import check

E = 64 << 10
B = 4096


@pytest.fixture
def no_filler():
    lu_module.FILLER = False
    yield
    lu_module.FILLER = True


class Model:
    """An LU and its snapshots with the bytes each must read."""

    def __init__(self, pool: Pool, name: str, size: int, mirrored: bool = False) -> None:
        self.pool, self.name = pool, name
        self.lu = pool.create_lu(name, size, mirrored=mirrored)
        self.want = {name: bytearray(os.urandom(size))}
        self.lu.write(0, bytes(self.want[name]))

    def write(self, offset: int, data: bytes, name: str | None = None) -> None:
        name = name or self.name
        lu = self.lu if name == self.name else self.pool.open_lu(name)
        lu.write(offset, data)
        self.want[name][offset:offset + len(data)] = data

    def snapshot(self, snap: str) -> None:
        self.pool.snapshot(self.name, snap)
        self.want[f"{self.name}@{snap}"] = bytearray(self.want[self.name])

    def verify(self) -> None:
        for name, want in self.want.items():
            if name == self.name:
                got = self.lu.read(0, len(want))
            else:
                with self.pool.lu(name, writable=False) as h:
                    got = h.read(0, h.size)
            assert got == bytes(want), name
            # reads inside one extent, across a held extent's block boundaries
            if name == self.name:
                for off in (B - 100, E - 10, E + B, 2 * E - B // 2):
                    if off + 300 <= len(want):
                        assert self.lu.read(off, 300) == bytes(want[off:off + 300])


def held_writes(m: Model, exts: range) -> None:
    """One block written into the middle of each extent of ``exts`` (each shared: deferred)."""
    for e in exts:
        m.write(e * E + 3 * B, os.urandom(B))


@pytest.mark.parametrize("mirrored", [False, True])
def test_held_extents_meet_every_lifecycle_operation(tmp_path, no_filler, mirrored):
    pool = Pool.create(str(tmp_path / "pool"), "64M", extent_size=E, mirror_dir=str(tmp_path / "fg1"))
    m = Model(pool, "a", 8 * E, mirrored)
    m.snapshot("s1")

    held_writes(m, range(0, 4))
    assert m.lu.pending_copies == 4
    m.verify()  # reads of held extents: the written blocks from the new extent, the rest from the old
    assert m.lu.pending_copies == 4  # reading completes nothing

    m.write(E + 5 * B, os.urandom(2 * B))  # more whole blocks into a held extent: still held
    m.write(2 * E + 7, b"partial block")   # a partial block completes the extent first
    assert m.lu.pending_copies == 3
    m.verify()

    m.snapshot("s2")  # a snapshot commits: every held extent is completed before it is shared
    assert m.lu.pending_copies == 0
    m.verify()

    held_writes(m, range(2, 8))
    c = pool.clone("a", "c")  # a clone of the live LU: the same
    m.want["c"] = bytearray(m.want["a"])
    assert m.lu.pending_copies == 0 and c["name"] == "c"
    m.verify()

    held_writes(m, range(0, 8))
    m.lu.discard(E + 2 * B, 3 * E)  # a discard over held extents: partial ones zeroed, whole unmapped
    m.want["a"][E + 2 * B:4 * E + 2 * B] = bytes(3 * E)
    m.verify()

    held_writes(m, range(0, 8))
    m.write(3 * B, os.urandom(B), name="c")  # the clone defers its own copies too
    assert pool.flatten("c") >= 0  # and completes them before it copies what it shares
    m.verify()
    m.verify()

    held_writes(m, range(0, 8))
    pool.set_mirrored("a", not mirrored)  # the copies complete before the mirror gains or drops a copy
    m.verify()

    held_writes(m, range(0, 8))
    pool.resize("a", 5 * E, force=True)  # a shrink cuts held extents off
    m.want["a"] = m.want["a"][:5 * E]
    m.verify()
    pool.resize("a", 8 * E)
    m.want["a"] += bytes(3 * E)
    m.verify()

    held_writes(m, range(0, 5))
    pool.rollback("a", "s2")  # a rollback drops the held extents with the rest of the map
    m.want["a"] = bytearray(m.want["a@s2"])
    m.verify()

    held_writes(m, range(0, 8))
    with pytest.raises(InvalidArgument):
        pool.flatten("a")  # no clone: refused, its held extents as they were
    m.verify()

    m.lu.close()
    pool.open_lu("c").close()
    assert check(pool)["clean"], check(pool)
    pool.close()
    with Pool.open(str(tmp_path / "pool")) as p2:  # what the commits stored reads back
        m.pool, m.lu = p2, p2.open_lu("a")
        m.verify()
        m.lu.close()
        assert check(p2)["clean"]


def test_the_filler_completes_held_extents_in_the_background(pool):
    lu = pool.create_lu("a", 64 * E)
    base = os.urandom(64 * E)
    lu.write(0, base)
    pool.snapshot("a", "s")
    want = bytearray(base)
    for e in range(64):
        blob = os.urandom(B)
        lu.write(e * E + (e % 16) * B, blob)
        want[e * E + (e % 16) * B:e * E + (e % 16 + 1) * B] = blob
    deadline = time.monotonic() + 30
    while lu.pending_copies and time.monotonic() < deadline:
        time.sleep(0.01)
    assert lu.pending_copies == 0  # nothing read or flushed: the filler did it
    assert lu.read(0, 64 * E) == bytes(want)
    lu.close()
    with pool.lu("a@s", writable=False) as s:
        assert s.read(0, 64 * E) == base


def test_held_extents_are_lost_on_a_crash_as_unflushed_writes_are(tmp_path, no_filler):
    """A commit completes and stores held extents; writes after it, still held when the process
    is killed, leave the LU exactly as committed and the pool clean."""
    path = str(tmp_path / "pool")
    with Pool.create(path, "64M", extent_size=E) as p:
        with p.create_lu("a", 16 * E) as lu:
            lu.write(0, bytes(range(256)) * (16 * E // 256))
        p.snapshot("a", "s")
    script = textwrap.dedent(f"""
        import os, sys
        from blockstore import lu as lu_module
        from blockstore.pool import Pool
        lu_module.FILLER = False
        p = Pool.open({path!r})
        lu = p.open_lu("a")
        for e in range(16):
            lu.write(e * {E} + {B}, b"F" * {B})
        p.snapshot("a", "s2")  # commits the first writes, and shares their extents again
        for e in range(16):
            lu.write(e * {E} + 2 * {B}, b"U" * {B})
        assert lu.pending_copies == 16
        print("ready", flush=True)
        sys.stdin.read()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    want = bytearray(bytes(range(256)) * (16 * E // 256))
    for e in range(16):
        want[e * E + B:e * E + 2 * B] = b"F" * B
    with Pool.open(path) as p:
        with p.open_lu("a") as lu:
            assert lu.read(0, 16 * E) == bytes(want)
        with p.lu("a@s", writable=False) as s:
            assert s.read(0, 16 * E) == bytes(range(256)) * (16 * E // 256)
        with p.lu("a@s2", writable=False) as s:
            assert s.read(0, 16 * E) == bytes(want)
        assert check(p)["clean"], check(p)


def test_the_direct_path_writes_whole_blocks_of_held_extents_and_reads_none(pool, no_filler):
    lu = pool.create_lu("a", 4 * E)
    base = os.urandom(4 * E)
    lu.write(0, base)
    t = lu.direct_table()
    pool.snapshot("a", "s")
    lu.write(B, b"x" * B)  # deferred: extent 0 is held
    assert lu.pending_copies == 1
    assert t.pwrite(b"y" * 2 * B, 2 * B) == 0  # whole blocks: C writes them and marks them
    assert t.pwrite(b"z" * 100, 5 * B) == 1    # a partial block is the engine's
    buf = bytearray(E)
    assert t.pread(buf, 0) == 1                # and so is every read of a held extent
    want = bytearray(base)
    want[B:4 * B] = b"x" * B + b"y" * 2 * B
    assert lu.read(0, E) == bytes(want[:E]) and lu.pending_copies == 1
    pool.flush()  # completes it: the blocks C wrote are not copied over
    assert lu.pending_copies == 0 and t.pread(buf, 0) == 0 and buf == want[:E]
    with pool.lu("a@s", writable=False) as s:
        assert s.read(0, 4 * E) == base
    lu.close()


def test_direct_writes_into_held_extents(pool):
    """The C direct path writes whole blocks into held extents (marking them) while the filler
    copies the rest without the lock and snapshots complete them: two C writers, each owning
    every other block, then every block reads its last write, every snapshot what it read when
    taken, and the pool checks clean."""
    n = 32
    lu = pool.create_lu("a", n * E)
    base = os.urandom(n * E)
    lu.write(0, base)
    t = lu.direct_table()
    want = bytearray(base)
    served = [0, 0]
    stop = threading.Event()

    def writer(k: int) -> None:
        rng = np.random.default_rng(k)
        while not stop.is_set():
            b = int(rng.integers(0, n * E // B // 2)) * 2 + k
            data = rng.bytes(B)
            r = t.pwrite(data, b * B)
            if r == 1:
                lu.write(b * B, data)
            served[r] += 1
            want[b * B:(b + 1) * B] = data

    taken = {}
    threads = [threading.Thread(target=writer, args=(k,)) for k in range(2)]
    for th in threads:
        th.start()
    try:
        for i in range(15):
            pool.snapshot("a", f"s{i}")
            with pool.lu(f"a@s{i}", writable=False) as s:
                taken[i] = s.read(0, n * E)
            time.sleep(0.02)
    finally:
        stop.set()
        for th in threads:
            th.join()
    assert served[0] > 100 and served[1] > 15, served  # C took writes; the first into each shared extent did not
    assert lu.read(0, n * E) == bytes(want)
    pool.flush()
    assert lu.pending_copies == 0
    assert lu.read(0, n * E) == bytes(want)
    for i, got in taken.items():
        with pool.lu(f"a@s{i}", writable=False) as s:
            assert s.read(0, n * E) == got, i
    lu.close()
