"""Who owns each LU: one record per LU in the coordination store, written only by the primary.

``own/LU`` holds the owning node's name. Its **ownership epoch** is the record's revision in the
store: the store's revision only grows (etcd's ``mod_revision`` likewise), so every assignment of
an LU gets an epoch larger than every earlier one, also across the LU's removal and a new LU of
the same name. That epoch is what the data path will compare where an owner writes (the fence):
an owner holds the epoch it was given, and a write under an older one is refused.

An assignment is one store transaction that compares two revisions: the LU's record as the
primary read it (so two assignments racing for one LU cannot both win) and the ``primary`` record
the primary was elected under (so a primary deposed since, by a newer election or a resignation,
writes nothing: election.py's fencing). Nothing else writes these records.
"""
from __future__ import annotations

import collections
import json
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import Busy, NotFound
from ..names import check_name
from . import election
from .election import Deposed, Primary
from .store import CoordinationStore

PREFIX = "own/"


@dataclass(frozen=True)
class Ownership:
    lu: str
    node: str
    epoch: int      # the record's store revision: grows with every assignment of any LU


def _key(lu: str) -> str:
    return PREFIX + check_name(lu)


def get(store: CoordinationStore, lu: str) -> Ownership | None:
    """The owner of ``lu`` and its epoch, None when it has none."""
    e = store.get(_key(lu))
    return None if e is None else Ownership(lu, json.loads(e.value)["node"], e.revision)


def every(store: CoordinationStore) -> dict[str, Ownership]:
    """Every LU's ownership, by LU name."""
    out = {}
    for key, e in store.range(PREFIX):
        lu = key[len(PREFIX):]
        out[lu] = Ownership(lu, json.loads(e.value)["node"], e.revision)
    return out


def assign(store: CoordinationStore, primary: Primary, lu: str, node: str,
           seen: Ownership | None | bool = True) -> Ownership:
    """As the primary elected under ``primary``, make ``node`` the owner of ``lu`` under a new
    epoch. ``seen``: the ownership the caller decided on (None: it had none); by default, what
    the store holds now. Deposed when ``primary`` is no longer the current primary record; Busy
    when the LU's ownership changed since ``seen`` (another assignment won)."""
    check_name(node, "node name")
    if seen is True:
        seen = get(store, lu)
    assert seen is not False
    if primary.node is None or primary.revision == 0:
        raise Deposed("no primary: ownership is written by the primary alone")
    rev = store.commit({election.KEY: primary.revision, _key(lu): seen.epoch if seen else 0},
                       {_key(lu): json.dumps({"node": node}).encode()})
    if rev is None:
        now = election.current(store)
        if now.revision != primary.revision:
            raise Deposed(f"node {primary.node} is no longer the primary (epoch {primary.epoch}, now {now.epoch}): "
                          f"the ownership of {lu!r} is unchanged")
        raise Busy(f"the ownership of {lu!r} changed while it was being assigned; nothing was written")
    return Ownership(lu, node, rev)


def choose(up: Mapping[str, str | None], load: Mapping[str, int], avoid_cec: str | None = None) -> str:
    """Where an LU goes: of the nodes that are ``up`` (name -> its CEC, None when it names none),
    one in another CEC than ``avoid_cec`` first (the failed node's machine may be failing whole),
    then the one owning fewest LUs (``load``), then by name."""
    if not up:
        raise NotFound("no node is up to own the LU")
    return min(up, key=lambda n: (avoid_cec is not None and up[n] == avoid_cec, load.get(n, 0), n))


def move_many(store: CoordinationStore, primary: Primary,
              moves: Mapping[str, tuple[Ownership, str]]) -> dict[str, Ownership] | None:
    """As the primary, give every LU in ``moves`` (LU -> (its ownership as read, the new node))
    its new owner in one transaction, and return the new ownerships (each epoch larger than the
    one it replaced; whether they share one, as in etcd, is the store's affair). None when any of
    the LUs' records changed meanwhile (nothing written: read again and retry); Deposed when
    ``primary`` is no longer the current primary record."""
    compares = {election.KEY: primary.revision, **{_key(lu): seen.epoch for lu, (seen, _) in moves.items()}}
    rev = store.commit(compares, {_key(lu): json.dumps({"node": node}).encode() for lu, (_, node) in moves.items()})
    if rev is None:
        if election.current(store).revision != primary.revision:
            raise Deposed(f"node {primary.node} is no longer the primary (epoch {primary.epoch}): no LU was moved")
        return None
    now = {lu: get(store, lu) for lu in moves}
    return {lu: o for lu, o in now.items() if o is not None}


def plan_failover(lost: list[Ownership], up: Mapping[str, str | None], cecs: Mapping[str, str | None],
                  load: Mapping[str, int]) -> dict[str, tuple[Ownership, str]]:
    """Where each LU of ``lost`` goes (LU -> (ownership, new node)): one at a time, each to
    ``choose``'s node with the LUs placed so far counted, so a dead node's LUs spread over the
    live ones instead of all landing on the least loaded."""
    counts = collections.Counter(load)
    plan = {}
    for o in lost:
        node = choose(up, counts, cecs.get(o.node))
        counts[node] += 1
        plan[o.lu] = (o, node)
    return plan


def release(store: CoordinationStore, primary: Primary, lu: str, seen: Ownership) -> None:
    """As the primary, drop ``lu``'s ownership record (the LU was removed), if it is still ``seen``."""
    if store.commit({election.KEY: primary.revision, _key(lu): seen.epoch}, {_key(lu): None}) is None:
        if election.current(store).revision != primary.revision:
            raise Deposed(f"node {primary.node} is no longer the primary: the ownership of {lu!r} is unchanged")
        raise Busy(f"the ownership of {lu!r} changed meanwhile; nothing was dropped")
