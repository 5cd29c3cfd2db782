"""The cluster's record in a pool: its name, timings, retention limits, and its two secrets.

A pool holds at most one cluster. The record lives in the coordination store under ``cluster``.
The store is the embedded one (``POOL/cluster``, an LMDB environment) unless the cluster was made
on etcd (``cluster create --store etcd://HOST:PORT,...``): then ``POOL/cluster.store`` names the
endpoints and the key prefix under which this cluster's records are (``blockstore/ID/``), and
``BLOCKSTORE_STORE`` in a process's environment (``node start --store``) names other endpoints
of that same etcd.
Two secrets, each a file readable only by the pool's owner:
- the callers' token, ``POOL/cluster.token``: what an event caller presents; it lets a caller
  register for events and ask a node's status, nothing else;
- the node key, ``POOL/cluster.key``: what the nodes and the administrator's commands present
  for everything else (peer keep-alive links, stop, FFDC). A caller handed the token therefore
  cannot send keep-alives under a node's name or stop a node.
"""
from __future__ import annotations

import json
import os
import secrets
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import AlreadyExists, InvalidArgument, NotFound
from ..meta import meta_dir
from ..names import check_name
from ..pooldir import open_file, read_file, subdir
from .store import CoordinationStore, LmdbStore

KEY = "cluster"
#: endpoints a process uses instead of those the pool records (node start --store)
STORE_ENV = "BLOCKSTORE_STORE"


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    created: float
    interval: float = 1.0        # seconds between keep-alives
    misses: int = 3              # keep-alives missed before a node is marked down
    event_keep: int = 1_000_000  # payload files kept for callers that reconnect with since=SEQ
    ffdc_keep: int = 20          # FFDC bundles kept in the repository
    ffdc_interval: float = 60.0  # at most one bundle per node and condition in this many seconds
    fence_agent: str = ""        # the command that fences a failed node (agent.py); "": this machine's own

    @property
    def timeout(self) -> float:
        """Seconds without a keep-alive after which a node is down."""
        return self.interval * self.misses


def token_path(pool_path: str) -> str:
    return os.path.join(pool_path, "cluster.token")


def key_path(pool_path: str) -> str:
    return os.path.join(pool_path, "cluster.key")


def store_path(pool_path: str) -> str:
    return os.path.join(pool_path, "cluster")


def where_path(pool_path: str) -> str:
    """Where the pool records the etcd its cluster's store is in (absent: the embedded store)."""
    return os.path.join(pool_path, "cluster.store")


def store_where(pool_path: str) -> dict[str, Any] | None:
    """{url, prefix} of the pool's etcd store, or None for the embedded one."""
    try:
        return dict(json.loads(read_file(pool_path, where_path(pool_path), 65536)))
    except FileNotFoundError:
        return None


def _check_pool(pool_path: str) -> str:
    return os.path.dirname(meta_dir(pool_path))


def has_cluster(pool_path: str) -> bool:
    path = _check_pool(pool_path)
    return os.path.isdir(store_path(path)) or os.path.exists(where_path(path))


def require(pool_path: str) -> None:
    """Refuse, in one line and without making anything, a pool that has no cluster."""
    if not has_cluster(pool_path):
        raise NotFound(f"the pool at {_check_pool(pool_path)} has no cluster: run `blockstore cluster create NAME` "
                       "first")


def open_store(pool_path: str) -> CoordinationStore:
    """The pool's coordination store: the embedded one, or the etcd the pool records (at the
    endpoints of ``BLOCKSTORE_STORE`` when the environment names some)."""
    path = _check_pool(pool_path)
    where = store_where(path)
    if where is None:
        return LmdbStore(store_path(path))
    from .etcd import EtcdStore
    return EtcdStore(os.environ.get(STORE_ENV) or where["url"], where["prefix"], timeout=where.get("timeout", 2.0))


def describe_store(store: CoordinationStore) -> dict[str, Any]:
    """The store as ``cluster status`` shows it: where it is (``CoordinationStore.where``) and
    whether it answers."""
    from .etcd import StoreUnavailable
    try:
        store.revision()  # one request: does it answer
        health = "ok"
    except StoreUnavailable as e:
        health = f"unavailable: {e}"
    return {**store.where(), "health": health}  # after asking: the member that answered


def create(pool_path: str, name: str, *, interval: float = 1.0, misses: int = 3,
           fence_agent: str = "", store_url: str | None = None) -> ClusterConfig:
    """Make the pool's cluster (its records in etcd at ``store_url``, else in the embedded
    store). Refused if the pool already has one."""
    path = _check_pool(pool_path)
    check_name(name, "cluster name")
    if not 0.05 <= interval <= 60:
        raise InvalidArgument("the keep-alive interval is from 0.05 to 60 seconds")
    if not 2 <= misses <= 100:
        raise InvalidArgument("misses is from 2 to 100")
    if fence_agent:
        from .agent import check_command
        check_command(fence_agent)
    cfg = ClusterConfig(name=name, created=time.time(), interval=interval, misses=misses, fence_agent=fence_agent)
    where = None
    if store_url is not None:
        from .etcd import EtcdStore, parse_endpoints
        parse_endpoints(store_url)
        if has_cluster(path):
            existing = open_store(path)
            try:
                if existing.get(KEY) is not None:
                    raise AlreadyExists(f"the pool already has cluster {load_config(existing).name!r}")
            finally:
                existing.close()
        # a member that hangs (paused, cut off) costs a request this long before the next is asked:
        # a quarter interval, so a node's keep-alives go on meanwhile
        prefix, timeout = f"blockstore/{uuid.uuid4().hex}/", round(min(2.0, max(0.1, interval / 4)), 3)
        where = {"url": store_url, "prefix": prefix, "timeout": timeout}
        store: CoordinationStore = EtcdStore(store_url, prefix, timeout=timeout)
    else:
        store = open_store(path)
    try:
        if store.get(KEY) is not None:
            raise AlreadyExists(f"the pool already has cluster {load_config(store).name!r}")
        for secret in (token_path(path), key_path(path)):
            os.replace(_written(secret + ".tmp", secrets.token_hex(16) + "\n"), secret)
        if store.compare_and_set(KEY, 0, json.dumps(asdict(cfg)).encode()) is None:
            raise AlreadyExists("another process created the pool's cluster first")
        if where is not None:  # last: until it is there, the pool has no cluster
            os.replace(_written(where_path(path) + ".tmp", json.dumps(where) + "\n"), where_path(path))
        for d in ("payloads", "ffdc", "faults", "nodes"):
            subdir(path, d)
    finally:
        store.close()
    return cfg


def load_config(store: CoordinationStore, pool_path: str = "") -> ClusterConfig:
    e = store.get(KEY)
    if e is None:
        where = f"the pool at {pool_path}" if pool_path else "the pool"
        at = store.where()
        if at["backend"] == "etcd":  # the pool names an etcd, which holds no such cluster
            raise NotFound(f"etcd at {at['endpoints']} holds no cluster of {where} (under {at['prefix']}): "
                           "not this cluster's store")
        raise NotFound(f"{where} has no cluster: run `blockstore cluster create NAME` first")
    return ClusterConfig(**json.loads(e.value))


def _written(tmp: str, text: str) -> str:
    """``text`` in the file ``tmp`` (0600, synced), to be renamed or linked into place."""
    fd = open_file(os.path.dirname(tmp), tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def read_token(pool_path: str) -> str:
    """The callers' token."""
    try:
        return read_file(pool_path, token_path(pool_path), 4096).decode().strip()
    except FileNotFoundError:
        raise NotFound(f"no cluster token in {pool_path}: create the cluster first") from None


def read_key(pool_path: str) -> str:
    """The node key; a cluster made before there was one gets it now (the first reader makes it,
    atomically, so every node reads the same)."""
    path = key_path(pool_path)
    read_token(pool_path)  # no cluster, no key
    try:
        return read_file(pool_path, path, 4096).decode().strip()
    except FileNotFoundError:
        pass
    tmp = _written(f"{path}.{os.getpid()}", secrets.token_hex(16) + "\n")
    try:
        os.link(tmp, path)  # fails if another process made it first: theirs stands
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    return read_file(pool_path, path, 4096).decode().strip()
