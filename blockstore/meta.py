"""The pool's metadata: one LMDB environment under ``POOL/meta`` and its key layout.

Named databases:
  config   b"pool" -> JSON pool config (format, extent_size, extents per failure group, threshold,
           next_lu_id)
  lus      name (utf-8) -> JSON LU record (id, size, kind, parent, allocated, gen, created)
  maps     >QI (lu id, chunk) -> CHUNK uint32 physical extents (extents.py)
  rc       >BI (failure group, chunk) -> CHUNK uint32 reference counts
  mrc      >BI (failure group, chunk) -> CHUNK uint32 references held by mirrored LUs and snapshots
  free     >BI (failure group, chunk) -> CHUNK bits, packed, 1 = free
  resv     "session/fg" (ascii) -> uint32 extents held by a session
  sums     (no longer used: extent-wide checksums of format 1 pools, replaced by bsums)
  bsums    >I physical extent -> uint64 xxh3 per 4 KiB block of a mirrored extent (checksums.py)
  dirty    >BI (copy, chunk) -> CHUNK bits, packed: extents that copy lacks (a degraded mirror)
  svc      "kind/name" -> JSON records of the services (paging LPARs, CECs, images, partitions)
  dedup    xxh3-128 digest of an image extent's bytes -> >I physical extent (a hint, confirmed by
           comparing bytes before an extent is shared)

LMDB gives one writer at a time across processes and readers that never block, and a committed
transaction survives a crash with no recovery step; every multi-key change here is one
transaction, so the metadata is always consistent.
"""
from __future__ import annotations

import json
import os
import struct
from contextlib import contextmanager
from typing import Any, Iterator

import lmdb
import numpy as np

from .errors import BlockstoreError, Busy, NotAPool, PoolCorrupt
from .extents import CHUNK
from .native import SharedWord
from .pooldir import check_owner, for_library, open_file, subdir

FORMAT = 1
DBS = ("config", "lus", "maps", "rc", "free", "resv", "sums", "dirty", "svc", "dedup", "bsums", "mrc")
#: Address space reserved for the metadata; the file grows only as pages are used.
MAP_SIZE = 1 << 38

LU_KINDS = ("lu", "snapshot", "clone")


def _json_object(raw: bytes | memoryview) -> dict[str, Any] | None:
    """A stored JSON object, or None when the bytes are not one (damage, for the caller to name)."""
    try:
        rec = json.loads(bytes(raw))
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _config_problem(cfg: dict[str, Any]) -> str | None:
    """What is wrong with the pool configuration record, or None."""
    es = cfg.get("extent_size")
    if not isinstance(es, int) or not _count(es) or es < 4096 or es & (es - 1):
        return "has no valid extent size"
    groups = cfg.get("groups")
    if not isinstance(groups, list) or not 1 <= len(groups) <= 2 or not all(
            isinstance(g, dict) and _count(g.get("extents")) and isinstance(g.get("path"), str) for g in groups):
        return "has no valid failure groups"
    if not _count(cfg.get("next_lu_id")):
        return "has no valid next LU id"
    t = cfg.get("threshold", 0.8)
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0 < t <= 1:
        return "has no valid threshold"
    return None


def _image_files(v: Any) -> bool:
    return isinstance(v, list) and all(
        isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("handle"), str)
        and isinstance(f.get("size"), int) and not isinstance(f.get("size"), bool) for f in v)


def _strings(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


#: What each kind of service record must hold (field -> accepted types, or a test); every record
#: also carries its own name. Checked on every read, as LU records are.
SVC_SHAPES: dict[str, dict[str, Any]] = {
    "cec": {"nodes": _strings},
    "lpar": {"lu": str, "min_size": int, "cec": str, "node": str, "state": str},
    "image": {"state": str, "files": _image_files},
    "partition": {"image": str, "state": str, "lus": dict, "cec": (str, type(None))},
}

_MAPKEY = struct.Struct(">QI")
#: The length of every key of the databases whose keys are packed numbers.
KEY_LEN = {"maps": 12, "rc": 5, "mrc": 5, "free": 5, "dirty": 5, "bsums": 4}
_FGKEY = struct.Struct(">BI")


def map_key(lu_id: int, chunk: int) -> bytes:
    return _MAPKEY.pack(lu_id, chunk)


def fg_key(fg: int, chunk: int) -> bytes:
    return _FGKEY.pack(fg, chunk)


def meta_dir(pool_path: str) -> str:
    """The metadata directory of the pool at ``pool_path`` (absolute), or the one-line reason there
    is none to use: no such directory, not a directory, not ours to read, not a pool."""
    path = os.path.abspath(pool_path)
    check_owner(path)
    if not os.path.isdir(path):
        raise NotAPool(f"no pool at {path}: " + ("it is not a directory" if os.path.exists(path)
                                                else "directory does not exist"))
    meta = os.path.join(path, "meta")
    if any(os.path.isdir(d) and not os.access(d, os.R_OK | os.X_OK) for d in (path, meta)):
        raise BlockstoreError(f"no access to the pool at {path}: permission denied (a pool is private to its owner)")
    if not os.path.exists(os.path.join(meta, "data.mdb")):
        raise NotAPool(f"{path} is not a blockstore pool (no meta/data.mdb)")
    return meta


class Outdated(BlockstoreError):
    """A read-only open of a pool made before a database existed (a writable open adds it)."""


class Meta:
    """The LMDB environment with its named databases; ``read()`` and ``write()`` give transactions."""

    def __init__(self, path: str, *, create: bool = False, readonly: bool = False) -> None:
        """``readonly``: no write transaction, ever (LMDB's reader table in lock.mdb is all it
        touches); Outdated when the pool lacks a database (only a writable open adds it)."""
        self.readonly = readonly
        root, name = os.path.split(os.path.abspath(path))
        try:
            if create:
                subdir(root, name)
            # LMDB opens its two files by name: refuse a link or a stranger's file there, and let
            # it open them with the pool owner's permissions (pooldir.py)
            with for_library(root, path, ("data.mdb", "lock.mdb")) as where:
                self.env = lmdb.open(
                    where, map_size=MAP_SIZE, max_dbs=len(DBS), subdir=True, create=create,
                    readahead=False, meminit=False, max_readers=256, mode=0o600, readonly=readonly,
                )
            # LMDB reads its file through a mapping and trusts it: a file cut short (a partial copy,
            # a restore that stopped) would be read past its end, a SIGBUS in the middle of a command
            end = (self.env.info()["last_pgno"] + 1) * self.env.stat()["psize"]
            have = os.path.getsize(os.path.join(path, "data.mdb"))
            if have < end:
                self.env.close()
                raise PoolCorrupt(f"pool metadata damaged: {path}/data.mdb holds {have} bytes, its last page "
                                  f"ends at {end}: the file was cut short")
            # For writing, an explicit transaction: open_db's own one waits for the writer lock
            # holding the GIL. For reading, open_db's own (handles opened in a read transaction
            # of ours would not outlive it).
            txn = None if readonly else self.env.begin(write=True)
            try:
                # create=True: a pool made before a database existed gets it empty
                self.db = {name: self._open_db(name, txn) for name in DBS}
            except BaseException:
                if txn is not None:
                    txn.abort()
                self.env.close()
                raise
            if txn is not None:
                txn.commit()
            self.commits = self._commits_word(path)
        except lmdb.Error as e:
            if "already open in this process" in str(e):
                # LMDB's locks belong to the process: a second environment would share, then drop them
                raise Busy(f"the pool at {root} is already open in this process: use that Pool object "
                           f"(or close it first)") from None
            raise PoolCorrupt(f"pool metadata in {path} cannot be opened: {e}") from None

    def _commits_word(self, path: str) -> SharedWord | None:
        """The commit word (``meta/commits``): bumped before and after every write transaction
        of every process on this machine, so a reader can tell without a transaction that nothing
        was committed while it read (the direct path's redirected reads: fastpath.h,
        bs_table_watch). None where it cannot be had (a read-only open of a pool that has none):
        such readers ask the metadata instead."""
        root = os.path.dirname(os.path.abspath(path))
        try:
            fd = open_file(root, os.path.join(path, "commits"), os.O_RDONLY if self.readonly else os.O_RDWR | os.O_CREAT)
        except FileNotFoundError:
            return None
        try:
            if not self.readonly and os.fstat(fd).st_size < 8:
                os.ftruncate(fd, 8)  # zero-filled: two processes doing it at once agree
            elif os.fstat(fd).st_size < 8:
                return None
            return SharedWord(fd, writable=not self.readonly)
        finally:
            os.close(fd)

    def _open_db(self, name: str, txn: lmdb.Transaction | None) -> Any:
        try:
            return self.env.open_db(name.encode(), txn=txn, create=not self.readonly)
        except lmdb.NotFoundError:
            raise Outdated(f"the pool's metadata lacks {name!r}: it needs one writable open") from None

    @contextmanager
    def read(self) -> Iterator[lmdb.Transaction]:
        with self.env.begin(buffers=False) as txn:
            yield txn

    @contextmanager
    def write(self) -> Iterator[lmdb.Transaction]:
        """A write transaction, committed when the block ends without an exception; the commit
        word (``commits``) is bumped inside it, before it commits, and again after."""
        word = self.commits
        try:
            with self.env.begin(write=True) as txn:
                if word is not None:
                    word.bump()
                yield txn
        finally:
            if word is not None:
                word.bump()

    def close(self) -> None:
        self.env.close()

    # -- typed access, used inside a transaction --------------------------------------------

    def get_json(self, txn: lmdb.Transaction, db: str, key: bytes) -> Any:
        raw = txn.get(key, db=self.db[db])
        if raw is None:
            return None
        try:
            return json.loads(bytes(raw))
        except ValueError:
            raise PoolCorrupt(f"pool metadata damaged: bad record {db}/{key!r}") from None

    def put_json(self, txn: lmdb.Transaction, db: str, key: bytes, value: Any) -> None:
        txn.put(key, json.dumps(value, sort_keys=True).encode(), db=self.db[db])

    def lu_record(self, key: bytes, raw: bytes | memoryview | None) -> dict[str, Any] | None:
        """The LU record stored under ``key`` (None if ``raw`` is), or PoolCorrupt saying what is
        wrong with it: every field the engine relies on is checked here, once, so no command
        trips over a damaged record with a KeyError halfway through its work."""
        if raw is None:
            return None
        name = key.decode(errors="replace")
        rec = _json_object(raw)
        if rec is None:
            raise PoolCorrupt(f"pool metadata damaged: LU record {name!r} is not a JSON object")
        if "owner" in rec:  # the partition a paging LU serves, named so before LUs had owning nodes
            rec.setdefault("lpar", rec.pop("owner"))
        problem = None
        for field in ("id", "size", "allocated", "gen"):
            v = rec.get(field)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                problem = f"has no valid {field}"
        if not isinstance(rec.get("created"), (int, float)) or isinstance(rec.get("created"), bool):
            problem = "has no valid created time"
        if rec.get("name") != name:
            problem = "has the wrong name"
        elif rec.get("kind") not in LU_KINDS:
            problem = "has no valid kind"
        elif "parent" not in rec or not (rec["parent"] is None or isinstance(rec["parent"], str)) or \
                (rec["kind"] != "lu" and not isinstance(rec.get("parent"), str)):
            problem = "has no valid parent"
        clones = rec.get("clones", [])
        if not isinstance(clones, list) or not all(isinstance(c, str) for c in clones):
            problem = "has no valid list of clones"
        if problem:
            raise PoolCorrupt(f"pool metadata damaged: LU record {name!r} {problem}")
        return rec

    def svc_record(self, key: bytes, raw: bytes | memoryview | None) -> dict[str, Any] | None:
        """The service record under ``key`` ("kind/name"), checked against SVC_SHAPES like an LU
        record; PoolCorrupt names the record and the field."""
        if raw is None:
            return None
        kind, _, name = key.decode(errors="replace").partition("/")
        rec = _json_object(raw)
        if rec is None or rec.get("name") != name:
            raise PoolCorrupt(f"pool metadata damaged: {kind} record {name!r} is not a record of that name")
        for field, ok in SVC_SHAPES.get(kind, {}).items():
            v = rec.get(field)
            typed = isinstance(ok, (type, tuple))
            if not (isinstance(v, ok) and not isinstance(v, bool) if typed else ok(v)):
                raise PoolCorrupt(f"pool metadata damaged: {kind} record {name!r} has no valid {field}")
        return rec

    def config(self, txn: lmdb.Transaction) -> dict[str, Any]:
        cfg = self.get_json(txn, "config", b"pool")
        if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
            raise PoolCorrupt("pool metadata damaged: no valid pool configuration")
        problem = _config_problem(cfg)
        if problem:
            raise PoolCorrupt(f"pool metadata damaged: the pool configuration {problem}")
        return cfg

    def set_config(self, **fields: Any) -> dict[str, Any]:
        """Set fields of the pool's config in a commit of their own; returns the new config."""
        with self.write() as txn:
            cfg = self.config(txn)
            cfg.update(fields)
            self.put_json(txn, "config", b"pool", cfg)
        return cfg

    def iter_prefix(self, txn: lmdb.Transaction, db: str, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """The records of ``db`` whose keys start with ``prefix``; a key of the wrong length for
        its database is damage (PoolCorrupt), not a struct.error wherever it is unpacked."""
        cur = txn.cursor(db=self.db[db])
        if not cur.set_range(prefix):
            return
        want = KEY_LEN.get(db)
        for key, value in cur:
            key, value = bytes(key), bytes(value)  # bytes already (no buffers asked for): no copy
            if not key.startswith(prefix):
                break
            if want is not None and len(key) != want:
                raise PoolCorrupt(f"pool metadata damaged: a key of {len(key)} bytes in database {db}")
            yield key, value

    def map_chunks(self, txn: lmdb.Transaction, lu_id: int) -> Iterator[tuple[int, bytes]]:
        for key, value in self.iter_prefix(txn, "maps", struct.pack(">Q", lu_id)):
            yield _MAPKEY.unpack(key)[1], value

    def delete_map(self, txn: lmdb.Transaction, lu_id: int) -> None:
        keys = [k for k, _ in self.iter_prefix(txn, "maps", struct.pack(">Q", lu_id))]
        for k in keys:
            txn.delete(k, db=self.db["maps"])

    def fg_array(self, txn: lmdb.Transaction, db: str, fg: int, n: int, dtype: Any, fill: int) -> np.ndarray:
        """A whole per-failure-group array (refcounts or unpacked free bits) of ``n`` entries."""
        out = np.full(n, fill, dtype=dtype)
        bitmap = db in ("free", "dirty")
        size = -(-CHUNK // 8) if bitmap else CHUNK * np.dtype(dtype).itemsize
        for key, value in self.iter_prefix(txn, db, struct.pack(">B", fg)):
            no = _FGKEY.unpack(key)[1]
            if len(value) != size:
                raise PoolCorrupt(f"pool metadata damaged: chunk {no} of {db} holds {len(value)} bytes, not {size}")
            arr = np.unpackbits(np.frombuffer(value, np.uint8), bitorder="little").astype(bool) \
                if bitmap else np.frombuffer(value, dtype=dtype)
            lo = no * CHUNK
            hi = min(lo + CHUNK, n)
            if hi > lo:
                out[lo:hi] = arr[: hi - lo]
        return out


# -- per-extent arrays of a failure group, stored in chunks of CHUNK extents --------------------

def by_chunk(extents: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Group sorted-or-not extent numbers by stored chunk: (chunk, positions in input, offsets)."""
    chunks = extents // CHUNK
    out = []
    for c in np.unique(chunks):
        pos = np.flatnonzero(chunks == c)
        out.append((int(c), pos, (extents[pos] % CHUNK).astype(np.int64)))
    return out


def set_bits(meta: Meta, txn: lmdb.Transaction, dbname: str, fg: int, extents: np.ndarray, value: bool) -> None:
    """Set one bit per extent in a chunked bitmap database (free, dirty) inside ``txn``."""
    db = meta.db[dbname]
    for c, _, off in by_chunk(np.asarray(extents, np.int64)):
        raw = txn.get(fg_key(fg, c), db=db)
        bits = np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little") if raw else np.zeros(CHUNK, np.uint8)
        bits[off] = value
        txn.put(fg_key(fg, c), np.packbits(bits, bitorder="little").tobytes(), db=db)


def store_counts(meta: Meta, txn: lmdb.Transaction, db: str, fg: int, counts: np.ndarray) -> None:
    """Write a whole array of counts (``rc`` or ``mrc``) of failure group ``fg`` inside ``txn``."""
    for c in range(-(-len(counts) // CHUNK)):
        part = counts[c * CHUNK:(c + 1) * CHUNK]
        arr = np.zeros(CHUNK, np.uint32)
        arr[: len(part)] = part
        txn.put(fg_key(fg, c), arr.tobytes(), db=meta.db[db])
