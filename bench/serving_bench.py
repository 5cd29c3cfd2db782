"""Serving runs of ``blockstore bench`` (group ``serving``): nodes that own and serve LUs.

- NBD: fio's nbd engine (libnbd) against a node's NBD export of an LU (nbdkit's file plugin over
  the node's mount) and against qemu-nbd serving a raw file in the same directory, the pattern
  pairs alternating in order, medians of the rounds;
- redirected reads: fio through a node's mount reading an LU another node owns (its redundant
  copy) against the owner's mount reading it, alternating, medians;
- LU failover: an owner of 100 LUs is killed (SIGKILL) or hung (SIGSTOP), and the time is taken
  from the signal until every one of the 100 LUs opens for writing on the node it moved to.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from blockstore.cluster import admin, config

from .cluster_bench import wait_for
from blockstore.pool import Pool

INTERVAL = 1.0
MiB = 1 << 20
PATTERNS = [("seq write 1M", "write", "1M"), ("seq read 1M", "read", "1M"),
            ("rand write 4K", "randwrite", "4k"), ("rand read 4K", "randread", "4k")]


def missing_tools() -> list[str]:
    return [t for t in ("fio", "nbdkit", "qemu-nbd") if not shutil.which(t)]


def _fio(target: list[str], rw: str, bs: str, size: int, runtime: int) -> float:
    """MiB/s for 1M patterns, IOPS for 4K ones; ``target``: fio's options naming the target."""
    r = subprocess.run(["fio", "--name=p", *target, f"--size={size}", f"--rw={rw}", f"--bs={bs}", "--iodepth=16",
                        f"--runtime={runtime}", "--time_based", "--randrepeat=0", "--output-format=json"],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"fio {rw} on {target}: {r.stderr.strip()[-500:]}")
    job = json.loads(r.stdout[r.stdout.index("{"):])["jobs"][0]
    side = job["read"] if "read" in rw else job["write"]
    return side["iops"] if bs == "4k" else side["bw_bytes"] / MiB


def _wait(what: Callable[[], Any], timeout: float = 60.0) -> Any:
    return wait_for(what, timeout, f"timed out waiting for {what}")


class _Nodes:
    """A pool (mirrored) with a cluster and node daemons that serve it; all removed on exit."""

    def __init__(self, workdir: str, label: str, nodes: int, nbd: bool = False, store: str | None = None) -> None:
        self.dir = os.path.join(workdir, f"serving-{label}")
        os.makedirs(self.dir)
        self.pool = os.path.join(self.dir, "pool")
        Pool.create(self.pool, "8G", extent_size="1M", mirror_dir=os.path.join(self.dir, "fg1")).close()
        config.create(self.pool, "bench", interval=INTERVAL, store_url=store)
        self.names = [f"n{i}" for i in range(nodes)]
        self.mounts = {n: os.path.join(self.dir, f"m-{n}") for n in self.names}
        self.pids = {}
        for i, n in enumerate(self.names):
            os.makedirs(self.mounts[n])
            self.pids[n] = admin.start_node(self.pool, n, mount=self.mounts[n],
                                            nbd=f"127.0.0.1:{11809 + i}" if nbd else None)["pid"]
        _wait(lambda: admin.agreed_primary(self.pool, self.names, settled=True))

    def __enter__(self) -> _Nodes:
        return self

    def __exit__(self, *exc: object) -> None:
        admin.kill_nodes(self.pids.values())
        time.sleep(0.3)
        for mp in self.mounts.values():
            subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def nbd_run(workdir: str, rounds: int, runtime: int, size: int) -> dict[str, dict[str, list[float]]]:
    """Per pattern, the rounds of our NBD export and of qemu-nbd over a raw file."""
    out: dict[str, dict[str, list[float]]] = {"ours": {}, "qemu-nbd": {}}
    with _Nodes(workdir, "nbd", 1, nbd=True) as c:
        subprocess.run([sys.executable, "-m", "blockstore", "--pool", c.pool, "lu", "create", "a", "--size",
                        str(size)], check=True, capture_output=True)
        raw = os.path.join(c.dir, "raw.img")
        with open(raw, "wb") as f:
            f.truncate(size)
        qemu = subprocess.Popen(["qemu-nbd", "-f", "raw", "-x", "a", "-b", "127.0.0.1", "-p", "11899", "-t", raw])
        try:
            _wait(lambda: subprocess.run(["nbdinfo", "--can", "connect", "nbd://127.0.0.1:11899/a"],
                                         capture_output=True).returncode == 0)
            targets = {"ours": ["--ioengine=nbd", "--uri=nbd://127.0.0.1:11809/a"],
                       "qemu-nbd": ["--ioengine=nbd", "--uri=nbd://127.0.0.1:11899/a"]}
            for t in targets.values():  # written once, untimed: both then read real data
                subprocess.run(["fio", "--name=fill", *t, f"--size={size}", "--rw=write", "--bs=1M", "--iodepth=8",
                                "--output-format=terse"], check=True, capture_output=True, timeout=600)
            for r in range(rounds):
                order = list(targets) if r % 2 == 0 else list(reversed(targets))
                for name, rw, bs in PATTERNS:
                    for who in order:
                        out[who].setdefault(name, []).append(_fio(targets[who], rw, bs, size, runtime))
        finally:
            qemu.terminate()
            qemu.wait()
    return out


def redirect_run(workdir: str, rounds: int, runtime: int, size: int) -> dict[str, dict[str, list[float]]]:
    """Reads of a mirrored LU through its owner's mount and through another node's (redirected)."""
    out: dict[str, dict[str, list[float]]] = {"owner": {}, "redirected": {}}
    with _Nodes(workdir, "redirect", 2) as c:
        subprocess.run([sys.executable, "-m", "blockstore", "--pool", c.pool, "lu", "create", "a", "--size",
                        str(size), "--mirror"], check=True, capture_output=True)
        owner = admin.owners(c.pool, "a")["a"]["node"]
        other = next(n for n in c.names if n != owner)
        files = {"owner": os.path.join(c.mounts[owner], "a"), "redirected": os.path.join(c.mounts[other], "a")}
        subprocess.run(["fio", "--name=fill", f"--filename={files['owner']}", f"--size={size}", "--rw=write",
                        "--bs=1M", "--direct=1", "--ioengine=libaio", "--iodepth=8", "--end_fsync=1",
                        "--output-format=terse"], check=True, capture_output=True, timeout=600)
        for r in range(rounds):
            order = list(files) if r % 2 == 0 else list(reversed(files))
            for name, rw, bs in (("seq read 1M", "read", "1M"), ("rand read 4K", "randread", "4k")):
                for who in order:
                    t = [f"--filename={files[who]}", "--direct=1", "--ioengine=libaio", "--readonly"]
                    out[who].setdefault(name, []).append(_fio(t, rw, bs, size, runtime))
    return out


def lu_failover(workdir: str, runs: int, sig: signal.Signals, lus: int = 100, store: str | None = None) -> list[float]:
    """Seconds from ``sig`` to the owner of ``lus`` LUs until each opens for writing on its new
    owner's mount, per run (``store``: the cluster's etcd; None: the embedded store)."""
    out = []
    for run in range(runs):
        with _Nodes(workdir, f"failover-{sig.name}-{run}-{'etcd' if store else 'lmdb'}", 3, store=store) as c:
            primary = admin.agreed_primary(c.pool, c.names, settled=True)[0]
            victim = next(n for n in c.names if n != primary)
            with Pool.open(c.pool) as pool:
                for i in range(lus):
                    pool.create_lu(f"lu{i:03d}", "1M").close()
            for i in range(lus):
                admin.assign(c.pool, f"lu{i:03d}", victim)
            t0 = time.monotonic()
            os.kill(c.pids[victim], sig)
            left = {f"lu{i:03d}" for i in range(lus)}

            def served() -> bool:
                owners = admin.owners(c.pool) or {}
                for lu in sorted(left):
                    node = owners.get(lu, {}).get("node")
                    if node is None or node == victim:
                        return False
                    try:
                        os.close(os.open(os.path.join(c.mounts[node], lu), os.O_WRONLY))
                    except OSError:
                        return False
                    left.discard(lu)
                return True
            _wait(served)
            out.append(time.monotonic() - t0)
            if sig == signal.SIGSTOP:
                os.kill(c.pids[victim], signal.SIGCONT)
    return out


def run(bench: Any, workdir: str, quick: bool) -> None:
    """Add the serving rows to ``bench`` (bench/run.py's Bench)."""
    missing = missing_tools()
    if missing:
        print(f"serving: skipped, missing {', '.join(missing)}", flush=True)
        return
    rounds, runtime, size = (2, 2, 256 * MiB) if quick else (5, 4, 1024 * MiB)
    res = nbd_run(workdir, rounds, runtime, size)
    for name, _, bs in PATTERNS:
        ours, qemu = res["ours"][name], res["qemu-nbd"][name]
        bench.add(f"NBD {name} vs qemu-nbd", "serving", "MiB/s" if bs == "1M" else "IOPS",
                  statistics.median(ours), statistics.median(qemu), 1.0,
                  note="fio nbd engine (libnbd), iodepth 16; ours: nbdkit file plugin over the node's mount; "
                       f"qemu-nbd: raw file, its default cache; rounds ours {', '.join(f'{x:.0f}' for x in ours)}, "
                       f"qemu-nbd {', '.join(f'{x:.0f}' for x in qemu)}")
    red = redirect_run(workdir, rounds, runtime, size // 2)
    for name in red["owner"]:
        ours, base = red["redirected"][name], red["owner"][name]
        bench.add(f"redirected {name} vs owner", "serving", "MiB/s" if "1M" in name else "IOPS",
                  statistics.median(ours), statistics.median(base), 0.9,
                  note="fio through a node's mount reading an LU another node owns (its redundant copy), against "
                       f"the owner's mount; rounds {', '.join(f'{x:.0f}' for x in ours)} vs "
                       f"{', '.join(f'{x:.0f}' for x in base)}")
    runs = 2 if quick else 5
    kill = lu_failover(workdir, runs, signal.SIGKILL)
    bench.add("LU failover of 100 LUs, owner killed", "serving", "ms", statistics.median(kill) * 1e3, None, 3000,
              higher_is_better=False, note=f"3 nodes, {INTERVAL:.0f}s keep-alive; from SIGKILL until every LU opens "
              f"for writing on its new owner's mount; runs (s) {', '.join(f'{t:.3f}' for t in kill)}")
    hung = lu_failover(workdir, runs, signal.SIGSTOP)
    bench.add("LU failover of 100 LUs, owner hung", "serving", "ms", statistics.median(hung) * 1e3, None, None,
              higher_is_better=False, note=f"SIGSTOP: found by the {config.ClusterConfig('x', 0).misses}-miss timeout, "
              f"then fenced; runs (s) {', '.join(f'{t:.3f}' for t in hung)}")
