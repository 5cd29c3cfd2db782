"""Shared virtual memory: a thin paging LU per client partition (LPAR), of exactly
the minimum capacity asked for, with a redundant LU kept as its real-time copy (a mirrored LU:
every write lands in both failure groups). Partitions, CECs and the node serving each partition
are recorded in the pool.

Migration to another CEC uses the redundant copy: while the source still holds the paging LU,
the target reads it through ``Pool.open_redundant`` (reads redirected to the redundant copy);
the hand-over waits until the source has flushed and let go of the LU, then records the target
as the node that serves it. The LU's holder lock means no two sides ever write it.

In a pool with a cluster, who serves a partition is the cluster's to say, not these records': the
functions take a ``Placement`` (cluster/placement.py), and provisioning and migration are
ownership moves of the paging LU (the graceful move: the source flushes and lets go before the
target writes), and where a partition is served is read from the LU's owner.
"""
from __future__ import annotations

import time
from typing import Any, Protocol

from ..errors import AlreadyExists, Busy, InvalidArgument, NotFound, PoolFull
from ..names import check_name
from ..catalog import SECTOR
from ..pool import Pool
from ..sizes import format_size, parse_size

LOCAL_CEC, LOCAL_NODE = "local", "local"


class Placement(Protocol):
    """Who serves an LU, when a cluster decides it (cluster/placement.py)."""

    def place(self, lu: str, cec: str | None, node: str | None) -> tuple[str | None, str]: ...

    def where(self, lu: str) -> tuple[str | None, str] | None: ...


def lu_name(lpar: str) -> str:
    return f"paging.{lpar}"


# -- CECs ----------------------------------------------------------------------------------------

def add_cec(pool: Pool, cec: str, nodes: list[str]) -> dict[str, Any]:
    check_name(cec, "CEC name")
    for n in nodes:
        check_name(n, "node name")
        owner = find_node(pool, n)
        if owner is not None and owner != cec:
            raise AlreadyExists(f"node {n!r} already belongs to CEC {owner!r}")
    rec = pool.svc_get("cec", cec) or {"name": cec, "nodes": []}
    rec["nodes"] = sorted(set(rec["nodes"]) | set(nodes))
    pool.svc_put("cec", cec, rec)
    return rec


def list_cecs(pool: Pool) -> list[dict[str, Any]]:
    return pool.svc_list("cec")


def find_node(pool: Pool, node: str) -> str | None:
    for cec in list_cecs(pool):
        if node in cec["nodes"]:
            return str(cec["name"])
    return None


def _cec_of(pool: Pool, node: str | None) -> tuple[str, str]:
    if node is None:
        if pool.svc_get("cec", LOCAL_CEC) is None:
            add_cec(pool, LOCAL_CEC, [LOCAL_NODE])
        return LOCAL_CEC, LOCAL_NODE
    cec = find_node(pool, check_name(node, "node name"))
    if cec is None:
        raise NotFound(f"unknown node {node!r}: add it to a CEC first (cec add CEC --node {node})")
    return cec, node


# -- paging LUs ----------------------------------------------------------------------------------

def request(pool: Pool, lpar: str, min_size: int | str, node: str | None = None,
            placement: Placement | None = None) -> dict[str, Any]:
    """Provision (or, asked again, find or grow) the paging LU of ``lpar``. Idempotent: the same
    LU every time; a larger minimum grows it, a smaller one never shrinks it. With a
    ``placement``, the new LU is given to ``node`` (None: the cluster's choice)."""
    check_name(lpar, "LPAR name")
    size = parse_size(min_size, what="minimum size")
    size = -(-size // SECTOR) * SECTOR
    st = pool.status()
    if size > st["capacity"]:
        raise PoolFull(f"a paging file of {format_size(size)} is larger than the pool ({format_size(st['capacity'])})")
    if pool.mirror is None:
        raise InvalidArgument("paging LUs need a redundant copy: the pool has no second failure group "
                              "(pool failgrp add DIR)")
    rec = pool.svc_get("lpar", lpar)
    name = lu_name(lpar)
    if rec is None:
        cec, node_name = _cec_of(pool, node) if placement is None else (None, node)
        pool.create_lu(name, size, mirrored=True).close()
        pool.update_lu(name, role="paging", lpar=lpar)
        if placement is not None:
            try:
                cec, node_name = placement.place(name, None, node)
            except BaseException:
                pool.remove(name)  # refused: the pool is as it was
                raise
        rec = {"name": lpar, "lu": name, "min_size": size, "cec": cec, "node": node_name,
               "state": "active", "created": time.time()}
        pool.svc_put("lpar", lpar, rec)
    elif size > pool.lu_info(name)["size"]:
        pool.resize(name, size)
        rec["min_size"] = size
        pool.svc_put("lpar", lpar, rec)
    return describe(pool, rec, placement)


def describe(pool: Pool, rec: dict[str, Any], placement: Placement | None = None) -> dict[str, Any]:
    """The partition's paging LU; served where the placement says (the LU's owner), else where
    the record says."""
    info = pool.lu_info(rec["lu"])
    cec, node = (rec["cec"], rec["node"]) if placement is None else placement.where(rec["lu"]) or (None, None)
    return {"lpar": rec["name"], "lu": rec["lu"], "size": info["size"], "allocated": info["allocated"],
            "mirror": info.get("mirror", {}).get("state"), "cec": cec, "node": node,
            "state": rec["state"], "migrating_to": rec.get("migrating_to")}


def list_paging(pool: Pool, placement: Placement | None = None) -> list[dict[str, Any]]:
    return [describe(pool, r, placement) for r in pool.svc_list("lpar")]


def release(pool: Pool, lpar: str) -> None:
    """Remove the paging LU and its redundant copy, freeing their extents."""
    rec = pool.svc_get("lpar", check_name(lpar, "LPAR name"))
    if rec is None:
        raise NotFound(f"LPAR {lpar!r} has no paging LU")
    pool.remove(rec["lu"], recursive=True)
    pool.svc_put("lpar", lpar, None)


def migrate(pool: Pool, lpar: str, to_cec: str, node: str | None = None, timeout: float = 30.0,
            placement: Placement | None = None) -> dict[str, Any]:
    """Hand the paging LU of ``lpar`` to ``to_cec``.

    Marks the partition migrating (from then on the target may read the paging data through the
    redundant copy), waits up to ``timeout`` seconds for the source to flush and release the LU,
    and records the target as owner. Nothing the source wrote before the hand-over is lost: it can
    only release the LU through a flush. With a ``placement`` that hand-over is the cluster's
    graceful ownership move to a node up in ``to_cec``.
    """
    rec = pool.svc_get("lpar", check_name(lpar, "LPAR name"))
    if rec is None:
        raise NotFound(f"LPAR {lpar!r} has no paging LU")
    if placement is not None:
        check_name(to_cec, "CEC name")
        now = placement.where(rec["lu"])
        if now is not None and now[0] == to_cec:
            raise InvalidArgument(f"LPAR {lpar!r} is already served by CEC {to_cec!r}")
        cec, new_node = placement.place(rec["lu"], to_cec, node)
        rec.update(cec=cec, node=new_node, state="active", migrating_to=None)
        pool.svc_put("lpar", lpar, rec)
        return describe(pool, rec, placement)
    target = pool.svc_get("cec", check_name(to_cec, "CEC name"))
    if target is None:
        raise NotFound(f"unknown CEC {to_cec!r}")
    if to_cec == rec["cec"]:
        raise InvalidArgument(f"LPAR {lpar!r} is already served by CEC {to_cec!r}")
    if node is not None and node not in target["nodes"]:
        raise NotFound(f"node {node!r} is not in CEC {to_cec!r}")
    new_node = node or (target["nodes"][0] if target["nodes"] else to_cec)
    rec.update(state="migrating", migrating_to=to_cec)
    pool.svc_put("lpar", lpar, rec)
    lu_id = pool.lu_info(rec["lu"])["id"]
    deadline = time.monotonic() + timeout
    while True:
        try:
            holder = pool.liveness.hold_lu(lu_id, f"LU {rec['lu']!r}")
            break
        except Busy:
            if time.monotonic() > deadline:
                rec.update(state="active", migrating_to=None)
                pool.svc_put("lpar", lpar, rec)
                raise Busy(f"the source still holds {rec['lu']!r} after {timeout:.0f}s; migration abandoned") from None
            time.sleep(0.05)
    try:
        rec.update(cec=to_cec, node=new_node, state="active", migrating_to=None)
        pool.svc_put("lpar", lpar, rec)
    finally:
        holder.release()
    return describe(pool, rec)
