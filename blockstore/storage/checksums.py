"""Checksums of mirrored data: what they are, where they live, and how two copies are judged.

A mirrored physical extent has one record: a uint64 xxh3-64 per ``BLOCK`` bytes (4 KiB: a page,
the usual file system block and the smallest common write, so an aligned write never has to read
anything to checksum it). The checksum of a block is taken from the buffer the client wrote, in
C beside the write (native ``bs_pwrite2``), never from a copy read back: a copy that went bad
before a write cannot bake its damage into the record.

A record lives exactly as long as the extent's data in a mirrored LU: it is written in the
commit that makes the data durable (the flush), and deleted in the commit that frees the extent
or takes the last mirrored LU off it (unmirror, remove). Unmirrored LUs carry no checksums: with
one copy there is nothing to repair from, and their writes take the C direct path.

0 in a record means "no checksum" (a hash that comes out 0 is stored as 1).
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

import lmdb
import numpy as np

from ..errors import PoolCorrupt
from ..native import SUM_BLOCK, sum_blocks

if TYPE_CHECKING:
    from ..meta import Meta

BLOCK = SUM_BLOCK
_KEY = struct.Struct(">I")


class SumStore:
    """The checksum records in the pool's metadata (database ``bsums``, key: physical extent)."""

    def __init__(self, meta: "Meta", extent_size: int) -> None:
        self.meta = meta
        self.blocks = extent_size // BLOCK

    def get(self, txn: lmdb.Transaction, ext: int) -> np.ndarray | None:
        raw = txn.get(_KEY.pack(ext), db=self.meta.db["bsums"])
        if raw is not None and len(raw) != 8 * self.blocks:
            raise PoolCorrupt(f"pool metadata damaged: the checksum record of extent {ext} holds {len(raw)} bytes")
        return None if raw is None else np.frombuffer(raw, np.uint64).copy()

    def load(self, ext: int) -> np.ndarray | None:
        """The committed record of ``ext`` (a read transaction of its own)."""
        with self.meta.read() as txn:
            return self.get(txn, ext)

    def put(self, txn: lmdb.Transaction, ext: int, sums: np.ndarray) -> None:
        txn.put(_KEY.pack(ext), np.ascontiguousarray(sums, np.uint64).tobytes(), db=self.meta.db["bsums"])

    def delete(self, txn: lmdb.Transaction, extents: "np.ndarray | list[int]") -> None:
        db = self.meta.db["bsums"]
        for e in np.asarray(extents, np.int64).tolist():
            txn.delete(_KEY.pack(e), db=db)

    def extents(self, txn: lmdb.Transaction) -> np.ndarray:
        """Every physical extent that has a record, ascending."""
        keys = list(txn.cursor(db=self.meta.db["bsums"]).iternext(keys=True, values=False))
        if any(len(k) != _KEY.size for k in keys):
            raise PoolCorrupt("pool metadata damaged: a checksum record's key is not an extent number")
        return np.array([_KEY.unpack(k)[0] for k in keys], np.int64)


def judge(h0: np.ndarray | None, h1: np.ndarray | None, rec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which copy of each block is good, given the blocks' hashes in each live copy (None: the
    copy is missing) and the recorded checksums (0: none). Returns (good0, good1), bool per block.

    A copy is good where it matches the record. Without a record, copies that agree are both good
    (nothing says otherwise) and copies that differ are both unproven: repair needs proof.
    """
    known = rec != 0
    g0 = np.zeros(len(rec), bool) if h0 is None else np.where(known, h0 == rec, True if h1 is None else h0 == h1)
    g1 = np.zeros(len(rec), bool) if h1 is None else np.where(known, h1 == rec, True if h0 is None else h0 == h1)
    return g0, g1


def settle(h0: np.ndarray | None, h1: np.ndarray | None, rec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """After a crash, for blocks that may have had writes in flight: which way to copy, and the
    record that then holds. Returns (direction, new record): direction per block is 0 (copies
    agree), 1 (copy 0 -> copy 1) or 2 (copy 1 -> copy 0).

    Data written since the last flush was never promised, so any one whole version of a block
    will do, as long as both copies end up holding it and the record describes it. Each copy
    holds the last flushed version or a later one (a write reaches the primary first, then the
    other, and a flush syncs both), so any choice keeps every promise; the record only breaks
    ties: a copy that matches it wins (it may be older than the last flushed version, whose
    checksums a flush of the LU's own may have left in memory: such a copy then holds a later
    write of the same bytes); copies that agree with each other both took a later write, which
    is kept; with neither, the primary's.
    """
    n = len(rec)
    direction = np.zeros(n, np.int8)
    if h0 is None or h1 is None:  # one copy: it is the truth; the other is resynced from it
        only = h1 if h0 is None else h0
        assert only is not None
        return direction, only.copy()
    new = rec.copy()
    same = h0 == h1
    new[same] = h0[same]
    diff = ~same
    take1 = diff & (h1 == rec) & (rec != 0)
    direction[diff] = 1
    direction[take1] = 2
    new[diff & ~take1] = h0[diff & ~take1]
    return direction, new


__all__ = ["BLOCK", "SumStore", "judge", "settle", "sum_blocks"]
