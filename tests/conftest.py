from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from blockstore.pool import Pool
from blockstore.check import check
from blockstore.cluster import admin

SLOW = os.environ.get("BLOCKSTORE_SLOW") == "1"
HERE = os.path.dirname(__file__)


@pytest.fixture(scope="session")
def etcd(tmp_path_factory):  # type: ignore[no-untyped-def]
    """One etcd member on loopback for this test process (bench/etcd_server.py); tests keep to key
    prefixes of their own."""
    from blockstore_bench.etcd_server import Etcd
    e = Etcd(str(tmp_path_factory.mktemp("etcd"))).start()
    yield e
    e.close()


@pytest.fixture
def pool_dir(tmp_path):
    return str(tmp_path / "pool")


@pytest.fixture
def pool(pool_dir):
    with Pool.create(pool_dir, "256M", extent_size="64K") as p:
        yield p
        assert check(p)["clean"], check(p)


def flip(path: str, offset: int) -> None:
    """Invert one byte of a file in place (damage a data file's copy)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def run_cli(*args: str, pool: str | None = None, stdin: bytes | None = None, check_rc: int | None = 0) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "blockstore"] + (["--pool", pool] if pool else []) + list(args)
    r = subprocess.run(cmd, input=stdin, capture_output=True, timeout=120)
    if check_rc is not None:
        assert r.returncode == check_rc, (cmd, r.returncode, r.stderr.decode())
    return r


def sh(*cmd: str, **kw: Any) -> subprocess.CompletedProcess:
    """Run a command that must succeed; its output in the assertion when it does not."""
    r = subprocess.run(list(cmd), capture_output=True, timeout=300, **kw)
    assert r.returncode == 0, (cmd, r.stdout.decode()[-2000:], r.stderr.decode()[-2000:])
    return r


@contextmanager
def mounted(pool_path: str, mp: str) -> Iterator[str]:
    """The pool mounted at a new directory ``mp`` through the CLI; unmounted after (lazily, so a
    test that left a file open still cleans up)."""
    os.mkdir(mp)
    run_cli("mount", mp, pool=pool_path)
    try:
        yield mp
    finally:
        if os.path.ismount(mp):
            run_cli("umount", "--lazy", mp, check_rc=None)


@pytest.fixture
def mnt(tmp_path, pool_path):
    """The module's ``pool_path`` mounted (``mounted``)."""
    with mounted(pool_path, str(tmp_path / "mnt")) as mp:
        yield mp


def cli_json(*args: str, pool: str) -> Any:
    return json.loads(run_cli(*args, "--json", pool=pool).stdout)


def fingerprint(pool_dir: str) -> Any:
    """Everything a refused command must leave unchanged: status, every LU record and its data."""
    import hashlib

    with Pool.open(pool_dir) as p:
        st = p.status()
        for k in ("reserved", "free", "metadata_bytes", "used_fraction", "threshold_exceeded"):
            st.pop(k)
        lus = sorted(p.list_lus(), key=lambda r: r["name"])
        digests = {}
        for r in lus:
            with p.lu(r["name"], writable=False) as lu:
                h = hashlib.sha256()
                for pos in range(0, lu.size, 1 << 20):
                    h.update(lu.read(pos, min(1 << 20, lu.size - pos)))
                digests[r["name"]] = h.hexdigest()
        rep = check(p)
    return st, lus, digests, rep["clean"]


def page_cached(fd: int, offset: int) -> bool:
    """Whether the page at ``offset`` of ``fd`` is in the page cache (mincore of a fresh mapping)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    p = libc.mmap(None, 4096, 1, 1, fd, offset)  # PROT_READ, MAP_SHARED
    vec = ctypes.create_string_buffer(1)
    assert libc.mincore(p, 4096, vec) == 0
    libc.munmap(p, 4096)
    return bool(vec.raw[0] & 1)


@pytest.fixture
def faulty(tmp_path):
    """A directory served by the fault-injecting passthrough (faultfs.py): fsync fails while
    ``ctl`` exists, and writes while ``ctl`` with ".write" added exists."""
    backing, mnt, ctl = tmp_path / "backing", tmp_path / "faulty", tmp_path / "fail-fsync"
    backing.mkdir()
    mnt.mkdir()
    proc = start_faultfs(str(backing), str(mnt), str(ctl))
    yield str(mnt), ctl
    subprocess.run(["fusermount3", "-uz", str(mnt)], check=False)  # lazily: a failed test may hold files open
    proc.wait(timeout=10)


def start_faultfs(backing: str, mnt: str, ctl: str, volatile: bool = False) -> subprocess.Popen:
    """faultfs.py serving ``backing`` at ``mnt``, mounted when this returns."""
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "faultfs.py"), backing, mnt, ctl,
                             *(["volatile"] if volatile else [])])
    for _ in range(100):
        if os.path.ismount(mnt):
            break
        time.sleep(0.05)
    assert os.path.ismount(mnt)
    return proc


def daemon_pid(pool_path: str) -> int:
    """The pid of the one mount daemon serving the pool."""
    (pidfile,) = [f for f in os.listdir(os.path.join(pool_path, "mounts")) if f.endswith(".pid")]
    with open(os.path.join(pool_path, "mounts", pidfile)) as f:
        return int(f.read())


def mount_log(pool_path: str) -> str:
    logs = [f for f in os.listdir(os.path.join(pool_path, "mounts")) if f.endswith(".log")]
    return "".join(open(os.path.join(pool_path, "mounts", f)).read() for f in logs)


def direct_counts(pool_path: str) -> dict[str, int]:
    """The direct path's request counts the last unmount logged ("read direct", "write passed"...)."""
    line = mount_log(pool_path).rsplit("requests: ", 1)[1].splitlines()[0]
    return {what: int(n) for n, what in (part.split(" ", 1) for part in line.strip().split(", "))}


def race(target: Any, argsets: list[tuple[Any, ...]]) -> list[Any]:
    """Start ``target(*args, queue)`` in a process of its own for each of ``argsets``, all at
    once, and return what each put on the queue. Spawned, not forked: an LMDB environment is
    opened after the start, never inherited."""
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, q)) for args in argsets]
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join()
    return results


INTERVAL = 0.3


_HOLD_WRITER = """
import select, sys, lmdb
env = lmdb.open(sys.argv[1], map_size=1 << 34, max_dbs=8, subdir=True)
with env.begin(write=True):
    print("holding", flush=True)
    select.select([sys.stdin], [], [], float(sys.argv[2]))
"""


@contextmanager
def store_writer_held(store_dir: str, at_most: float = 30.0) -> Iterator[subprocess.Popen]:
    """Another process holds the LMDB writer lock of the embedded store at ``store_dir`` (as a
    commit stalled in its fsync by a busy disk would) until the block ends, ``at_most`` seconds
    at the longest, so a test that waits on it fails rather than hangs."""
    p = subprocess.Popen([sys.executable, "-c", _HOLD_WRITER, store_dir, str(at_most)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert p.stdout is not None and p.stdout.readline() == b"holding\n"
        yield p
    finally:
        assert p.stdin is not None
        p.stdin.close()
        p.wait(timeout=at_most + 5)


def wait_for(what, timeout: float = 10.0, step: float = 0.02):  # type: ignore[no-untyped-def]
    """``what()``'s first true value, asked every ``step`` seconds for up to ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = what()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Cluster:
    """Node processes of one pool's cluster, started with the CLI; the tests signal them by pid."""
    def __init__(self, pool: str, interval: float = INTERVAL) -> None:
        self.pool = pool
        self.interval = interval
        self.pids: dict[str, int] = {}

    def start(self, name: str, *extra: str) -> dict:
        r = run_cli("node", "start", "--name", name, *extra, "--json", pool=self.pool)
        rec = json.loads(r.stdout)
        self.pids[name] = rec["pid"]
        return rec

    def status(self) -> dict:
        return admin.status(self.pool)

    def wait(self, what, timeout: float = 10.0, step: float = 0.02):  # type: ignore[no-untyped-def]
        return wait_for(what, timeout, step)

    def primary(self) -> str | None:
        return self.status()["primary"]

    def views_agree(self, names: list[str], settled: bool = False) -> tuple[str, int] | None:
        """(primary, epoch) if every live node's own view (asked over its port) says the same
        (``settled``: and each hears every other)."""
        return admin.agreed_primary(self.pool, names, settled=settled)

    def log(self, name: str) -> str:
        with open(admin.log_path(self.pool, name)) as f:
            return f.read()

    def kill_all(self) -> None:
        admin.kill_nodes(self.pids.values())


def _cluster(tmp_path, *store: str) -> Iterator[Cluster]:
    pool = str(tmp_path / "pool")
    Pool.create(pool, "256M", extent_size="64K", mirror_dir=str(tmp_path / "fg1")).close()
    run_cli("cluster", "create", "c1", "--interval", str(INTERVAL), *store, pool=pool)
    c = Cluster(pool)
    yield c
    c.kill_all()


@pytest.fixture
def cluster(tmp_path):
    yield from _cluster(tmp_path)


@pytest.fixture
def etcd_cluster(tmp_path, etcd):
    """A cluster whose store is the test process's etcd (its own key prefix)."""
    yield from _cluster(tmp_path, "--store", etcd.url)


def pause(pids: list[int], pool: str, tries: int = 50) -> None:
    """SIGSTOP ``pids`` (a node's process tree) at an instant none of them is inside a write
    transaction of the pool's embedded coordination store. A process stopped there would hold
    the store's writer lock, and every other node's writes (and new openers of the store) would
    wait until it is continued: a limit of the embedded store (docs/cluster.md), not what these
    tests are about. Stopped there by chance, the processes are continued and stopped again."""
    import threading
    from blockstore.cluster.config import store_path, store_where
    from blockstore.cluster.store import LmdbStore
    if store_where(pool) is not None:  # etcd: a paused client holds no lock of it (the pool's
        # metadata, an LMDB of its own, is not probed: a node paused inside its write transaction
        # stalls the others' commits, which the etcd fence tests met; they wait for that probe)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        return
    store = LmdbStore(store_path(pool))
    try:
        for _ in range(tries):
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            probe = threading.Thread(target=lambda: store.env.begin(write=True).abort(), daemon=True)
            probe.start()
            probe.join(0.5)
            if not probe.is_alive():
                return
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
            probe.join()
            time.sleep(0.01)
        raise AssertionError(f"could not stop {pids} outside a store write in {tries} tries")
    finally:
        store.close()
