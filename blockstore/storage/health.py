"""The health of a mirror's two copies: one truth for every process of the pool, kept in the
pool's metadata and read inside the transaction that acts on it.

Per copy, a state and a dirty bitmap (the extents the copy lacks):

- ``ok``: in service and lacking nothing; reads may come from it.
- ``failed``: out of service for every process: nothing reads or writes it, and every write that
  it misses marks the extent in its bitmap before the write is acknowledged. A process that
  fails a copy records it here at once; the others follow at their next commit (and at the open
  of an LU), in the same transaction that records what they wrote without it.
- ``resyncing``: back in service for writes (every process writes it again) but still lacking
  what its bitmap names, so reads never come from it; ``resync`` copies those extents and, when
  the bitmap is empty, makes the copy ``ok``.

Only a resync clears bits, and a resync copies an extent only where nobody else can write it
(the LU is held by the resyncing process, or the extent is a snapshot's, or free); every clear
bumps ``cleared``, so a process that remembers which bits it has set (to spare a commit per
write) forgets them when another process may have cleared one.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import PoolCorrupt
from ..extents import CHUNK
from ..meta import fg_key, set_bits

if TYPE_CHECKING:
    import lmdb

    from ..meta import Meta

OK, FAILED, RESYNCING = "ok", "failed", "resyncing"
STATES = (OK, FAILED, RESYNCING)
_KEY = b"copies"


class CopyHealth:
    """The state and the dirty bitmap of each copy of one pool's mirror, in ``meta``."""

    def __init__(self, meta: "Meta") -> None:
        self.meta = meta

    # -- the states ---------------------------------------------------------------------------

    def record(self, txn: "lmdb.Transaction") -> dict[str, Any]:
        """``{"states": [s0, s1], "why": [w0, w1], "cleared": n}`` (every copy ok by default)."""
        rec = self.meta.get_json(txn, "config", _KEY)
        if rec is None:
            return {"states": [OK, OK], "why": [None, None], "cleared": 0}
        if not isinstance(rec, dict) or not isinstance(rec.get("states"), list) or len(rec["states"]) != 2 \
                or any(s not in STATES for s in rec["states"]):
            raise PoolCorrupt("pool metadata damaged: the record of the mirror's copies is not valid")
        return rec

    def states(self, txn: "lmdb.Transaction") -> list[str]:
        return list(self.record(txn)["states"])

    def set_state(self, txn: "lmdb.Transaction", copy: int, state: str, why: str | None = None) -> None:
        rec = self.record(txn)
        rec["states"][copy], rec["why"][copy] = state, why
        self.meta.put_json(txn, "config", _KEY, rec)

    def cleared(self, txn: "lmdb.Transaction") -> int:
        return int(self.record(txn).get("cleared", 0))

    # -- the bitmaps --------------------------------------------------------------------------

    def add(self, copy: int, extents: "list[int] | np.ndarray", txn: "lmdb.Transaction | None" = None) -> None:
        """Record that ``copy`` lacks ``extents``, durably (in a commit of its own unless ``txn``)."""
        if txn is None:
            with self.meta.write() as own:
                self.add(copy, extents, own)
            return
        set_bits(self.meta, txn, "dirty", copy, np.asarray(extents, np.int64), True)

    def clear(self, txn: "lmdb.Transaction", copy: int, extents: np.ndarray) -> None:
        """``copy`` has ``extents`` now (a resync copied them); counted in ``cleared``."""
        if not len(extents):
            return
        set_bits(self.meta, txn, "dirty", copy, np.asarray(extents, np.int64), False)
        rec = self.record(txn)
        rec["cleared"] = int(rec.get("cleared", 0)) + 1
        self.meta.put_json(txn, "config", _KEY, rec)

    def load(self, txn: "lmdb.Transaction", copy: int) -> np.ndarray:
        """The bitmap of ``copy`` (bool per extent)."""
        n = self.meta.config(txn)["groups"][0]["extents"]
        return self.meta.fg_array(txn, "dirty", copy, n, bool, 0)

    def lacks(self, txn: "lmdb.Transaction", copy: int, first: int, last: int) -> bool:
        """Whether ``copy`` is out of service or lacks any extent from ``first`` to ``last``."""
        if self.states(txn)[copy] == FAILED:
            return True
        for c in range(first // CHUNK, last // CHUNK + 1):  # only the bitmap's chunks in range
            raw = txn.get(fg_key(copy, c), db=self.meta.db["dirty"])
            if raw is None:
                continue
            bits = np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little")
            lo, hi = max(first - c * CHUNK, 0), min(last - c * CHUNK, CHUNK - 1)
            if bits[lo:hi + 1].any():
                return True
        return False
