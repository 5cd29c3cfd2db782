"""Extent allocation and reference counts for one failure group.

Persisted state (see meta.py): ``rc`` (uint32 reference count per physical extent), ``mrc`` (the
part of it that mirrored LUs and snapshots hold), ``free`` (one bit per extent, 1 = free) and
``resv`` (extents a pool session holds but no map references).
Invariants after every commit: ``free[e] == (rc[e] == 0 and e is in no reservation)``; an extent
has a checksum record (checksums.py) exactly while ``mrc[e] > 0``.

Crash safety comes from the order of things:
- a session takes free extents in batches, recording them as its reservation in one commit, so
  a write never needs a metadata commit of its own; a crash leaves the reservation of a dead
  session, which the next pool open (or ``pool check --repair``) returns to the free bitmap;
- reference-count changes are kept in memory and applied, as deltas against the stored counts,
  in the same transaction that stores the maps that caused them;
- an extent whose count drops to zero goes into the session's reservation, not straight to the
  free bitmap: it is punched (its data dropped) only after the commit that unreferenced it is
  durable, and only then may it be handed out again. So an extent that a committed map still
  references is never overwritten or punched.
"""
from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

import lmdb
import numpy as np

from .storage import Store
from .errors import PoolCorrupt, PoolFull
from .extents import CHUNK, runs
from .meta import Meta, by_chunk, fg_key, set_bits
from .sizes import format_size

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger("blockstore")

#: Bytes taken from the free bitmap per reservation commit.
BATCH_BYTES = 64 << 20
#: Clean extents a session keeps in hand after freeing; the rest go back to the free bitmap.
KEEP_BATCHES = 2


def resv_key(session: str, fg: int) -> bytes:
    return f"{session}/{fg}".encode()


def set_free(meta: Meta, txn: lmdb.Transaction, fg: int, extents: np.ndarray, value: bool) -> None:
    """Set the free bits of ``extents`` to ``value`` inside ``txn``."""
    set_bits(meta, txn, "free", fg, extents, value)


def init_free(meta: Meta, txn: lmdb.Transaction, fg: int, first: int, last: int) -> None:
    """Mark extents ``[first, last)`` free (a new pool, or the new tail of a grown one)."""
    set_free(meta, txn, fg, np.arange(first, last, dtype=np.int64), True)


def read_resv(txn: lmdb.Transaction, meta: Meta, key: bytes) -> np.ndarray:
    raw = txn.get(key, db=meta.db["resv"])
    if raw and len(raw) % 4:
        raise PoolCorrupt(f"pool metadata damaged: the reservation {key!r} holds {len(raw)} bytes")
    return np.frombuffer(raw, np.uint32).astype(np.int64) if raw else np.zeros(0, np.int64)


def resv_owner(key: bytes) -> tuple[str, int]:
    """(session, failure group) of a reservation key ``SESSION/FG``."""
    m = re.fullmatch(rb"([0-9a-f]{1,64})/([01])", key)
    if m is None:
        raise PoolCorrupt(f"pool metadata damaged: a reservation key {key!r}")
    return m.group(1).decode(), int(m.group(2))


class Allocator:
    """Hands out extents of failure group ``fg`` to one pool session and keeps their counts."""

    def __init__(self, meta: Meta, fg: int, session: str, datafile: Store, extent_size: int,
                 on_usage: "Callable[[float], None] | None" = None) -> None:
        self.meta, self.fg, self.session, self.df, self.E = meta, fg, session, datafile, extent_size
        self.batch = max(16, min(4096, BATCH_BYTES // extent_size))
        self._key = resv_key(session, fg)
        self._local: list[int] = []   # clean reserved extents, popped from the end
        self._used: list[int] = []    # taken from the reservation since the last commit
        self._inc: list[int] = []
        self._dec: list[int] = []
        self._minc: list[int] = []  # the same, for references held by mirrored LUs
        self._mdec: list[int] = []
        #: After ``commit``: extents whose mirrored count fell to zero in it.
        self.unmirrored = np.zeros(0, np.int64)
        self._on_usage = on_usage
        #: Bumped whenever unreferenced extents are punched for reuse (lock-free readers check it).
        self.recycled = 0

    # -- the write path --------------------------------------------------------------------

    def ensure(self, n: int) -> None:
        """Have ``n`` extents in hand, so a write that needs them cannot fail half-way."""
        if len(self._local) < n:
            self._reserve(n - len(self._local))

    def take(self) -> int:
        """A clean extent no map references; the caller maps it (ref) or it returns at commit."""
        if not self._local:
            self._reserve(1)
        e = self._local.pop()
        self._used.append(e)
        return e

    def ref(self, e: int, mirrored: bool = False) -> None:
        """One more reference to ``e`` (held by a mirrored LU: ``mirrored``)."""
        self._inc.append(e)
        if mirrored:
            self._minc.append(e)

    def unref(self, e: int, mirrored: bool = False) -> None:
        self._dec.append(e)
        if mirrored:
            self._mdec.append(e)

    def unref_many(self, extents: np.ndarray, mirrored: bool = False) -> None:
        ext = np.asarray(extents, np.int64).tolist()
        self._dec.extend(ext)
        if mirrored:
            self._mdec.extend(ext)

    def ref_many(self, extents: np.ndarray, mirrored: bool = False) -> None:
        ext = np.asarray(extents, np.int64).tolist()
        self._inc.extend(ext)
        if mirrored:
            self._minc.extend(ext)

    def set_mirrored_refs(self, extents: np.ndarray, on: bool) -> None:
        """References that stay but become (or stop being) a mirrored LU's: mirror, unmirror."""
        (self._minc if on else self._mdec).extend(np.asarray(extents, np.int64).tolist())

    def marks(self) -> tuple[int, int, int, int]:
        """Where the pending count changes end now (for ``truncate_pending``)."""
        return len(self._inc), len(self._dec), len(self._minc), len(self._mdec)

    def truncate_pending(self, n_inc: int, n_dec: int, n_minc: int, n_mdec: int) -> None:
        """Forget count changes recorded after ``marks`` gave these numbers (a failed commit)."""
        del self._inc[n_inc:], self._dec[n_dec:], self._minc[n_minc:], self._mdec[n_mdec:]

    @property
    def pending(self) -> bool:
        return bool(self._inc or self._dec or self._used or self._minc or self._mdec)

    # -- persisted state ---------------------------------------------------------------------

    def n_extents(self, txn: lmdb.Transaction) -> int:
        return int(self.meta.config(txn)["groups"][self.fg]["extents"])

    def refcounts(self, txn: lmdb.Transaction, db: str = "rc") -> np.ndarray:
        """Every extent's count: all references (``rc``) or mirrored LUs' (``mrc``)."""
        return self.meta.fg_array(txn, db, self.fg, self.n_extents(txn), np.uint32, 0)

    def counts_of(self, txn: lmdb.Transaction, extents: np.ndarray, db: str = "mrc") -> np.ndarray:
        """The counts of some extents, reading only the chunks that hold them."""
        out = np.zeros(len(extents), np.int64)
        for c, pos, off in by_chunk(np.asarray(extents, np.int64)):
            raw = txn.get(fg_key(self.fg, c), db=self.meta.db[db])
            if raw:
                out[pos] = np.frombuffer(raw, np.uint32)[off]
        return out

    def _reserve(self, need: int) -> None:
        with self.meta.write() as txn:
            n = self.n_extents(txn)
            free = self.meta.fg_array(txn, "free", self.fg, n, bool, 0)
            cand = np.flatnonzero(free)
            if len(cand) < need:
                raise PoolFull(
                    f"pool is full: {need} more extent(s) of {format_size(self.E)} needed, "
                    f"{len(cand)} free"
                )
            # Never hold more than a sixteenth of what is free beyond the need: other sessions
            # (processes) allocate from the same bitmap.
            got = cand[: max(need, min(self.batch, len(cand) // 16))]
            set_free(self.meta, txn, self.fg, got, False)
            held = np.concatenate([read_resv(txn, self.meta, self._key), got])
            txn.put(self._key, held.astype(np.uint32).tobytes(), db=self.meta.db["resv"])
        self._local.extend(got[::-1].tolist())
        if self._on_usage:
            self._on_usage(1.0 - (len(cand) - len(got)) / max(n, 1))

    def apply(self, txn: lmdb.Transaction, inc: np.ndarray, dec: np.ndarray, db: str = "rc") -> np.ndarray:
        """Add ``+1`` per entry of ``inc`` and ``-1`` per entry of ``dec`` to the stored counts
        (``db``: ``rc``, or ``mrc`` for mirrored LUs' references).

        Returns the extents whose count fell to zero; the caller must hold them in a reservation
        (``commit`` does) until they are punched.
        """
        allx = np.concatenate([np.asarray(inc, np.int64), np.asarray(dec, np.int64)])
        if len(allx) == 0:
            return np.zeros(0, np.int64)
        sign = np.concatenate([np.ones(len(inc), np.int64), -np.ones(len(dec), np.int64)])
        ext, inv = np.unique(allx, return_inverse=True)
        delta = np.zeros(len(ext), np.int64)
        np.add.at(delta, inv, sign)
        keep = delta != 0
        ext, delta = ext[keep], delta[keep]
        name, handle = db, self.meta.db[db]
        freed = [np.zeros(0, np.int64)]
        for c, pos, off in by_chunk(ext):
            raw = txn.get(fg_key(self.fg, c), db=handle)
            rc = np.frombuffer(raw, np.uint32).astype(np.int64) if raw else np.zeros(CHUNK, np.int64)
            before = rc[off].copy()
            rc[off] += delta[pos]
            if (rc[off] < 0).any():
                raise PoolCorrupt(f"reference count ({name}) underflow in failure group {self.fg}")
            txn.put(fg_key(self.fg, c), rc.astype(np.uint32).tobytes(), db=handle)
            freed.append(ext[pos][(before > 0) & (rc[off] == 0)])
        return np.concatenate(freed)

    def commit(self, txn: lmdb.Transaction, extra_freed: np.ndarray | None = None) -> np.ndarray:
        """Store the pending count changes in ``txn``; return the extents to punch after commit."""
        freed = self.apply(txn, np.array(self._inc, np.int64), np.array(self._dec, np.int64))
        self.unmirrored = self.apply(txn, np.array(self._minc, np.int64), np.array(self._mdec, np.int64), "mrc")
        used = np.array(self._used, np.int64)
        if len(used):
            rc = self.refcounts(txn)
            used_unreferenced = used[rc[used] == 0]
        else:
            used_unreferenced = used
        parts = [freed, used_unreferenced] + ([extra_freed] if extra_freed is not None else [])
        to_punch = np.unique(np.concatenate(parts))
        held = np.concatenate([np.array(self._local, np.int64), to_punch])
        txn.put(self._key, held.astype(np.uint32).tobytes(), db=self.meta.db["resv"])
        self._inc, self._dec, self._used, self._minc, self._mdec = [], [], [], [], []
        return to_punch

    def after_commit(self, to_punch: np.ndarray) -> None:
        """Drop the data of extents nothing references any more, then reuse or release them."""
        if len(to_punch) == 0:
            return
        self.recycled += 1
        for start, count in runs(to_punch):
            self.df.release(start * self.E, count * self.E)
        self._local.extend(sorted(to_punch.tolist(), reverse=True))
        keep = KEEP_BATCHES * self.batch
        if len(self._local) > keep:
            extra = np.array(self._local[: len(self._local) - keep], np.int64)
            self._local = self._local[len(self._local) - keep:]
            with self.meta.write() as txn:
                set_free(self.meta, txn, self.fg, extra, True)
                txn.put(self._key, np.array(self._local, np.uint32).tobytes(), db=self.meta.db["resv"])

    def release_all(self) -> None:
        """Give every held extent back to the free bitmap (the session is closing, flushed)."""
        with self.meta.write() as txn:
            held = read_resv(txn, self.meta, self._key)
            if len(held):
                set_free(self.meta, txn, self.fg, held, True)
            txn.delete(self._key, db=self.meta.db["resv"])
        self._local = []
