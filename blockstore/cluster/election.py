"""Primary election and epoch fencing, on the coordination store alone.

The record ``primary`` holds the primary node's name and its epoch. It is never deleted: a
resignation leaves the node empty and the epoch as it was, so the epoch only grows.

An election, as any eligible node runs it on its own:
1. lock the primary-ID field: create ``primary/lock`` by compare-and-set (absent -> this node),
   under the node's lease, so a candidate that dies mid-election leaves no lock behind;
2. commit: compare-and-set ``primary`` from the revision the node saw when it decided a primary
   was needed to {this node, epoch + 1}; if anyone changed it since, the node lost;
3. release the lock; the caller then tells every node.
Only a compare-and-set from the record at epoch E can write epoch E + 1, so there is at most one
primary per epoch, whatever the timing.

Fencing: a write only a primary may make is a store transaction that compares the ``primary``
record's revision with the one this node's election wrote. After any newer election (or a
resignation) that revision is gone, and the write is refused (``Deposed``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..errors import BlockstoreError, NotFound
from .store import CoordinationStore

KEY = "primary"
LOCK = "primary/lock"


class Deposed(BlockstoreError):
    """A primary-only write carried an epoch that a newer election has replaced."""


@dataclass(frozen=True)
class Primary:
    node: str | None     # None: no primary (never elected, or resigned)
    epoch: int           # 0 before the first election
    revision: int        # the store revision of this record (0: absent); what fencing compares
    address: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node, "epoch": self.epoch, "address": self.address}


def current(store: CoordinationStore) -> Primary:
    e = store.get(KEY)
    if e is None:
        return Primary(None, 0, 0)
    rec = json.loads(e.value)
    return Primary(rec["node"], rec["epoch"], e.revision, rec.get("address"))


def live(store: CoordinationStore) -> Primary | None:
    """The primary record if its node is alive (its ``alive/NODE`` key, under the node's lease, is
    there), else None."""
    prim = current(store)
    return prim if prim.node is not None and store.get(f"alive/{prim.node}") is not None else None


def elect(store: CoordinationStore, node: str, address: str, seen: Primary, lease: int) -> Primary | None:
    """Try to become primary, replacing the record ``seen``. Returns the new record, or None if
    another node holds the lock or changed the record first."""
    lock = store.get(LOCK)
    try:
        if lock is not None or store.compare_and_set(LOCK, 0, node.encode(), lease=lease) is None:
            return None
    except NotFound:
        return None  # our lease ran out (we were stopped or starved): not a candidate any more
    try:
        rec = {"node": node, "epoch": seen.epoch + 1, "address": address}
        rev = store.compare_and_set(KEY, seen.revision, json.dumps(rec).encode())
        if rev is None:
            return None
        return Primary(node, seen.epoch + 1, rev, address)
    finally:
        mine = store.get(LOCK)
        if mine is not None and mine.value == node.encode():
            store.delete(LOCK, expected=mine.revision)


def break_lock(store: CoordinationStore, holder_is_down) -> bool:  # type: ignore[no-untyped-def]
    """Remove an election lock whose holder is down (it died between lock and commit)."""
    lock = store.get(LOCK)
    if lock is not None and holder_is_down(lock.value.decode()):
        return store.delete(LOCK, expected=lock.revision)
    return False


def resign(store: CoordinationStore, me: Primary) -> bool:
    """Give up the primary role (a clean stop): the record keeps the epoch, loses the node."""
    rec = {"node": None, "epoch": me.epoch, "address": None, "resigned": me.node}
    return store.compare_and_set(KEY, me.revision, json.dumps(rec).encode()) is not None


def fenced(store: CoordinationStore, me: Primary, puts: dict[str, bytes | None]) -> int:
    """Apply a primary-only write, refused with Deposed unless ``me`` is still the record."""
    rev = store.commit({KEY: me.revision}, puts)
    if rev is None:
        now = current(store)
        raise Deposed(f"refused: epoch {me.epoch} of {me.node} is over (the primary is "
                      f"{now.node or 'none'} at epoch {now.epoch})")
    return rev
