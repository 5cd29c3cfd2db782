"""etcd runs of ``blockstore bench`` (group ``etcd``): the cluster with its records in a real etcd
(one member on loopback, started here) against the same work on the embedded store, in one run,
the order alternating between rounds:

- store compare-and-set operations per second (one process, a chain of CAS on one key);
- election after the primary's SIGKILL and SIGSTOP (cluster_bench.failover);
- ownership failover of 100 LUs after their owner's SIGKILL (serving_bench.lu_failover);
- events per second delivered to 10 callers (cluster_bench.fanout).
"""
from __future__ import annotations

import shutil
import signal
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

from blockstore.cluster.etcd import EtcdStore
from blockstore.cluster.store import LmdbStore

from . import cluster_bench, serving_bench
from .etcd_server import Etcd


def cas_rate(store: Any, count: int) -> float:
    """Compare-and-set operations per second on one key, each on the revision the last one made."""
    e = store.get("bench/cas")
    rev = e.revision if e is not None else 0
    t0 = time.perf_counter()
    for i in range(count):
        got = store.compare_and_set("bench/cas", rev, str(i).encode())
        assert got is not None
        rev = got
    return count / (time.perf_counter() - t0)


def _pair(rounds: int, run: Callable[[str | None], list[float]], url: str) -> tuple[list[float], list[float]]:
    """``run(store)`` on etcd and on the embedded store, ``rounds`` times, the order alternating."""
    etcd: list[float] = []
    lmdb: list[float] = []
    for r in range(rounds):
        for store in ((url, None) if r % 2 == 0 else (None, url)):
            (etcd if store else lmdb).extend(run(store))
    return etcd, lmdb


def run(bench: Any, workdir: str, quick: bool) -> None:
    """Add the etcd rows to ``bench`` (bench/run.py's Bench)."""
    if shutil.which("etcd") is None:
        print("etcd: skipped, no etcd (Debian package etcd-server)", flush=True)
        return
    root = tempfile.mkdtemp(prefix="etcd-", dir=workdir)
    etcd = Etcd(root).start()
    try:
        count = 500 if quick else 2_000
        e_store, l_store = EtcdStore(etcd.url, f"bench/{uuid.uuid4().hex}/"), LmdbStore(f"{root}/lmdb")
        cas = {"etcd": [], "lmdb": []}  # type: dict[str, list[float]]
        for r in range(3):
            for name, s in ((("etcd", e_store), ("lmdb", l_store)) if r % 2 == 0 else
                            (("lmdb", l_store), ("etcd", e_store))):
                cas[name].append(cas_rate(s, count))
        e_store.close()
        l_store.close()
        bench.add("store compare-and-set, etcd vs embedded", "etcd", "ops/s", statistics.median(cas["etcd"]),
                  statistics.median(cas["lmdb"]), None,
                  note=f"one process, {count} CAS in a chain on one key; etcd: one local member over its JSON "
                       f"gateway (etcd3gw); rounds etcd {', '.join(f'{x:.0f}' for x in cas['etcd'])}, embedded "
                       f"{', '.join(f'{x:.0f}' for x in cas['lmdb'])}")
        rounds = 2 if quick else 3
        for sig in (signal.SIGKILL, signal.SIGSTOP):
            e, m = _pair(rounds, lambda store: cluster_bench.failover(workdir, 1, sig, store), etcd.url)
            bench.add(f"election after primary {sig.name}, etcd vs embedded", "etcd", "ms",
                      statistics.median(e) * 1e3, statistics.median(m) * 1e3, None, higher_is_better=False,
                      note=f"3 nodes, {cluster_bench.INTERVAL:.0f}s keep-alive; etcd leases are whole seconds "
                           f"(3 s here); runs (s) etcd {', '.join(f'{t:.2f}' for t in e)}, embedded "
                           f"{', '.join(f'{t:.2f}' for t in m)}")
        e, m = _pair(rounds, lambda store: serving_bench.lu_failover(workdir, 1, signal.SIGKILL, store=store), etcd.url)
        bench.add("LU failover of 100 LUs, owner killed, etcd vs embedded", "etcd", "ms", statistics.median(e) * 1e3,
                  statistics.median(m) * 1e3, None, higher_is_better=False,
                  note=f"from SIGKILL until every LU opens for writing on its new owner's mount; runs (s) etcd "
                       f"{', '.join(f'{t:.2f}' for t in e)}, embedded {', '.join(f'{t:.2f}' for t in m)}")
        events = 2_000 if quick else 5_000
        e, m = _pair(1 if quick else 2, lambda store: cluster_bench.fanout(workdir, events, 1, store), etcd.url)
        bench.add(f"event fan-out to {cluster_bench.CALLERS} callers, etcd vs embedded", "etcd", "ev/s",
                  statistics.median(e), statistics.median(m), None,
                  note="events/s delivered to each caller; the payloads and their numbers live in the pool's "
                       "directory with either store (docs/cluster.md); the store is asked where the primary is")
    finally:
        etcd.close()
