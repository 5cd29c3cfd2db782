"""Ownership records (cluster/ownership.py): written by the primary alone, fenced by the primary
record it was elected under, each assignment under an epoch larger than every earlier one."""
from __future__ import annotations


import pytest

from blockstore import Busy, InvalidArgument
from blockstore.cluster import election, ownership
from blockstore.cluster.election import Deposed
from blockstore.cluster.store import LmdbStore
from conftest import race


@pytest.fixture
def store(tmp_path):
    s = LmdbStore(str(tmp_path / "cluster"))
    yield s
    s.close()


def _elect(store, node: str) -> election.Primary:
    won = election.elect(store, node, "127.0.0.1:1", election.current(store), store.grant_lease(30))
    assert won is not None
    return won


def test_epochs_only_grow_across_moves_and_removals(store):
    p = _elect(store, "n1")
    a = ownership.assign(store, p, "disk0", "n1")
    b = ownership.assign(store, p, "disk1", "n2")
    assert b.epoch > a.epoch
    moved = ownership.assign(store, p, "disk0", "n2", seen=a)
    assert moved.node == "n2" and moved.epoch > b.epoch
    assert ownership.get(store, "disk0") == moved
    ownership.release(store, p, "disk0", moved)
    assert ownership.get(store, "disk0") is None
    again = ownership.assign(store, p, "disk0", "n1", seen=None)  # a new LU of the same name
    assert again.epoch > moved.epoch
    assert set(ownership.every(store)) == {"disk0", "disk1"}


def test_a_deposed_primary_writes_nothing(store):
    old = _elect(store, "n1")
    a = ownership.assign(store, old, "disk0", "n1")
    new = _elect(store, "n2")  # a newer election (n1 paused meanwhile, say)
    with pytest.raises(Deposed):
        ownership.assign(store, old, "disk0", "n3", seen=a)
    with pytest.raises(Deposed):
        ownership.release(store, old, "disk0", a)
    assert ownership.get(store, "disk0") == a
    assert ownership.assign(store, new, "disk0", "n2", seen=a).node == "n2"
    assert election.resign(store, new)
    with pytest.raises(Deposed):  # a resigned primary is no primary either
        ownership.assign(store, new, "disk0", "n1")


def test_two_assignments_from_one_view_one_wins(store):
    p = _elect(store, "n1")
    a = ownership.assign(store, p, "disk0", "n1")
    ownership.assign(store, p, "disk0", "n2", seen=a)
    with pytest.raises(Busy):
        ownership.assign(store, p, "disk0", "n3", seen=a)
    assert ownership.get(store, "disk0").node == "n2"
    with pytest.raises(InvalidArgument):
        ownership.assign(store, p, "bad name", "n1")


def _race(path: str, node: str, epoch: int, q) -> None:  # type: ignore[no-untyped-def]
    s = LmdbStore(path)
    try:
        p = election.current(s)
        seen = ownership.Ownership("disk0", "n0", epoch)  # every racer decided on the same view
        try:
            ownership.assign(s, p, "disk0", node, seen=seen)
            q.put((node, True))
        except Busy:
            q.put((node, False))
    finally:
        s.close()


def test_one_winner_among_six_processes(tmp_path):
    path = str(tmp_path / "cluster")
    s = LmdbStore(path)
    p = _elect(s, "n0")
    first = ownership.assign(s, p, "disk0", "n0")
    s.close()
    results = race(_race, [(path, f"n{i}", first.epoch) for i in range(1, 7)])
    winners = [n for n, won in results if won]
    s = LmdbStore(path)
    now = ownership.get(s, "disk0")
    s.close()
    assert len(winners) == 1 and now is not None and now.node == winners[0] and now.epoch > first.epoch
