"""Cluster runs of ``blockstore bench``: failover time and event fan-out, with real node processes.

- Failover: three `blockstore node` daemons at the default 1 s keep-alive interval; the primary is
  killed (SIGKILL: the process is gone) or hung (SIGSTOP: it stops answering but its port stays
  open, as a partitioned or frozen machine would), and the time is taken from the signal to the
  moment every surviving node, asked over its own port, names the same new primary.
- Fan-out: one node (the primary), a backlog of durable events in the payload directory, and ten
  caller processes that register with it at once with ``since`` before the backlog; the time is
  taken from the go signal to the last caller holding every event, in order. The durable publish
  rate (one process, payload file fsynced, renamed, directory fsynced) is measured beside it.

Run a caller alone: ``python -m blockstore_bench.cluster_bench caller POOL SINCE LAST``.
"""
from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from blockstore.pool import Pool
from blockstore.cluster import admin, config
from blockstore.cluster.events import EventLog

INTERVAL = 1.0
CALLERS = 10


def _cli(pool: str, *args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "blockstore", "--pool", pool, *args],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"blockstore {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def wait_for(what: Callable[[], Any], timeout: float, failure: str) -> Any:
    """``what()``'s first true value, asked every 5 ms for up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = what()
        if v:
            return v
        time.sleep(0.005)
    raise RuntimeError(failure)


class _Cluster:
    """A pool with a cluster and node daemons, all removed on exit."""

    def __init__(self, workdir: str, label: str, nodes: int, store: str | None = None) -> None:
        """``store``: the cluster's etcd (etcd://...); None: the embedded store."""
        self.pool = os.path.join(workdir, f"cluster-{label}")
        Pool.create(self.pool, "64M", extent_size="64K").close()
        config.create(self.pool, "bench", interval=INTERVAL, store_url=store)
        self.names = [f"n{i}" for i in range(nodes)]
        self.pids = {n: admin.start_node(self.pool, n)["pid"] for n in self.names}

    def wait(self, what: Callable[[], Any], timeout: float = 30.0) -> Any:
        return wait_for(what, timeout, f"the cluster did not settle within {timeout:.0f}s ({self.pool})")

    def __enter__(self) -> _Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        admin.kill_nodes(self.pids.values())
        shutil.rmtree(self.pool, ignore_errors=True)


def failover(workdir: str, runs: int, sig: signal.Signals, store: str | None = None) -> list[float]:
    """Seconds from ``sig`` to the primary until every other node agrees on a new one, per run."""
    out = []
    for run in range(runs):
        with _Cluster(workdir, f"failover-{sig.name}-{run}-{'etcd' if store else 'lmdb'}", 3, store) as c:
            old, epoch = c.wait(lambda: admin.agreed_primary(c.pool, c.names, settled=True))
            rest = [n for n in c.names if n != old]
            t0 = time.monotonic()
            os.kill(c.pids[old], sig)
            new = c.wait(lambda: (v := admin.agreed_primary(c.pool, rest)) and v[1] > epoch and v)
            out.append(time.monotonic() - t0)
            assert new[0] != old
    return out


def publish_rate(workdir: str, count: int) -> float:
    """Durable events per second published by one process."""
    d = os.path.join(workdir, "publish")
    log = EventLog(d)
    t0 = time.perf_counter()
    for i in range(count):
        log.publish("lu_created", {"name": f"lu{i}", "size": i})
    rate = count / (time.perf_counter() - t0)
    shutil.rmtree(d)
    return rate


def fanout(workdir: str, events: int, reps: int, store: str | None = None) -> list[float]:
    """Events per second delivered to every one of CALLERS callers (the slowest sets the pace)."""
    rates = []
    with _Cluster(workdir, f"fanout-{'etcd' if store else 'lmdb'}", 1, store) as c:
        c.wait(lambda: admin.agreed_primary(c.pool, c.names))
        log = EventLog(c.pool)
        for _ in range(reps):
            since = log.head()
            for i in range(events):
                log.publish("lu_created", {"name": f"lu{i}", "size": i})
            last = log.head()
            procs = [subprocess.Popen([sys.executable, "-m", "blockstore_bench.cluster_bench", "caller", c.pool,
                                       str(since), str(last)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True) for _ in range(CALLERS)]
            for p in procs:  # each has imported everything and says it is ready
                assert p.stdout is not None and p.stdout.readline().strip() == "ready"
            t0 = time.monotonic()
            for p in procs:
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            ends = []
            for p in procs:
                out, _ = p.communicate(timeout=300)
                if p.returncode != 0:
                    raise RuntimeError("a fan-out caller failed")
                ends.append(float(out.split()[-1]))
            rates.append((last - since) / (max(ends) - t0))
    return rates


def _caller(pool: str, since: int, last: int) -> None:
    """Register for every kind from ``since``; check every number up to ``last`` arrives in
    order; print the monotonic time it was done."""
    from blockstore.cluster.client import EventClient
    client = EventClient(pool, since=since)
    print("ready", flush=True)
    sys.stdin.readline()
    expect = since + 1
    for ev in client:
        if ev["seq"] != expect:
            raise SystemExit(f"caller: expected event {expect}, got {ev['seq']}")
        expect += 1
        if ev["seq"] >= last:
            break
    print(time.monotonic(), flush=True)
    client.close()


def run(bench: Any, workdir: str, quick: bool) -> None:
    """Add the cluster rows to ``bench`` (bench/run.py's Bench)."""
    runs = 3 if quick else 7
    kill = failover(workdir, runs, signal.SIGKILL)
    bench.add("failover, primary killed", "cluster", "ms", statistics.median(kill) * 1e3, INTERVAL * 1e3, 0.5,
              higher_is_better=False, note=f"3 nodes, {INTERVAL:.0f}s keep-alive; ratio interval/failover; "
              f"target < 2 intervals; runs (s) {', '.join(f'{t:.3f}' for t in kill)}")
    hung = failover(workdir, runs, signal.SIGSTOP)
    bench.add("failover, primary hung", "cluster", "ms", statistics.median(hung) * 1e3, INTERVAL * 1e3, None,
              higher_is_better=False, note=f"SIGSTOP: found only by the {config.ClusterConfig('x', 0).misses}-miss "
              f"timeout; runs (s) {', '.join(f'{t:.3f}' for t in hung)}")
    count = 2_000 if quick else 5_000
    bench.add("event publish, durable", "cluster", "ev/s", publish_rate(workdir, count), None, None,
              note="one process; payload file fsynced, linked, directory fsynced")
    rates = fanout(workdir, 5_000 if quick else 20_000, 1 if quick else 3)
    bench.add(f"event fan-out to {CALLERS} callers", "cluster", "ev/s", statistics.median(rates), None, 10_000,
              note="events/s delivered to each caller (all of them, in order) from the payload log")


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "caller":
    _caller(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
