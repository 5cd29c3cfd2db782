"""Where a partition's LUs are served, as the cluster decides it: the services' one source of
truth in a pool with a cluster (services/paging.py asks this instead of keeping its own record).

A partition's paging LU is served by the node that owns it (ownership.py), and its CEC is the one
that node registered with (``node start --cec``). Placing an LU in a CEC is an ownership move to a
node that is up in that CEC (the named one, or the one owning fewest LUs): a graceful move, so the
source flushes and lets go before the target writes (moves.py), while the target can already read
the LU through its redundant copy.
"""
from __future__ import annotations

from typing import Any

from ..errors import NotFound
from . import admin


class ClusterPlacement:
    """Placement of LUs on the nodes of the cluster of the pool at ``pool_path``."""

    def __init__(self, pool_path: str) -> None:
        self.pool_path = pool_path

    def _nodes(self) -> list[dict[str, Any]]:
        nodes: list[dict[str, Any]] = admin.status(self.pool_path)["nodes"]
        return nodes

    def has_nodes(self) -> bool:
        """Whether any node was ever started in the cluster (else nothing can serve an LU)."""
        return bool(self._nodes())

    def place(self, lu: str, cec: str | None, node: str | None) -> tuple[str | None, str]:
        """Have ``lu`` served in ``cec`` (None: anywhere) by ``node`` (None: the node up there
        that owns fewest LUs); returns (CEC, node) once the move is done."""
        up = [n for n in self._nodes() if n["state"] == "up" and (cec is None or n["cec"] == cec)]
        if node is not None:
            chosen = next((n for n in up if n["name"] == node), None)
            if chosen is None:
                raise NotFound(f"node {node!r} is not a node up{f' in CEC {cec!r}' if cec else ''}")
        elif not up:
            raise NotFound(f"no node of the cluster is up{f' in CEC {cec!r}' if cec else ''}")
        else:
            chosen = min(up, key=lambda n: (len(n["lus"]), n["name"]))
        admin.assign(self.pool_path, lu, chosen["name"])
        return chosen["cec"], chosen["name"]

    def where(self, lu: str) -> tuple[str | None, str] | None:
        """(CEC, node) serving ``lu`` now; None when no node owns it."""
        for n in self._nodes():
            if lu in n["lus"]:
                return n["cec"], n["name"]
        return None
