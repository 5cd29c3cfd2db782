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

from .errors import PoolCorrupt

FORMAT = 1
DBS = ("config", "lus", "maps", "rc", "free", "resv", "sums", "dirty", "svc", "dedup", "bsums", "mrc")
#: Address space reserved for the metadata; the file grows only as pages are used.
MAP_SIZE = 1 << 38

_MAPKEY = struct.Struct(">QI")
_FGKEY = struct.Struct(">BI")


def map_key(lu_id: int, chunk: int) -> bytes:
    return _MAPKEY.pack(lu_id, chunk)


def fg_key(fg: int, chunk: int) -> bytes:
    return _FGKEY.pack(fg, chunk)


class Meta:
    """The LMDB environment with its named databases; ``read()`` and ``write()`` give transactions."""

    def __init__(self, path: str, *, create: bool = False) -> None:
        try:
            if create:
                os.makedirs(path, mode=0o700, exist_ok=True)
            self.env = lmdb.open(
                path, map_size=MAP_SIZE, max_dbs=len(DBS), subdir=True, create=create,
                readahead=False, meminit=False, max_readers=256, mode=0o600,
            )
            # An explicit transaction: open_db's own one waits for the writer lock holding the GIL.
            with self.env.begin(write=True) as txn:
                # create=True: a pool made before a database existed gets it empty
                self.db = {name: self.env.open_db(name.encode(), txn=txn, create=True) for name in DBS}
        except lmdb.Error as e:
            raise PoolCorrupt(f"pool metadata in {path} cannot be opened: {e}") from None

    @contextmanager
    def read(self) -> Iterator[lmdb.Transaction]:
        with self.env.begin(buffers=False) as txn:
            yield txn

    @contextmanager
    def write(self) -> Iterator[lmdb.Transaction]:
        with self.env.begin(write=True) as txn:
            yield txn

    def close(self) -> None:
        self.env.close()

    # -- typed access, used inside a transaction --------------------------------------------

    def get_json(self, txn: lmdb.Transaction, db: str, key: bytes) -> Any:
        raw = txn.get(key, db=self.db[db])
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise PoolCorrupt(f"pool metadata damaged: bad record {db}/{key!r}") from None

    def put_json(self, txn: lmdb.Transaction, db: str, key: bytes, value: Any) -> None:
        txn.put(key, json.dumps(value, sort_keys=True).encode(), db=self.db[db])

    def config(self, txn: lmdb.Transaction) -> dict[str, Any]:
        cfg = self.get_json(txn, "config", b"pool")
        if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
            raise PoolCorrupt("pool metadata damaged: no valid pool configuration")
        return cfg

    def iter_prefix(self, txn: lmdb.Transaction, db: str, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        cur = txn.cursor(db=self.db[db])
        if not cur.set_range(prefix):
            return
        for key, value in cur:
            if not key.startswith(prefix):
                break
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
        from .extents import CHUNK

        out = np.full(n, fill, dtype=dtype)
        for key, value in self.iter_prefix(txn, db, struct.pack(">B", fg)):
            no = _FGKEY.unpack(key)[1]
            arr = np.unpackbits(np.frombuffer(value, np.uint8), bitorder="little").astype(bool) \
                if db in ("free", "dirty") else np.frombuffer(value, dtype=dtype)
            lo = no * CHUNK
            hi = min(lo + CHUNK, n)
            if hi > lo:
                out[lo:hi] = arr[: hi - lo]
        return out
