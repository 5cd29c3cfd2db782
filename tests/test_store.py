"""The coordination store the cluster layer builds on: compare-and-set, leases, revisions, watch;
each test against both backends, the embedded LMDB store and a real etcd (bench/etcd_server.py)."""
from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest

from blockstore import InvalidArgument, NotFound
from blockstore.cluster.etcd import EtcdStore
from blockstore.cluster.store import LmdbStore
from conftest import race, store_writer_held


def _open(kind: str, where: str):  # type: ignore[no-untyped-def]
    """A store of ``kind``: LMDB at the path ``where``, or etcd at ``where`` (URL|prefix)."""
    if kind == "lmdb":
        return LmdbStore(where)
    url, prefix = where.split("|")
    return EtcdStore(url, prefix)


@pytest.fixture(params=["lmdb", "etcd"])
def where(request, tmp_path):  # type: ignore[no-untyped-def]
    """(kind, what ``_open`` takes): a store of its own for the test."""
    if request.param == "lmdb":
        return "lmdb", str(tmp_path / "cluster")
    etcd = request.getfixturevalue("etcd")
    return "etcd", f"{etcd.url}|t/{uuid.uuid4().hex}/"


@pytest.fixture
def store(where):  # type: ignore[no-untyped-def]
    s = _open(*where)
    yield s
    s.close()


def _ttl(store) -> float:  # type: ignore[no-untyped-def]
    """A short lease: etcd's are whole seconds, 2 at least with its default timings."""
    return 2.0 if isinstance(store, EtcdStore) else 0.3


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
    ttl = _ttl(store)
    lease = store.grant_lease(ttl)
    store.put("nodes/n1", b"up", lease=lease)
    store.put("nodes/n2", b"up")
    for _ in range(3):
        time.sleep(ttl / 2)
        store.keep_alive(lease)
    assert store.get("nodes/n1") is not None
    assert 0 <= store.time_to_live(lease) <= ttl
    time.sleep(ttl * 1.6)
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


def test_changes_after_a_compaction_are_gone(store, where, monkeypatch):
    """The change log keeps so much history: a watcher further behind is told to resync."""
    start = store.revision()
    store.put("events/1", b"a")
    if where[0] == "etcd":
        for i in range(5):
            store.put(f"x/{i}", b"x")
        endpoints = where[1].split("|")[0][len("etcd://"):]
        subprocess.run(["etcdctl", "--endpoints", endpoints, "compact", str(store.revision())], check=True,
                       capture_output=True, env={**os.environ, "ETCDCTL_API": "3"})
    else:
        monkeypatch.setattr(LmdbStore, "LOG_KEEP", 5)
        store.commit({}, {f"x/{i}": b"x" for i in range(1000)})  # the log is pruned every 1000 revisions
    with pytest.raises(NotFound, match="resync"):
        store.changes(start, "events/")
    head = store.revision()
    store.put("events/2", b"b")
    assert [(c.key, c.value) for c in store.changes(head, "events/")] == [("events/2", b"b")]


def test_bad_keys_and_values(store):
    for bad in ("", "x" * 300, "a\0b"):
        with pytest.raises(InvalidArgument):
            store.put(bad, b"v")
    with pytest.raises(InvalidArgument):
        store.grant_lease(0)


def _race(kind: str, where: str, name: str, q) -> None:
    s = _open(kind, where)
    q.put((name, s.compare_and_set("primary", 0, name.encode()) is not None))
    s.close()


def test_an_embedded_lease_is_renewed_without_a_commit(tmp_path):
    """Renewing a lease of the embedded store commits nothing, so it goes on while another
    process holds LMDB's writer lock (a commit stalled in its fsync by a busy disk), for longer
    than the lease lasts; a lease left to run out meanwhile is dead at once, though no write
    could remove it, and stays dead."""
    where = str(tmp_path / "cluster")
    s = LmdbStore(where)
    kept, dropped = s.grant_lease(0.5), s.grant_lease(0.5)
    s.put("alive/kept", b"1", lease=kept)
    s.put("alive/dropped", b"1", lease=dropped)
    rev = s.revision()
    try:
        with store_writer_held(where) as holder:
            t0 = time.monotonic()
            while time.monotonic() - t0 < 1.5:      # three times the lease's ttl
                s.keep_alive(kept)
                time.sleep(0.1)
            assert holder.poll() is None            # every renewal was made with the lock held
            assert s.time_to_live(kept) is not None and s.get("alive/kept") is not None
            assert s.time_to_live(dropped) is None and s.get("alive/dropped") is None
            with pytest.raises(NotFound):
                s.keep_alive(dropped)
        assert s.revision() == rev                  # no renewal wrote a transaction
        s.put("other", b"x")                        # the first write drops the dead one's keys
        assert [k for k, _ in s.range("alive/")] == ["alive/kept"]
        with pytest.raises(NotFound):
            s.keep_alive(dropped)
    finally:
        s.close()


def test_one_winner_among_processes(where):
    _open(*where).close()
    results = race(_race, [(*where, f"n{i}") for i in range(6)])
    winners = [n for n, won in results if won]
    assert len(winners) == 1
    s = _open(*where)
    assert s.get("primary").value == winners[0].encode()
    s.close()


class _SlowAnswers:
    """A TCP proxy on loopback in front of ``upstream`` (HOST, PORT) that passes every request
    on at once and holds each answer ``delay`` seconds: the request is carried out, its answer
    comes after the client gave up on it."""

    def __init__(self, upstream: tuple[str, int], delay: float) -> None:
        import socket
        import threading
        self.upstream, self.delay = upstream, delay
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._pipe, args=(client, server, 0.0), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, self.delay), daemon=True).start()

    @staticmethod
    def _pipe(src, dst, delay: float) -> None:  # type: ignore[no-untyped-def]
        try:
            while data := src.recv(65536):
                time.sleep(delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                s.close()

    def close(self) -> None:
        self.sock.close()


def test_a_transaction_whose_answer_was_lost_is_not_taken_for_a_lost_race(etcd):  # type: ignore[no-untyped-def]
    """A compare-and-set that etcd carried out but whose answer came too late is asked again
    of the next member, whose compare then fails (the first try moved the revision): the store
    finds its own write there and reports it won; a real loser is still told it lost."""
    host, port = etcd.endpoint(0).rsplit(":", 1)
    slow = _SlowAnswers((host, int(port)), delay=1.5)
    prefix = f"t/{uuid.uuid4().hex}/"
    s = EtcdStore(f"etcd://127.0.0.1:{slow.port},{etcd.endpoint(0)}", prefix, timeout=0.2)
    fast = EtcdStore(etcd.url, prefix)
    try:
        s._current = 0  # the slow member first
        rev = s.compare_and_set("primary", 0, b"node1")
        got = fast.get("primary")
        assert rev is not None and got is not None and (got.value, got.revision) == (b"node1", rev)
        s._current = 0
        assert s.compare_and_set("primary", 0, b"node2") is None  # lost for real: node1 holds it
        assert fast.get("primary").value == b"node1"
        s._current = 0
        assert s.commit({"primary": rev}, {"primary": b"node3", "other": None}) is not None
        assert fast.get("primary").value == b"node3"
    finally:
        s.close()
        fast.close()
        slow.close()
