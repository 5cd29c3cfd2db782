"""From the engine to the cluster: what an engine process (the CLI, a mount daemon) reports.

The engine knows nothing of clusters; it calls its Pool's listeners with (kind, info). When the
pool has a cluster, ``attach`` adds a listener that publishes the events callers may register for
(LU created/removed/resized, pool threshold crossed, paging and partition records changed) and
turns fault conditions (a degraded mirror, a checksum mismatch, an I/O error) into fault reports
in ``POOL/faults``. The primary node takes
each report and captures FFDC for it, so a fault seen by a short-lived CLI process is still
captured by a node that knows the cluster's state.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from ..errors import BlockstoreError
from ..pooldir import dir_fd
from .config import token_path
from .events import EventLog

log = logging.getLogger("blockstore.cluster")
PUBLISHED = frozenset({"lu_created", "lu_removed", "lu_resized", "pool_threshold"})
FAULTS = frozenset({"mirror_degraded", "checksum_mismatch", "io_error"})
# Service records whose changes callers may register for: record kind -> event kind. The event
# carries the record's name and a few small fields, not the whole record (payloads are bounded).
RECORDS = {"lpar": "paging_changed", "partition": "partition_changed"}
RECORD_FIELDS = ("state", "cec", "node", "image", "lu", "migrating_to")


def faults_dir(pool_path: str) -> str:
    return os.path.join(pool_path, "faults")


def report_fault(pool_path: str, condition: str, detail: dict[str, Any]) -> str:
    """Leave a fault report for the primary (written whole: temporary name, then rename)."""
    d = dir_fd(pool_path, "faults")
    try:
        name = f"{time.time_ns()}-{os.getpid()}.json"
        fd = os.open(f".{name}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600, dir_fd=d)
        with os.fdopen(fd, "w") as f:
            json.dump({"condition": condition, "detail": detail, "time": time.time(), "pid": os.getpid()}, f,
                      default=str)
        os.rename(f".{name}", name, src_dir_fd=d, dst_dir_fd=d)
    finally:
        os.close(d)
    return name


def take_faults(pool_path: str) -> list[dict[str, Any]]:
    """Every pending fault report, oldest first; each is removed as it is read."""
    if not os.path.isdir(faults_dir(pool_path)):
        return []
    d = dir_fd(pool_path, "faults")
    out = []
    try:
        for n in sorted(n for n in os.listdir(d) if n.endswith(".json") and not n.startswith(".")):
            try:
                fd = os.open(n, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=d)  # a link: unreadable, not followed
                with os.fdopen(fd) as f:
                    out.append(json.load(f))
            except (OSError, ValueError) as e:
                out.append({"condition": "io_error", "detail": {"unreadable fault report": n, "error": str(e)}})
            try:
                os.unlink(n, dir_fd=d)
            except FileNotFoundError:
                pass
    finally:
        os.close(d)
    return out


def attach(pool: Any, origin: str | None = None) -> bool:
    """Report this pool's engine events to its cluster, if it has one. Returns whether it does."""
    if not os.path.exists(token_path(pool.path)):
        return False
    events = EventLog(pool.path)
    who = origin or f"pid {os.getpid()}"

    def listener(kind: str, info: dict[str, Any]) -> None:
        # Telling the cluster must never fail the engine's own request: a failure is logged.
        try:
            if kind in PUBLISHED:
                events.publish(kind, info, node=who)
            elif kind == "record_changed" and info["kind"] in RECORDS:
                rec = info["record"]
                data = {"name": info["name"], "state": "removed"} if rec is None else \
                    {"name": info["name"], **{k: rec[k] for k in RECORD_FIELDS if k in rec}}
                events.publish(RECORDS[info["kind"]], data, node=who)
            if kind in FAULTS:
                report_fault(pool.path, kind, info)
        except (OSError, BlockstoreError) as e:
            log.warning("could not report %s to the cluster: %s", kind, e)

    pool.listeners.append(listener)
    return True
