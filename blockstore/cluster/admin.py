"""What the CLI (or an embedding tool) does to a cluster from outside its nodes: start and stop
node processes, read the cluster's status, ask a node for FFDC."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterable, Iterator
from typing import Any

from ..daemon import daemonize
from ..errors import BlockstoreError, InvalidArgument, NotFound
from ..names import check_name
from ..pooldir import subdir
from . import election, ownership
from .config import describe_store, has_cluster, load_config, open_store, read_key, read_token
from .protocol import ProtocolError, request


def log_path(pool_path: str, name: str) -> str:
    return os.path.join(pool_path, "nodes", f"{name}.log")


def start_node(pool_path: str, name: str, *, listen: str = "127.0.0.1:0", cec: str | None = None,
               foreground: bool = False, metrics: str | None = None, mount: str | None = None,
               hold: bool = False, nbd: str | None = None) -> dict[str, Any]:
    """Start a node process (a daemon unless ``foreground``); returns its registration.
    ``metrics``: HOST:PORT where Prometheus scrapes the cluster's and the pool's figures.
    ``mount``: a directory where the node serves the pool's LUs (servers.py; ``hold``: its
    writes wait for a renewed lease instead of failing). ``nbd``: HOST:PORT where the node exports
    the LUs of its mount over NBD (servers.py)."""
    if metrics:
        from .. import metrics as figures
        figures.parse_address(metrics)  # a bad address refused here, not in the daemon
    from .node import Node
    pool_path = os.path.abspath(pool_path)
    check_name(name, "node name")
    store = open_store(pool_path)  # checks pool and cluster before forking, for a clear error
    try:
        load_config(store, pool_path)
    finally:
        store.close()
    if mount is not None:
        mount = os.path.abspath(mount)
        from .servers import is_mounted
        if not (os.path.isdir(mount) or is_mounted(mount)):  # a dead mount of this node: remounted
            raise InvalidArgument(f"mount point {mount} is not a directory")
    if nbd is not None:
        from .servers import NodeExport
        if mount is None:
            raise InvalidArgument("--nbd exports the node's mount: give --mount DIR too")
        NodeExport(name, mount, nbd)  # a bad address or no nbdkit: refused here, before the daemon
    if foreground:
        node = Node(pool_path, name, listen=listen, cec=cec, mount=mount, hold=hold, nbd=nbd)
        signal.signal(signal.SIGTERM, lambda *_: node.stop())
        with _figures(pool_path, metrics):
            node.run()
        return {"name": name, "address": node.address}
    subdir(pool_path, "nodes")

    def serve(ready) -> None:  # type: ignore[no-untyped-def]
        node = Node(pool_path, name, listen=listen, cec=cec, mount=mount, hold=hold, nbd=nbd)
        signal.signal(signal.SIGTERM, lambda *_: node.stop())
        with _figures(pool_path, metrics):
            node.run(on_ready=ready)
    daemonize(serve, log_path(pool_path, name), f"node {name}", root=pool_path)
    return node_record(pool_path, name)


@contextlib.contextmanager
def _figures(pool_path: str, address: str | None) -> Iterator[None]:
    """A node's Prometheus endpoint while the block runs: the cluster as ``status`` sees it, and
    the pool's space (opened read-only at each scrape: a node holds no pool open)."""
    if not address:
        yield
        return
    from .. import metrics as figures
    from ..pool import Pool

    def pool_families() -> Iterator[Any]:
        with Pool.glance(pool_path) as pool:
            yield from list(figures.pool_figures(pool)())
    server = figures.serve(address, [figures.cluster_figures(lambda: status(pool_path)), pool_families])
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def node_record(pool_path: str, name: str) -> dict[str, Any]:
    store = open_store(pool_path)
    try:
        e = store.get(f"nodes/{name}")
    finally:
        store.close()
    if e is None:
        raise NotFound(f"no node {name} in the cluster")
    rec: dict[str, Any] = json.loads(e.value)
    return rec


def node_view(pool_path: str, name: str, timeout: float = 2.0) -> dict[str, Any]:
    """Node ``name``'s own view of the cluster (its role, the primary and epoch it sees, its peers),
    asked over its port. Raises OSError or ProtocolError when the node does not answer."""
    rec = node_record(pool_path, name)
    return request(rec["address"], {"op": "status", "token": read_token(pool_path)}, timeout=timeout)


def agreed_primary(pool_path: str, names: list[str], *, settled: bool = False) -> tuple[str, int] | None:
    """(primary, epoch) if every one of ``names`` answers and names the same primary; else None.
    ``settled``: also every one of them must hear every other (each sees the others up)."""
    seen = set()
    for n in names:
        try:
            v = node_view(pool_path, n)
        except (OSError, ProtocolError):
            return None
        if settled and any(v["peers"].get(m, {}).get("state") != "up" for m in names if m != n):
            return None
        seen.add((v["primary"], v["epoch"]))
    if len(seen) != 1:
        return None
    primary, epoch = seen.pop()
    return None if primary is None else (primary, epoch)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def kill_nodes(pids: Iterable[int]) -> None:
    """End node processes this caller started, at once (SIGCONT first, so a stopped one dies
    too); ones already gone are skipped. For tests and benchmarks: ``stop_node`` is the clean way."""
    for pid in pids:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def stop_node(pool_path: str, name: str, timeout: float = 15.0) -> None:
    """Ask node ``name`` to leave (a primary resigns first) and wait for its process to end."""
    rec = node_record(pool_path, name)
    try:
        request(rec["address"], {"op": "stop", "token": read_key(pool_path)})
    except (OSError, ProtocolError):
        raise BlockstoreError(f"node {name} is not running (nothing answers at {rec['address']})") from None
    deadline = time.monotonic() + timeout
    while _alive(rec["pid"]) and time.monotonic() < deadline:
        time.sleep(0.02)
    if _alive(rec["pid"]):
        raise BlockstoreError(f"node {name} (pid {rec['pid']}) was asked to stop but has not exited after {timeout:.0f}s")


def assign(pool_path: str, lu: str, node: str | None, wait: float = 10.0) -> dict[str, Any]:
    """Ask the primary to make ``node`` (None: the node that is up and owns fewest LUs) the owner
    of ``lu`` (the primary writes ownership alone: ownership.py); a primary that changed meanwhile
    is found and asked again, for up to ``wait`` seconds without one. Returns the new ownership:
    {lu, node, previous, epoch}."""
    if "@" in lu:
        raise InvalidArgument(f"{lu!r} is a snapshot: the owner of its LU serves it")
    check_name(lu)
    if node is not None:
        check_name(node, "node name")
    deadline = time.monotonic() + wait
    while True:
        store = open_store(pool_path)
        try:
            prim = election.live(store)
        finally:
            store.close()
        if prim is None or prim.address is None:
            reply: dict[str, Any] = {"error": "not primary"}
        else:
            try:
                reply = request(prim.address, {"op": "assign", "token": read_key(pool_path), "lu": lu, "node": node},
                                timeout=10.0)
            except (OSError, ProtocolError):
                reply = {"error": "not primary"}
        if reply.get("ok"):
            return {k: reply[k] for k in ("lu", "node", "previous", "epoch")}
        if reply.get("error") != "not primary":
            raise BlockstoreError(str(reply.get("error")))
        if time.monotonic() >= deadline:
            raise BlockstoreError("the cluster has no primary to assign the LU: start a node (node start NAME)")
        time.sleep(0.1)


def owners(pool_path: str, lu: str | None = None) -> dict[str, Any] | None:
    """Each owned LU's {node, epoch} (ownership.py), or only ``lu``'s; None when the pool has
    no cluster."""
    if not has_cluster(pool_path):
        return None
    store = open_store(pool_path)
    try:
        found = ownership.every(store) if lu is None else {lu: o for o in [ownership.get(store, lu)] if o}
        return {name: {"node": o.node, "epoch": o.epoch} for name, o in found.items()}
    finally:
        store.close()


def ask_ffdc(pool_path: str, name: str, reason: str) -> str | None:
    rec = node_record(pool_path, name)
    try:
        reply = request(rec["address"], {"op": "ffdc", "token": read_key(pool_path), "reason": reason}, timeout=60)
    except (OSError, ProtocolError):
        raise BlockstoreError(f"node {name} is not running (nothing answers at {rec['address']})") from None
    if "error" in reply:
        raise BlockstoreError(f"node {name}: {reply['error']}")
    return reply.get("id")


def status(pool_path: str) -> dict[str, Any]:
    """The cluster as the store records it: OK (a primary, every node up), DEGRADED (a primary,
    some node down), DOWN (no live primary); and per node its state, when it was last heard, the
    primary and epoch in its own view, and the LUs it owns (ownership.py)."""
    store = open_store(pool_path)
    try:
        where = describe_store(store)
        if where["health"] != "ok":  # no quorum, or no member answers: nothing more can be read
            return {"cluster": None, "state": "DOWN", "primary": None, "epoch": None, "primary_address": None,
                    "interval": None, "misses": None, "nodes": [], "store": where}
        cfg = load_config(store, pool_path)
        prim = election.current(store)
        owned: dict[str, list[str]] = {}
        for lu, o in sorted(ownership.every(store).items()):
            owned.setdefault(o.node, []).append(lu)
        records = {json.loads(e.value)["name"]: json.loads(e.value) for _, e in store.range("nodes/")}
        alive = {k.split("/", 1)[1] for k, _ in store.range("alive/")}
        members = {k.split("/", 1)[1]: json.loads(e.value) for k, e in store.range("members/")}
        views = {k.split("/", 1)[1]: json.loads(e.value) for k, e in store.range("views/")}
    finally:
        store.close()
    now = time.time()
    nodes = []
    for name, rec in sorted(records.items()):
        heard = [now - v["time"] + v["peers"][name]["last_heard_s"] for v in views.values()
                 if name in v.get("peers", {}) and v["peers"][name]["last_heard_s"] is not None]
        if name in views and name in alive:
            heard.append(now - views[name]["time"])
        if rec.get("stopped") and name not in alive:
            state = "stopped"
        elif prim.node and prim.node in alive and name in members:
            state = members[name]["state"] if name != prim.node else "up"
        else:
            state = "up" if name in alive else "down"
        if state == "up" and name not in alive:
            state = "down"
        view = views.get(name, {})
        nodes.append({"name": name, "state": state, "address": rec["address"], "cec": rec.get("cec"),
                      "pid": rec.get("pid"), "last_seen_s": round(min(heard), 3) if heard else None,
                      "role": "primary" if name == prim.node else "member",
                      "view": {"primary": view.get("primary"), "epoch": view.get("epoch")},
                      "lus": owned.get(name, []), "mount": rec.get("mount"), "nbd": rec.get("nbd"),
                      "store_member": view.get("store_member")})
    live_primary = prim.node is not None and prim.node in alive
    if not live_primary:
        overall = "DOWN"
    elif all(n["state"] in ("up", "stopped") for n in nodes):
        overall = "OK"
    else:
        overall = "DEGRADED"
    return {"cluster": cfg.name, "state": overall, "primary": prim.node if live_primary else None,
            "epoch": prim.epoch, "primary_address": prim.address if live_primary else None,
            "interval": cfg.interval, "misses": cfg.misses, "nodes": nodes, "store": where}

