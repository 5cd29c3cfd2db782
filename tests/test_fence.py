"""The fence layers (fence.py), each on its own with the others switched off
(BLOCKSTORE_FENCES), on real processes paused with SIGSTOP: an owner writes under its ownership
epoch, is paused, a newer owner takes the LU and writes, the old one is continued and tries to
land what it wrote. What lands is read from the pool's metadata and data, not from either
writer."""
from __future__ import annotations

import os
import signal

import pytest

from blockstore.check import check
from blockstore.pool import Pool

from pool_peer import Peer

E = 64 * 1024


@pytest.fixture
def lu_pool(tmp_path):
    path = str(tmp_path / "pool")
    with Pool.create(path, "64M", extent_size="64K") as pool:
        with pool.create_lu("a", "1M") as lu:
            lu.write(4 * E, b"base" * (E // 4))
    return path


def _bytes(path: str) -> bytes:
    with Pool.open(path, readonly=True) as pool, pool.lu("a", writable=False) as lu:
        return lu.read(0, lu.size)


def _paused_owner_then_new_owner(path: str, fences: str) -> tuple[dict, bytes]:
    """Old owner (epoch 5) writes extent 0 and is stopped before it flushes; the new owner
    (epoch 6) writes extent 2 and flushes; the old one is continued and flushes. Returns the old
    owner's flush reply and what the LU holds after both have gone."""
    old, new = Peer(path, fences), Peer(path, fences)
    try:
        assert old.ask(op="own", name="a", epoch=5) == {"ok": True}
        assert old.ask(op="write", name="a", offset=0, hex=(b"O" * E).hex()) == {"ok": True}
        os.kill(old.p.pid, signal.SIGSTOP)
        try:
            assert new.ask(op="own", name="a", epoch=6) == {"ok": True}
            assert new.ask(op="write", name="a", offset=2 * E, hex=(b"N" * E).hex()) == {"ok": True}
            assert new.ask(op="flush") == {"ok": True}
        finally:
            os.kill(old.p.pid, signal.SIGCONT)
        got = old.ask(op="flush")
        again = old.ask(op="own", name="b", epoch=5)  # noqa: F841  (no such LU: the peer goes on)
    finally:
        old.end()
        new.end()
    return got, _bytes(path)


@pytest.mark.parametrize("fences", [None, "data,metadata"])
def test_a_reader_beside_an_owner_reads_what_it_fsynced(tmp_path, fences):
    """A mirrored LU's owner overwrites an extent in place and fsyncs it: the checksums stay in
    its memory until a checkpoint (mirror.py), so another process reading the LU meanwhile must
    not check the bytes against the stored ones, whether the owner holds the LU's holder lock
    (every layer on) or writes without it (the agent's layer off): it reads what was written,
    where it once read EIO ("does not match its checksum in any copy")."""
    path = str(tmp_path / "pool")
    with Pool.create(path, "64M", extent_size="64K", mirror_dir=str(tmp_path / "fg1")) as pool:
        with pool.create_lu("a", "1M", mirrored=True) as lu:
            lu.write(0, b"old!" * (E // 4))
    owner = Peer(path, fences)
    try:
        assert owner.ask(op="own", name="a", epoch=5) == {"ok": True}
        assert owner.ask(op="write", name="a", offset=0, hex=(b"new!" * (E // 4)).hex()) == {"ok": True}
        assert owner.ask(op="fsync", name="a") == {"ok": True}
        assert _bytes(path)[:E] == b"new!" * (E // 4)
    finally:
        owner.end()


def test_metadata_fence_alone_stops_a_paused_owners_commit(lu_pool):
    got, data = _paused_owner_then_new_owner(lu_pool, "metadata")
    assert got["error"].startswith("Fenced: LU 'a' is owned under epoch 6 now"), got
    assert data[:E] == bytes(E)                       # the old owner's map never landed
    assert data[2 * E:3 * E] == b"N" * E              # the new owner's did
    assert data[4 * E:5 * E] == b"base" * (E // 4)
    with Pool.open(lu_pool) as pool:                  # the old owner's reservation is reclaimed
        assert check(pool)["clean"], check(pool)
    # an owner under an old epoch cannot even open the LU again
    peer = Peer(lu_pool, "metadata")
    try:
        assert peer.ask(op="own", name="a", epoch=5)["error"].startswith("Fenced:")
    finally:
        peer.end()


def test_without_the_metadata_fence_the_paused_owners_commit_lands(lu_pool):
    """The same history with every layer off: the old owner's map lands over the new owner's
    commit (what the layer above stops)."""
    got, data = _paused_owner_then_new_owner(lu_pool, "none")
    assert got == {"ok": True}
    assert data[:E] == b"O" * E


def test_the_data_fence_is_a_filter_over_the_lus_store(tmp_path):
    """The data path's fence (storage/fenced.py), through the Python API alone: once the gate
    refuses, a write in place, a write into a hole, a discard of part of an extent (a whole one
    changes only the map, which the commit then refuses) and a flush are all refused, and what
    stands is what was committed before."""
    from blockstore import Fenced
    path = str(tmp_path / "pool")
    allowed = {"a": True}

    def gate(name: str, epoch: int) -> None:
        if not allowed[name]:
            raise Fenced(f"LU {name!r}: epoch {epoch} is over")
    pool = Pool.create(path, "64M", extent_size="64K")
    pool.create_lu("a", "1M").close()
    pool.set_gates(writes=gate, commits=gate)
    lu = pool.open_lu("a", epoch=3)
    lu.write(0, b"x" * E)
    lu.flush()
    allowed["a"] = False
    for step in (lambda: lu.write(0, b"z" * 4096), lambda: lu.write(2 * E, b"y" * E),
                 lambda: lu.discard(0, 4096)):
        with pytest.raises(Fenced):
            step()
    lu.discard(0, E)  # a whole extent unmapped: a change of the map alone, which no commit stores
    with pytest.raises(Fenced):
        pool.flush()
    with pytest.raises(Fenced):
        pool.close()  # its last flush is refused too; the pool closes all the same
    with Pool.open(path) as p, p.lu("a", writable=False) as h:
        assert h.read(0, E) == b"x" * E and h.read(2 * E, E) == bytes(E)
        assert check(p)["clean"], check(p)
