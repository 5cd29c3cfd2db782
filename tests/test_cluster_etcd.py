"""The cluster on etcd: the cluster tests of the embedded store, run again with the records in a
real etcd (bench/etcd_server.py); and what is etcd's own: a store that cannot be reached, or is not this
cluster's, is said in one line and changes nothing."""
from __future__ import annotations

import json
import os
import time

import pytest

from conftest import SLOW, run_cli
from test_cluster import test_sigkill_primary_new_primary_within_three_intervals as sigkill_of_the_primary
from test_cluster import test_sigstop_primary_is_deposed_and_fenced as sigstop_of_the_primary
from test_cluster import test_ten_thousand_events_two_callers_primary_killed as events_across_a_failover
from test_failover import test_sigkill_of_an_owner_moves_its_100_lus_to_another_cec_each_once as owner_killed
from test_serving import make_nodes
from test_store import _SlowAnswers
from test_serving import test_a_paused_owner_lands_nothing as paused_owner


@pytest.fixture
def cluster(etcd_cluster):  # type: ignore[no-untyped-def]
    """Every test here runs on etcd."""
    return etcd_cluster


def test_the_store_is_etcd(cluster, etcd):  # type: ignore[no-untyped-def]
    cluster.start("n1")
    st = cluster.wait(lambda: (s := cluster.status())["state"] == "OK" and s)
    assert st["store"]["backend"] == "etcd" and st["store"]["endpoints"] == etcd.url and st["store"]["health"] == "ok"
    assert st["nodes"][0]["store_member"] == etcd.endpoint(0)
    assert not os.path.exists(os.path.join(cluster.pool, "cluster"))  # no embedded store made


def test_election_after_sigkill_of_the_primary(cluster):  # type: ignore[no-untyped-def]
    sigkill_of_the_primary(cluster)


def test_election_after_sigstop_of_the_primary(cluster):  # type: ignore[no-untyped-def]
    sigstop_of_the_primary(cluster)


def test_ownership_failover_after_sigkill_of_an_owner(cluster):  # type: ignore[no-untyped-def]
    owner_killed(cluster)


@pytest.mark.skipif(not SLOW, reason="the slow run's (BLOCKSTORE_SLOW=1): the event log is the pool's with either store, "
                    "and the failover under it is the election tests' above")
def test_events_reach_callers_that_reconnect_across_a_failover(cluster):  # type: ignore[no-untyped-def]
    events_across_a_failover(cluster)


@pytest.fixture
def nodes(tmp_path):  # type: ignore[no-untyped-def]
    """test_serving's nodes (node processes with mounts, each in its namespace) on a
    three-member etcd, a member in each node's namespace, with a keep-alive of 0.5 s."""
    yield from make_nodes(tmp_path, etcd_members=3, interval=0.5)


@pytest.mark.parametrize("layers", ["agent", "data", "data,metadata"])
def test_a_paused_owner_lands_nothing_each_fence_layer_alone(nodes, layers):  # type: ignore[no-untyped-def]
    """The owner's node and mount stopped (SIGSTOP), its LU moved and written by the new owner,
    then continued: none of its writes land, with the agent alone, the data path alone, and the
    data path with the metadata fence (nodes on several machines: no agent)."""
    paused_owner(nodes, layers)


def test_a_gate_dates_the_lease_it_read_from_before_it_asked(tmp_path, etcd, monkeypatch):  # type: ignore[no-untyped-def]
    """A node's gate reads its lease's time to live and allows writes until a margin before it
    runs out. The answers reach it late (a proxy holds each 1.5 s: what a process stopped
    between the answer and its sum sees too): the deadline it sets must still fall a margin
    before the lease's end in etcd, not a margin before the end counted from the late answer."""
    from blockstore.cluster.config import STORE_ENV
    from blockstore.cluster.etcd import EtcdStore
    from blockstore.cluster.serving import Gate
    pool = str(tmp_path / "pool")
    run_cli("pool", "create", "--size", "64M", pool=pool)
    run_cli("cluster", "create", "c", "--interval", "8", "--store", etcd.url, pool=pool)
    with open(os.path.join(pool, "cluster.store")) as f:
        prefix = json.load(f)["prefix"]
    store = EtcdStore(etcd.url, prefix)
    host, port = etcd.endpoint(0).rsplit(":", 1)
    slow = _SlowAnswers((host, int(port)), delay=1.5)
    try:
        granted = time.monotonic_ns()
        lease = store.grant_lease(20)
        store.put("alive/n1", b"{}", lease=lease)
        monkeypatch.setenv(STORE_ENV, f"etcd://127.0.0.1:{slow.port}")
        gate = Gate(pool, "n1")
        try:
            ends = granted + 20 * 10**9  # the lease ends in etcd no sooner than this
            assert 0 < gate._until_ns <= ends - int(gate.margin * 1e9), (gate._until_ns - ends) / 1e9
        finally:
            gate.close()
    finally:
        slow.close()
        store.close()


def _refused(pool: str, *args: str, says: str, rc: int = 1) -> None:
    before = sorted(os.listdir(pool))
    r = run_cli(*args, pool=pool, check_rc=None)
    err = r.stderr.decode()
    assert r.returncode == rc and err.count("\n") == 1 and says in err, (args, r.returncode, err)
    assert sorted(os.listdir(pool)) == before


def test_a_store_unreachable_bad_or_not_this_clusters_is_one_line(tmp_path, etcd):  # type: ignore[no-untyped-def]
    pool = str(tmp_path / "pool")
    run_cli("pool", "create", "--size", "64M", pool=pool)
    _refused(pool, "cluster", "create", "c", "--store", "etcd://127.0.0.1:1", says="etcd is unavailable")
    _refused(pool, "cluster", "create", "c", "--store", "etcd://host-without-port", says="HOST:PORT")
    _refused(pool, "cluster", "create", "c", "--store", "http://127.0.0.1:2379", rc=1, says="etcd://HOST:PORT")
    assert run_cli("cluster", "status", pool=pool, check_rc=None).returncode != 0  # still no cluster
    run_cli("cluster", "create", "c", "--store", etcd.url, pool=pool)
    _refused(pool, "cluster", "create", "d", "--store", etcd.url, says="already has cluster 'c'")
    _refused(pool, "node", "start", "n1", "--store", "etcd://127.0.0.1:1", says="etcd is unavailable")
    # the pool names a prefix etcd holds nothing under: another cluster's store, or a wiped one
    with open(os.path.join(pool, "cluster.store")) as f:
        where = json.load(f)
    where["prefix"] = "blockstore/elsewhere/"
    with open(os.path.join(pool, "cluster.store"), "w") as f:
        json.dump(where, f)
    _refused(pool, "node", "start", "n1", says="not this cluster's store")
    other = str(tmp_path / "other")
    run_cli("pool", "create", "--size", "64M", pool=other)
    run_cli("cluster", "create", "c", pool=other)
    _refused(other, "node", "start", "n1", "--store", etcd.url, rc=2, says="embedded store")
