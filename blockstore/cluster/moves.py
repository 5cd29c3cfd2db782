"""How LUs move between nodes: the primary's side of ownership (ownership.py holds the records,
serving.py the owner's side).

Every move ends in a write of ownership records fenced by the primary's election. Before that
write:
- an LU leaving a node that is up is let go of first (a graceful move): the node, asked over its
  port, has its mount stop writing the LU, flush it and release it;
- an LU leaving a node that failed waits until the fence agent has fenced the node (agent.py);
- an LU leaving a node that left cleanly needs neither (it let go of everything as it left).

A failover moves every LU of the nodes that are down or have left in one transaction, spread
over the nodes that are up one LU at a time (ownership.plan_failover). Each move is published
as ``ownership_changed`` with where the new owner serves the LU.
"""
from __future__ import annotations

import collections
import json
import logging
import time
from typing import Any, Protocol

from .. import fence
from ..errors import BlockstoreError, Busy, InvalidArgument, NotFound
from . import agent, ownership
from .config import ClusterConfig
from .election import Deposed, Primary
from .protocol import ProtocolError, request
from .store import CoordinationStore

log = logging.getLogger("blockstore.cluster.moves")


class Membership(Protocol):
    """What the moves need of the node they run in (node.py)."""

    name: str

    def states(self) -> dict[str, str]: ...

    def up_nodes(self) -> dict[str, str | None]: ...

    def cecs(self) -> dict[str, str | None]: ...

    def publish(self, kind: str, data: dict[str, Any]) -> int | None: ...

    def let_go_here(self, lu: str) -> None: ...

    def refused(self, e: Deposed) -> None: ...


class Moves:
    """The primary's moves of LUs in the pool at ``pool_path``, for the node ``node``."""

    def __init__(self, pool_path: str, store: CoordinationStore, cfg: ClusterConfig, key: str,
                 node: Membership) -> None:
        self.pool_path, self.store, self.cfg, self.key, self.node = pool_path, store, cfg, key, node
        self.fenced: set[tuple[str, Any]] = set()   # (node, incarnation) the fence agent has fenced

    def assign(self, me: Primary, lu: str, node: str) -> dict[str, Any]:
        """Make a live ``node`` (empty: the one ``ownership.choose`` picks) the owner of ``lu``,
        handing it over from its owner first. Returns {lu, node, previous, epoch}."""
        states = self.node.states()
        if not node:
            node = ownership.choose(self.node.up_nodes(), self._load())
        if node not in states:
            raise NotFound(f"no node named {node!r} in the cluster")
        if states[node] != "up":
            raise InvalidArgument(f"node {node!r} is {states[node]}: an LU is owned by a node that is up")
        from ..pool import Pool
        with Pool.glance(self.pool_path) as pool:
            if pool.lu_info(lu)["kind"] == "snapshot":
                raise InvalidArgument(f"{lu!r} is a snapshot: its LU's owner serves it")
        before = ownership.get(self.store, lu)
        if before is not None and before.node == node:  # nothing moves: no new epoch, no let-go
            return {"lu": lu, "node": node, "previous": node, "epoch": before.epoch}
        if before is not None and before.node != node:
            self._hand_over(lu, before.node, states.get(before.node))
        got = ownership.assign(self.store, me, lu, node, seen=before)
        previous = before.node if before else None
        log.info("LU %s owned by %s (epoch %d; before: %s)", lu, node, got.epoch, previous)
        self.node.publish("ownership_changed", {"lu": lu, "node": node, "previous": previous, "epoch": got.epoch,
                                                "reason": "assign", **self.serves(node, lu)})
        return {"lu": lu, "node": node, "previous": previous, "epoch": got.epoch}

    def failover(self, me: Primary, states: dict[str, str]) -> None:
        """Move every LU owned by a node that is down or has left to the live nodes, in one
        fenced transaction per round. A move that lost a race (an ``lu assign`` changed a record
        meanwhile) is planned again next round."""
        gone = {n for n, s in states.items() if s in ("down", "stopped")}
        if not gone:
            return
        owned = ownership.every(self.store)
        lost = sorted((o for o in owned.values() if o.node in gone), key=lambda o: o.lu)
        # a node that failed (not one that left, having let go of everything) is fenced first
        unfenced = {o.node for o in lost if states[o.node] == "down" and not self.fence(o.node)}
        lost = self._existing(me, [o for o in lost if o.node not in unfenced])
        if not lost:
            return
        plan = ownership.plan_failover(lost, self.node.up_nodes(), self.node.cecs(), self._load(owned))
        try:
            moved = ownership.move_many(self.store, me, plan)
        except Deposed as e:
            self.node.refused(e)
            return
        if moved is None:
            return
        log.warning("failover: %d LU(s) of %s moved", len(plan), ", ".join(sorted({o.node for o, _ in plan.values()})))
        for lu, now in moved.items():
            self.node.publish("ownership_changed", {"lu": lu, "node": now.node, "previous": plan[lu][0].node,
                                                    "epoch": now.epoch, "reason": "failover", **self.serves(now.node, lu)})

    def _existing(self, me: Primary, lost: list[ownership.Ownership]) -> list[ownership.Ownership]:
        """Of ``lost``, the LUs the pool still has; the records of the others (removed while
        their owner was away) are dropped."""
        if not lost:
            return lost
        from ..pool import Pool
        with Pool.glance(self.pool_path) as pool:
            names = {r["name"] for r in pool.list_lus()}
        for o in [o for o in lost if o.lu not in names]:
            try:
                ownership.release(self.store, me, o.lu, o)
            except (Deposed, Busy):
                pass  # the next round reads again
        return [o for o in lost if o.lu in names]

    def _load(self, owned: dict[str, ownership.Ownership] | None = None) -> collections.Counter[str]:
        """LUs owned per node (of ``owned``, the records as read; default: read them now)."""
        return collections.Counter(o.node for o in (ownership.every(self.store) if owned is None else owned).values())

    def _hand_over(self, lu: str, old: str, state: str | None) -> None:
        """Before ``lu`` moves away from node ``old``: a live owner flushes and lets go of it
        (asked over its port, or here), a failed one is fenced; one that left holds nothing."""
        if state == "up":
            try:
                if old == self.node.name:
                    self.node.let_go_here(lu)
                else:
                    reply = request(self.node_info(old)["address"], {"op": "let_go", "token": self.key, "lu": lu},
                                    timeout=2 * self.cfg.timeout + 5)
                    if not reply.get("ok"):
                        raise BlockstoreError(str(reply.get("error")))
            except (OSError, ProtocolError, BlockstoreError) as e:
                raise BlockstoreError(f"node {old} did not let go of LU {lu!r} ({e}); its ownership is unchanged") from None
        elif state == "down" and not self.fence(old):
            raise BlockstoreError(f"node {old} is down and could not be fenced; the ownership of {lu!r} is unchanged")

    def fence(self, node: str) -> bool:
        """Have ``node`` fenced by the fence agent (agent.py) once per incarnation: True when it
        can no longer write. With the agent layer off (fence.py), nothing is done."""
        if not fence.enabled("agent"):
            return True
        info = self.node_info(node)
        key = (node, info.get("incarnation"))
        if key in self.fenced:
            return True
        t0 = time.monotonic()
        if not agent.fence(self.pool_path, self.cfg.fence_agent, info):
            return False
        self.fenced.add(key)
        log.warning("node %s fenced in %.3fs", node, time.monotonic() - t0)
        self.node.publish("node_fenced", {"node": node, "agent": self.cfg.fence_agent or "local"})
        return True

    def serves(self, node: str, lu: str) -> dict[str, str | None]:
        """Where ``node`` serves ``lu``: its mount point and its NBD URI (None: it does not)."""
        info = self.node_info(node)
        return {"mount": info.get("mount"), "nbd": f"nbd://{info['nbd']}/{lu}" if info.get("nbd") else None}

    def node_info(self, node: str) -> dict[str, Any]:
        """``node``'s registration (nodes/NAME), or just its name when it has none."""
        rec = self.store.get(f"nodes/{node}")
        return json.loads(rec.value) if rec is not None else {"name": node}
