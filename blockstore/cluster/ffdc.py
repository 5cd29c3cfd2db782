"""First-failure data capture: a compressed bundle of diagnostics, taken when a
fault is first seen, written into the shared repository ``POOL/ffdc``.

A bundle is ``ID.tar.gz`` holding ``manifest.json`` (id, node, condition, reason, time, files),
``log.txt`` (the node's recent log), ``node.json`` (its state), ``cluster.json`` (the cluster
records in the coordination store), ``pool.json`` (a metadata summary), ``stack.txt`` (the
exception's trace, else every thread's stack). It is written under a temporary name, fsynced and
renamed, so the repository only ever holds whole bundles.

Rate limit: one bundle per node and condition per ``ffdc_interval`` seconds (a fault that repeats
does not fill the disk); an explicit capture asked for by a user is never limited. Captures are
for faults of the node and the engine (its own exceptions, a lost keep-alive, I/O and checksum
faults, a degraded mirror) and for a user's request; garbage sent to a node's port is refused
there and captures nothing. Retention: ``ffdc_keep`` bundles, the newest ones, except that the
first bundle of each node and condition is never pushed out by later ones: it is the evidence
of the first failure, which a fault that repeats every minute would otherwise replace within
``ffdc_keep`` minutes.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import sys
import tarfile
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any

from ..errors import InvalidArgument, NotFound
from ..pooldir import dir_fd, open_file, opened_dir
from .config import ClusterConfig
from .store import CoordinationStore

CONDITIONS = ("io_error", "checksum_mismatch", "mirror_degraded", "heartbeat_loss", "exception", "manual")
# IDs sort by capture time (to the microsecond), which is what retention prunes by.
_ID_RE = re.compile(r"^[0-9]{8}T[0-9]{6}\.[0-9]{6}-[A-Za-z0-9._+-]+-[a-z_]+-[0-9a-f]{6}\Z")


def repo(pool_path: str) -> str:
    return os.path.join(pool_path, "ffdc")


def _stacks(exc: BaseException | None) -> str:
    if exc is not None:
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    names = {t.ident: t.name for t in threading.enumerate()}
    out = []
    for ident, frame in sys._current_frames().items():
        out.append(f"--- thread {names.get(ident, ident)}\n" + "".join(traceback.format_stack(frame)))
    return "\n".join(out)


def _cluster_records(store: CoordinationStore) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for prefix in ("cluster", "primary", "nodes/", "members/", "views/", "alive/"):
        for key, e in store.range(prefix):
            try:
                out[key] = {"revision": e.revision, "value": json.loads(e.value)}
            except ValueError:
                out[key] = {"revision": e.revision, "value": e.value.decode(errors="replace")}
    return out


def _pool_summary(pool_path: str) -> dict[str, Any]:
    """The metadata summary, read without taking any LU: a pool that is failing may not open."""
    from ..pool import Pool
    try:
        with Pool.glance(pool_path) as pool:
            return {"status": pool.status(), "failure_groups": pool.failure_groups(),
                    "lus": [{k: r[k] for k in ("name", "size", "allocated", "kind")} for r in pool.list_lus()]}
    except Exception as e:  # the summary is best effort; the bundle must still be written
        return {"error": f"{type(e).__name__}: {e}"}


def rate_limited(store: CoordinationStore, cfg: ClusterConfig, node: str, condition: str) -> bool:
    """True if this node captured ``condition`` within the interval; else records now and
    returns False. The record is a compare-and-set so two threads cannot both pass."""
    key = f"ffdc/last/{node}/{condition}"
    e = store.get(key)
    now = time.time()
    if e is not None and now - float(e.value) < cfg.ffdc_interval:
        return True
    return store.compare_and_set(key, 0 if e is None else e.revision, str(now).encode()) is None


def capture(pool_path: str, store: CoordinationStore, cfg: ClusterConfig, *, node: str, condition: str,
            reason: str = "", log_lines: list[str] | None = None, state: dict[str, Any] | None = None,
            exc: BaseException | None = None) -> str | None:
    """Write a bundle; returns its id, or None when rate-limited."""
    if condition not in CONDITIONS:
        raise InvalidArgument(f"unknown FFDC condition {condition!r}")
    if len(reason) > 4096:
        raise InvalidArgument("an FFDC reason is at most 4096 characters")
    if condition != "manual" and rate_limited(store, cfg, node, condition):
        return None
    now = time.time()
    stamp = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}.{int(now * 1e6) % 1_000_000:06d}"
    bid = f"{stamp}-{node}-{condition}-{secrets.token_hex(3)}"
    files = {
        "log.txt": "\n".join(log_lines or []) + "\n",
        "node.json": json.dumps(state or {}, indent=2, default=str),
        "cluster.json": json.dumps(_cluster_records(store), indent=2),
        "pool.json": json.dumps(_pool_summary(pool_path), indent=2, default=str),
        "stack.txt": _stacks(exc),
    }
    manifest = {"id": bid, "node": node, "condition": condition, "reason": reason, "time": now,
                "files": sorted(files)}
    files["manifest.json"] = json.dumps(manifest, indent=2)
    d = dir_fd(pool_path, "ffdc")
    tmp = f".tmp-{bid}"
    # bundles name LUs and nodes: only the pool's owner reads them
    raw_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600, dir_fd=d)
    with os.fdopen(raw_fd, "wb") as raw:
        with tarfile.open(fileobj=raw, mode="w:gz") as tar:
            for name in ["manifest.json", *sorted(n for n in files if n != "manifest.json")]:
                data = files[name].encode()
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), int(now), 0o600
                tar.addfile(info, io.BytesIO(data))
        raw.flush()
        os.fsync(raw.fileno())
    try:
        os.rename(tmp, f"{bid}.tar.gz", src_dir_fd=d, dst_dir_fd=d)
        os.fsync(d)
    finally:
        os.close(d)
    prune(pool_path, cfg.ffdc_keep)
    return bid


def _bundles(pool_path: str) -> list[str]:
    try:
        names = os.listdir(repo(pool_path))
    except FileNotFoundError:
        return []
    return sorted(n[:-7] for n in names if n.endswith(".tar.gz") and not n.startswith("."))


def _kind(bid: str) -> tuple[str, str]:
    """(node, condition) of a bundle id ``STAMP-NODE-CONDITION-HEX`` (a node name may hold '-')."""
    head, condition, _ = bid.rsplit("-", 2)
    return head[23:], condition


def prune(pool_path: str, keep: int) -> list[str]:
    """Remove bundles beyond ``keep``, oldest first (ids sort by time), never the first of each
    node and condition; returns the ids removed."""
    bundles = _bundles(pool_path)
    first: dict[tuple[str, str], str] = {}
    for bid in bundles:
        first.setdefault(_kind(bid), bid)
    firsts = set(first.values())
    others = [b for b in bundles if b not in firsts]
    room = max(0, keep - len(firsts))
    gone = others[:max(0, len(others) - room)] if keep > 0 else []
    for bid in gone:
        try:
            with opened_dir(pool_path, repo(pool_path)) as d:
                os.unlink(f"{bid}.tar.gz", dir_fd=d)
        except FileNotFoundError:
            pass
    return gone


@contextlib.contextmanager
def _bundle(pool_path: str, path: str) -> Iterator[tarfile.TarFile]:
    """A bundle of the repository, opened as pooldir.open_file opens (never through a link)."""
    with os.fdopen(open_file(pool_path, path, os.O_RDONLY), "rb") as f, tarfile.open(fileobj=f, mode="r:gz") as tar:
        yield tar


def _manifest(pool_path: str, path: str) -> dict[str, Any]:
    with _bundle(pool_path, path) as tar:
        f = tar.extractfile("manifest.json")
        assert f is not None
        manifest: dict[str, Any] = json.load(f)
        return manifest


def list_bundles(pool_path: str) -> list[dict[str, Any]]:
    out = []
    for bid in _bundles(pool_path):
        path = os.path.join(repo(pool_path), f"{bid}.tar.gz")
        try:
            m = _manifest(pool_path, path)
        except (OSError, tarfile.TarError, KeyError, ValueError):
            m = {"id": bid, "node": None, "condition": None, "reason": "unreadable bundle", "time": None}
        m["bytes"] = os.path.getsize(path)
        m["path"] = path
        out.append(m)
    return out


def show(pool_path: str, bid: str) -> dict[str, Any]:
    """A bundle's manifest and the text of each file in it."""
    if not _ID_RE.match(bid):
        raise InvalidArgument(f"not an FFDC id: {bid!r} (see `blockstore ffdc list`)")
    path = os.path.join(repo(pool_path), f"{bid}.tar.gz")
    if not os.path.exists(path):
        raise NotFound(f"no FFDC bundle {bid}")
    with _bundle(pool_path, path) as tar:
        contents = {}
        for m in tar.getmembers():
            f = tar.extractfile(m)
            if f is not None:
                contents[m.name] = f.read().decode(errors="replace")
    manifest = json.loads(contents.pop("manifest.json"))
    return {**manifest, "path": path, "contents": contents}
