"""The LU catalog: the record of every LU and snapshot in the pool's metadata, and its extent
map, stored in chunks (meta.py has the key layout). Records are read and written inside the
caller's transaction; the journal (journal.py) decides when a change becomes durable.
"""
from __future__ import annotations

import time
from typing import Any, TypedDict, cast

import lmdb

from .errors import AlreadyExists, InvalidArgument, NotFound, PoolCorrupt
from .extents import ExtentMap, extents_for
from .meta import Meta, map_key
from .sizes import format_size, parse_size

#: An LU's map may hold at most this many extents (1 PiB with 1 MiB extents): the directory of
#: a larger map would cost more memory than a command should need.
MAX_LU_EXTENTS = 1 << 30
#: LU sizes are whole sectors.
SECTOR = 512


def check_lu_size(size: int | str, allow_empty: bool = False, extent_size: int | None = None) -> int:
    """``size`` (bytes, or text such as 10G) as an LU size in bytes; InvalidArgument for one that
    is not whole sectors, zero (unless ``allow_empty``), or larger than a map may be."""
    n = parse_size(size, what="LU size", allow_zero=allow_empty)
    if n % SECTOR:
        raise InvalidArgument(f"LU size must be a multiple of {SECTOR} bytes, not {n}")
    if extent_size and extents_for(n, extent_size) > MAX_LU_EXTENTS:
        raise InvalidArgument(
            f"an LU of {format_size(n)} is larger than this pool serves: at most "
            f"{format_size(MAX_LU_EXTENTS * extent_size)} with its {format_size(extent_size)} extents "
            "(an LU's map is held in memory)")
    return n


class LURecord(TypedDict, total=False):
    """One LU, snapshot or clone. ``size`` in bytes; ``allocated`` in extents its map holds;
    ``gen`` counts the commits of its map (read-only handles re-read the map when it moves)."""

    id: int
    name: str
    size: int
    kind: str  # "lu", "snapshot" or "clone"
    parent: str | None  # what a snapshot was taken of, or a clone made from
    allocated: int
    gen: int
    created: float  # seconds since the epoch
    thick: bool
    mirrored: bool
    clones: list[str]  # the clones made of this LU or snapshot (an index: removal asks it)
    role: str  # what a service made it for (paging, image)
    readonly: bool  # sealed by a service
    lpar: str  # the client partition a paging LU serves (records before 2026-12-03 said "owner")
    fence: int  # the highest ownership epoch a writer took (fence.py): older ones commit nothing
    on_fence: str  # its owner's answer to a write it may not make now (fence.ON_FENCE); absent: the mount's


class Catalog:
    """The records and maps of one pool's LUs, ``extent_size`` bytes per extent."""

    def __init__(self, meta: Meta, extent_size: int) -> None:
        self.meta, self.E = meta, extent_size

    def get(self, txn: lmdb.Transaction, name: str, *, missing_ok: bool = False) -> LURecord:
        """The record of ``name``; NotFound (or None with ``missing_ok``) when there is none."""
        # LMDB refuses an empty or over-long key with an error of its own: no such LU either way
        key = name.encode()
        rec = self.meta.lu_record(key, txn.get(key, db=self.meta.db["lus"])) if 0 < len(key) <= 511 else None
        if rec is None and not missing_ok:
            raise NotFound(f"no LU named {name!r}")
        return rec  # type: ignore[return-value]

    def raw(self, txn: lmdb.Transaction, name: str) -> bytes | None:
        """The stored bytes of ``name``'s record, undecoded (None: no such LU): what tells a
        reader cheaply whether the record changed since it last decoded it."""
        key = name.encode()
        raw = txn.get(key, db=self.meta.db["lus"]) if 0 < len(key) <= 511 else None
        return None if raw is None else bytes(raw)

    def snapshots(self, txn: lmdb.Transaction, name: str) -> list[LURecord]:
        """The snapshots of LU ``name``: their keys are ``name@SNAP``, one prefix of the catalog
        (so finding them costs what they are, not what the pool holds)."""
        return [self.meta.lu_record(key, raw)  # type: ignore[misc]
                for key, raw in self.meta.iter_prefix(txn, "lus", name.encode() + b"@")]

    @staticmethod
    def clones(rec: LURecord) -> list[str]:
        """The clones made of ``rec`` (its record keeps their names)."""
        return list(rec.get("clones", []))

    def _relink(self, txn: lmdb.Transaction, parent: str, drop: str | None, add: str | None) -> None:
        """In ``parent``'s list of clones, ``drop`` one name and ``add`` another."""
        rec = self.get(txn, parent, missing_ok=True)
        if rec is None:
            return
        names = [n for n in rec.get("clones", []) if n != drop] + ([add] if add else [])
        rec["clones"] = sorted(set(names))
        self.put(txn, rec)

    def unlink_clone(self, txn: lmdb.Transaction, rec: LURecord) -> None:
        """``rec`` stops being a clone of its parent (flattened, or removed)."""
        if rec["kind"] == "clone" and rec["parent"]:
            self._relink(txn, rec["parent"], rec["name"], None)

    def renamed_clone(self, txn: lmdb.Transaction, parent: str, old: str, new: str) -> None:
        self._relink(txn, parent, old, new)

    def index_clones(self, txn: lmdb.Transaction) -> bool:
        """Make every record's list of clones what the records say (a pool of an earlier
        version has none; ``pool check --repair`` mends a wrong one). Whether anything changed."""
        records = self.all(txn)
        want: dict[str, list[str]] = {r["name"]: [] for r in records}
        for r in records:
            if r["kind"] == "clone" and r["parent"] in want:
                want[str(r["parent"])].append(r["name"])
        changed = False
        for r in records:
            if sorted(r.get("clones", [])) != sorted(want[r["name"]]):
                r["clones"] = sorted(want[r["name"]])
                self.put(txn, r)
                changed = True
        return changed

    def all(self, txn: lmdb.Transaction) -> list[LURecord]:
        return [self.meta.lu_record(key, raw) for key, raw in self.meta.iter_prefix(txn, "lus", b"")]  # type: ignore[misc]

    def put(self, txn: lmdb.Transaction, rec: LURecord) -> None:
        self.meta.put_json(txn, "lus", rec["name"].encode(), rec)

    def new(self, txn: lmdb.Transaction, name: str, size: int, kind: str, parent: str | None,
            **extra: Any) -> LURecord:
        """Add a record with the next LU id and an empty map; AlreadyExists if the name is taken."""
        if self.get(txn, name, missing_ok=True) is not None:
            raise AlreadyExists(f"an LU named {name!r} already exists")
        cfg = self.meta.config(txn)
        lu_id = cfg["next_lu_id"]
        cfg["next_lu_id"] = lu_id + 1
        self.meta.put_json(txn, "config", b"pool", cfg)
        rec = cast(LURecord, {"id": lu_id, "name": name, "size": size, "kind": kind, "parent": parent,
                              "allocated": 0, "gen": 1, "created": time.time(), **extra})
        self.put(txn, rec)
        if kind == "clone" and parent:
            self._relink(txn, parent, None, name)
        return rec

    def remove(self, txn: lmdb.Transaction, rec: LURecord) -> None:
        """Delete a record and its map (and its name from its parent's clones)."""
        self.meta.delete_map(txn, rec["id"])
        txn.delete(rec["name"].encode(), db=self.meta.db["lus"])
        self.unlink_clone(txn, rec)

    def load_map(self, txn: lmdb.Transaction, rec: LURecord) -> ExtentMap:
        """The stored map of ``rec``; PoolCorrupt when it cannot be the map of such an LU."""
        if extents_for(rec["size"], self.E) > MAX_LU_EXTENTS:
            raise PoolCorrupt(f"pool metadata damaged: LU {rec['name']!r} is larger than any LU can be")
        try:
            return ExtentMap.from_chunks(extents_for(rec["size"], self.E), self.meta.map_chunks(txn, rec["id"]),
                                         self.meta.config(txn)["groups"][0]["extents"])
        except ValueError as e:
            raise PoolCorrupt(f"pool metadata damaged: the map of LU {rec['name']!r}: {e}") from None

    def save_map(self, txn: lmdb.Transaction, name: str, emap: ExtentMap, size: int) -> int:
        """Store what changed in ``name``'s map since its last save, with its size and allocated
        count, as the record's next generation (returned)."""
        rec = self.get(txn, name)
        db = self.meta.db["maps"]
        for no, raw in emap.take_dirty():
            if raw is None:
                txn.delete(map_key(rec["id"], no), db=db)
            else:
                txn.put(map_key(rec["id"], no), raw, db=db)
        rec["size"], rec["allocated"], rec["gen"] = size, emap.allocated(), rec["gen"] + 1
        self.put(txn, rec)
        return rec["gen"]

    def copy_map(self, txn: lmdb.Transaction, src: LURecord, dst: LURecord) -> list[bytes]:
        """Give ``dst`` the stored map of ``src`` (chunk for chunk: O(allocated chunks)); returns
        the chunks copied."""
        chunks = list(self.meta.map_chunks(txn, src["id"]))
        db = self.meta.db["maps"]
        for no, raw in chunks:
            txn.put(map_key(dst["id"], no), raw, db=db)
        return [raw for _, raw in chunks]
