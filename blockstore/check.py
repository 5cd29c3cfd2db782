"""``pool check``: verify every metadata invariant against one committed state, and repair.

Result codes (a contract scripts may rely on, in the manner of ``qemu-img check``):
  0  clean
  3  leaks only: extents or records nothing uses; ``--repair`` reclaims them safely
  4  corruption: the metadata contradicts itself (an extent in use but marked free, a count
     lower than its references, a map entry out of range or used twice in one map), or a data
     file is there but damaged (its label, or cut short), named in ``errors``
  5  degraded: the metadata is sound but a copy of the mirror is out of service or lacks
     extents (``degraded`` says which; ``pool resync`` or ``pool failgrp replace`` mends it)
(1 and 2 stay the CLI's codes for a refused request and a usage error.)

Repair recomputes reference counts from the maps, rebuilds the free bitmap from them and the
live sessions' reservations, and drops dead reservations, orphaned map chunks and checksum
records of data that is not mirrored; mirrored extents without checksums get them from their
copies (as the pool's settling does after a crash). It never changes a map, so no LU's data changes.
"""
from __future__ import annotations

import json
import os
import struct
from typing import TYPE_CHECKING, Any

import lmdb
import numpy as np

from .allocator import read_resv, resv_owner, set_free
from .meta import store_counts
from .extents import CHUNK, UNMAPPED, extents_for
from .errors import PoolCorrupt
from .storage import recovery

if TYPE_CHECKING:
    from .meta import Meta
    from .pool import Pool

CLEAN, LEAKS, CORRUPT, DEGRADED = 0, 3, 4, 5


def groups_verdict(rows: list[dict[str, Any]]) -> tuple[int, list[str], list[str]]:
    """The failure groups (``Pool.failure_groups``) judged: (code, damage, degradation). A data
    file that is there but not a whole file of this pool (its label or length wrong) is damage
    (CORRUPT); a copy out of service, or lacking extents, is DEGRADED; else CLEAN."""
    damage = [f"failure group {r['group']}: {r['problem']}" for r in rows if r.get("damaged")]
    degraded = [f"failure group {r['group']} ({r['path']}) is {r['state']}"
                + (f", {r['dirty_extents']} extent(s) to resync" if r["dirty_extents"] else "")
                for r in rows if not r.get("damaged") and (r["state"] != "ok" or r["dirty_extents"])]
    return (CORRUPT if damage else DEGRADED if degraded else CLEAN), damage, degraded


def _scan(pool: "Pool", txn: lmdb.Transaction) -> dict[str, Any]:
    meta, E = pool.meta, pool.extent_size
    cfg = meta.config(txn)
    errors: list[str] = []
    leaks: list[str] = []
    n = cfg["groups"][0]["extents"]
    refs = np.zeros(n, np.int64)
    mrefs = np.zeros(n, np.int64)
    records: list[dict[str, Any]] = []
    damaged: list[bytes] = []
    relink: list[dict[str, Any]] = []
    for key, raw in meta.iter_prefix(txn, "lus", b""):
        try:
            rec = meta.lu_record(key, raw)
            if rec is not None:
                records.append(rec)
        except PoolCorrupt as e:
            rec = _relinked(meta, key, raw)
            if rec is not None:
                records.append(rec)
                relink.append(rec)
                errors.append(f"snapshot {rec['name']!r} has lost the link to its LU (its name gives it back)")
                continue
            damaged.append(key)
            errors.append(str(e).removeprefix("pool metadata damaged: "))
    ids = {r["id"] for r in records}
    names = {r["name"] for r in records}
    # each record lists its clones (an index removal relies on): it must say what the records say
    kids: dict[str, set[str]] = {r["name"]: set() for r in records}
    for r in records:
        if r["kind"] == "clone" and r["parent"] in kids:
            kids[r["parent"]].add(r["name"])
    wrong = [r["name"] for r in records if set(r.get("clones", [])) != kids[r["name"]]]
    if wrong:
        errors.append(f"{len(wrong)} LU record(s) list their clones wrongly ({', '.join(sorted(wrong)[:5])}); "
                      "--repair rebuilds the lists from the records")
    for r in records:
        chunks = []
        for no, raw in meta.map_chunks(txn, r["id"]):
            if len(raw) != 4 * CHUNK:
                damaged.append(r["name"].encode())
                errors.append(f"LU {r['name']!r}: map chunk {no} holds {len(raw)} bytes, not {4 * CHUNK}")
            else:
                chunks.append((no, raw))
        want = extents_for(r["size"], E)
        phys = [np.frombuffer(raw, np.uint32)[: max(0, min(CHUNK, want - no * CHUNK))] for no, raw in chunks]
        beyond = [no for no, raw in chunks if no * CHUNK >= want]
        tail_junk = any((np.frombuffer(raw, np.uint32)[max(0, want - no * CHUNK):] != UNMAPPED).any()
                        for no, raw in chunks if no * CHUNK < want < (no + 1) * CHUNK)
        if beyond or tail_junk:
            errors.append(f"LU {r['name']!r}: map entries past its size")
        mapped = np.concatenate(phys)[np.concatenate(phys) != UNMAPPED] if phys else np.zeros(0, np.uint32)
        if (mapped >= n).any():
            errors.append(f"LU {r['name']!r}: {int((mapped >= n).sum())} map entries outside the pool")
            mapped = mapped[mapped < n]
        if len(np.unique(mapped)) != len(mapped):
            errors.append(f"LU {r['name']!r}: a physical extent is mapped twice in one map")
        if len(mapped) != r.get("allocated", -1):
            leaks.append(f"LU {r['name']!r}: record says {r.get('allocated')} extents, map has {len(mapped)}")
        np.add.at(refs, mapped.astype(np.int64), 1)
        if r.get("mirrored"):
            np.add.at(mrefs, mapped.astype(np.int64), 1)
        if r["kind"] in ("snapshot", "clone") and r["parent"] is not None:
            parent = r["parent"]
            if parent not in names:
                errors.append(f"LU {r['name']!r}: parent {parent!r} does not exist")
    orphan_keys = []
    for key, _ in meta.iter_prefix(txn, "maps", b""):
        if struct.unpack(">QI", key)[0] not in ids:
            orphan_keys.append(key)
    if orphan_keys:
        leaks.append(f"{len(orphan_keys)} map chunk(s) belong to no LU")
    rc = meta.fg_array(txn, "rc", 0, n, np.uint32, 0).astype(np.int64)
    free = meta.fg_array(txn, "free", 0, n, bool, 0)
    low = np.flatnonzero(rc < refs)
    high = np.flatnonzero(rc > refs)
    if len(low):
        errors.append(f"{len(low)} extent(s) have a reference count lower than their references")
    if len(high):
        leaks.append(f"{len(high)} extent(s) have a reference count higher than their references")
    live = np.zeros(n, bool)
    reclaimable = np.zeros(n, bool)  # held by sessions that died: the next writable open returns them
    dead_keys = []
    owner = np.zeros(n, np.int64)
    for key, _ in list(meta.iter_prefix(txn, "resv", b"")):
        session, _ = resv_owner(key)
        held = read_resv(txn, meta, key)
        held = held[held < n]
        alive = session == pool.session or pool.liveness.session_alive(session)
        if alive:
            live[held] = True
            np.add.at(owner, held, 1)
        else:
            dead_keys.append(key)
            reclaimable[held[rc[held] == 0]] = True
    if (owner > 1).any():
        errors.append(f"{int((owner > 1).sum())} extent(s) are reserved by two sessions")
    in_use_free = np.flatnonzero(free & (refs > 0))
    if len(in_use_free):
        errors.append(f"{len(in_use_free)} extent(s) in use are marked free")
    if (free & live).any():
        errors.append(f"{int((free & live).sum())} reserved extent(s) are marked free")
    if (live & (refs > 0)).any():
        errors.append(f"{int((live & (refs > 0)).sum())} reserved extent(s) are also in use")
    lost = np.flatnonzero(~free & (refs == 0) & ~live & ~reclaimable)
    if len(lost):
        leaks.append(f"{len(lost)} extent(s) are neither free, used nor reserved (leaked)")
    mrc = meta.fg_array(txn, "mrc", 0, n, np.uint32, 0).astype(np.int64)
    if (mrc != mrefs).any():
        leaks.append(f"{int((mrc != mrefs).sum())} extent(s) have a wrong count of mirrored references")
    mirrored = mrefs > 0
    # A checksum record lives exactly as long as mirrored data it describes (checksums.py).
    have = pool.sums.extents(txn)
    stray = have[(have >= n) | ~mirrored[np.minimum(have, max(n - 1, 0))]] if n else have
    if len(stray):
        leaks.append(f"{len(stray)} checksum record(s) describe no mirrored data")
    unsummed = np.setdiff1d(np.flatnonzero(mirrored), have) if len(cfg["groups"]) > 1 else np.zeros(0, np.int64)
    if len(unsummed):
        leaks.append(f"{len(unsummed)} mirrored extent(s) have no checksum record")
    return {"errors": errors, "leaks": leaks, "refs": refs, "mrefs": mrefs, "live": live, "n": n,
            "damaged": damaged, "relink": relink,
            "stray": stray, "unsummed": unsummed,
            "dead_keys": dead_keys, "reclaimable": int(np.count_nonzero(reclaimable)),
            "orphan_keys": orphan_keys, "lus": len(records),
            "allocated_extents": int(np.count_nonzero(refs))}


def check(pool: "Pool", *, repair: bool = False) -> dict[str, Any]:
    """Check (and with ``repair``, fix what is safe to fix); returns the report with ``code``."""
    with pool.lock:
        pool.flush()
        try:
            with pool.meta.read() as txn:
                found = _scan(pool, txn)
        except (PoolCorrupt, lmdb.Error) as e:
            # unreadable beyond one record (the configuration, LMDB's own pages): nothing to count
            return {"code": CORRUPT, "clean": False, "errors": [f"{type(e).__name__}: {e}"], "leaks": [],
                    "degraded": [], "repaired": [], "not_repaired": "the metadata cannot be read", "lus": None,
                    "allocated_extents": None}
        repaired: list[str] = []
        refused = None
        if repair and found["damaged"]:
            # Counts rebuilt without a damaged LU's map would free the extents it holds: its data
            # would be lost to the next allocation. Nothing is changed; the damage is reported.
            refused = "damaged LU records or maps: repairing the counts would free their data"
        elif repair and (found["leaks"] or found["errors"]):
            with pool.meta.write() as txn:
                found = _scan(pool, txn)
                _repair(pool, txn, found)
            repaired = found["leaks"] + found["errors"]
            with pool.meta.read() as txn:
                found = _scan(pool, txn)
    _, damage, degraded = groups_verdict(pool.failure_groups())
    errors = found["errors"] + damage
    code = CORRUPT if errors else DEGRADED if degraded else LEAKS if found["leaks"] else CLEAN
    report = {"code": code, "clean": code == CLEAN, "errors": errors, "leaks": found["leaks"],
              "degraded": degraded, "repaired": repaired, "lus": found["lus"],
              "allocated_extents": found["allocated_extents"], "reclaimable": found["reclaimable"]}
    if refused:
        report["not_repaired"] = refused
    return report


def _relinked(meta: "Meta", key: bytes, raw: bytes) -> dict[str, Any] | None:
    """A snapshot record whose one fault is a lost parent (a flatten of a snapshot wrote such
    records before it was refused), with the parent its name ``LU@SNAP`` proves; else None."""
    name = key.decode(errors="replace")
    try:
        rec = json.loads(bytes(raw))
    except ValueError:
        return None
    if not isinstance(rec, dict) or rec.get("kind") != "snapshot" or rec.get("parent") is not None or "@" not in name:
        return None
    rec["parent"] = name.split("@", 1)[0]
    try:
        return meta.lu_record(key, json.dumps(rec).encode())
    except PoolCorrupt:
        return None


def _repair(pool: "Pool", txn: lmdb.Transaction, found: dict[str, Any]) -> None:
    meta, refs, live = pool.meta, found["refs"], found["live"]
    for rec in found["relink"]:
        meta.put_json(txn, "lus", rec["name"].encode(), rec)
    pool.catalog.index_clones(txn)
    store_counts(meta, txn, "rc", 0, refs)
    store_counts(meta, txn, "mrc", 0, found["mrefs"])
    should_free = np.flatnonzero((refs == 0) & ~live)
    in_use = np.flatnonzero((refs > 0) | live)
    set_free(meta, txn, 0, should_free, True)
    set_free(meta, txn, 0, in_use, False)
    for key in found["dead_keys"]:
        txn.delete(key, db=meta.db["resv"])
    for key in found["orphan_keys"]:
        txn.delete(key, db=meta.db["maps"])
    pool.sums.delete(txn, found["stray"])
    if len(found["unsummed"]) and pool.mirror is not None:
        recovery.adopt(pool.mirror, pool.sums, txn, found["unsummed"])
    for r in pool.records(txn):
        mapped = sum(int(np.count_nonzero(np.frombuffer(raw, np.uint32) != UNMAPPED))
                     for _, raw in meta.map_chunks(txn, r["id"]))
        if r.get("allocated") != mapped:
            r["allocated"] = mapped
            meta.put_json(txn, "lus", r["name"].encode(), r)
