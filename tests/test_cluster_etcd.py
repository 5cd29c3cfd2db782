"""The cluster on etcd: the cluster tests of the embedded store, run again with the records in a
real etcd (bench/etcd_server.py); and what is etcd's own: a store that cannot be reached, or is not this
cluster's, is said in one line and changes nothing."""
from __future__ import annotations

import json
import os

import pytest

from conftest import SLOW, run_cli
from test_cluster import test_sigkill_primary_new_primary_within_three_intervals as sigkill_of_the_primary
from test_cluster import test_sigstop_primary_is_deposed_and_fenced as sigstop_of_the_primary
from test_cluster import test_ten_thousand_events_two_callers_primary_killed as events_across_a_failover
from test_failover import test_sigkill_of_an_owner_moves_its_100_lus_to_another_cec_each_once as owner_killed
from test_serving import make_nodes
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
