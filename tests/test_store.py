"""The coordination store the cluster layer builds on: compare-and-set, leases, revisions, watch."""
from __future__ import annotations

import time

import pytest

from blockstore import InvalidArgument, NotFound
from blockstore.cluster.store import LmdbStore
from conftest import race


@pytest.fixture
def store(tmp_path):
    s = LmdbStore(str(tmp_path / "cluster"))
    yield s
    s.close()


def test_revisions_only_grow_and_cas_is_exclusive(store):
    r1 = store.put("a", b"1")
    assert store.get("a").revision == r1 and store.get("a").value == b"1"
    assert store.compare_and_set("primary", 0, b"node1") is not None
    assert store.compare_and_set("primary", 0, b"node2") is None       # taken
    cur = store.get("primary")
    assert store.compare_and_set("primary", r1, b"node2") is None      # stale revision
    r3 = store.compare_and_set("primary", cur.revision, b"node2")
    assert r3 > cur.revision > r1 and store.revision() == r3
    assert not store.delete("primary", expected=cur.revision)
    assert store.delete("primary", expected=r3)
    assert store.get("primary") is None


def test_leases_expire_with_their_keys(store):
    lease = store.grant_lease(0.3)
    store.put("nodes/n1", b"up", lease=lease)
    store.put("nodes/n2", b"up")
    for _ in range(3):
        time.sleep(0.15)
        store.keep_alive(lease)
    assert store.get("nodes/n1") is not None
    time.sleep(0.45)
    assert store.get("nodes/n1") is None and store.get("nodes/n2") is not None
    with pytest.raises(NotFound):
        store.keep_alive(lease)
    with pytest.raises(NotFound):
        store.put("x", b"y", lease=lease)
    lease2 = store.grant_lease(10)
    store.put("nodes/n3", b"up", lease=lease2)
    store.revoke(lease2)
    assert [k for k, _ in store.range("nodes/")] == ["nodes/n2"]


def test_changes_are_a_watch(store):
    start = store.revision()
    store.put("events/1", b"a")
    store.put("other", b"b")
    store.delete("events/1")
    ch = store.changes(start, "events/")
    assert [(c.key, c.value) for c in ch] == [("events/1", b"a"), ("events/1", None)]
    assert ch[0].revision < ch[1].revision
    assert store.changes(ch[-1].revision, "events/") == []


def test_bad_keys_and_values(store):
    for bad in ("", "x" * 300, "a\0b"):
        with pytest.raises(InvalidArgument):
            store.put(bad, b"v")
    with pytest.raises(InvalidArgument):
        store.grant_lease(0)


def _race(path: str, name: str, q) -> None:
    s = LmdbStore(path)
    q.put((name, s.compare_and_set("primary", 0, name.encode()) is not None))
    s.close()


def test_one_winner_among_processes(tmp_path):
    path = str(tmp_path / "cluster")
    LmdbStore(path).close()
    results = race(_race, [(path, f"n{i}") for i in range(6)])
    winners = [n for n, won in results if won]
    assert len(winners) == 1
    s = LmdbStore(path)
    assert s.get("primary").value == winners[0].encode()
    s.close()
