"""The mirror's own repairs, below the pool (they know copies, checksums and the dirty log, not
LUs): settling the regions a dead session had in flight, copying to a copy what it missed,
giving extents their redundant copy, and judging an extent block by block.

The rules (checksums.py says where the checksums come from): a copy is good where it matches
the checksum recorded for the block; a repair writes only a block that is provably bad, and only
from a copy that is provably good. A block bad in every copy is unrecoverable and left alone; a
block with no checksum whose copies differ is undecided and left alone.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import lmdb
import numpy as np

from .. import native
from ..meta import Meta
from .checksums import BLOCK, SumStore, judge
from .checksums import settle as settle_blocks
from .datafile import DataFile
from .health import OK, RESYNCING
from .mirror import MirrorFile

Progress = Callable[[int, int], None] | None


def hash_copies(m: MirrorFile, ext: int) -> list[np.ndarray | None]:
    """The block checksums of extent ``ext`` in each copy (None: the copy is missing, or could
    not be read and has left service)."""
    out: list[np.ndarray | None] = [None, None]
    for i, c in enumerate(m.copies):
        if c is None:
            continue
        try:
            out[i] = native.sum_file(c.fd, ext * m.E, m.E, c.path)
        except OSError as e:
            m.fail(i, f"read at offset {ext * m.E}: {e.strerror}")
    return out


def copy_block(m: MirrorFile, src: int, dst: int, block: int) -> None:
    """Block number ``block`` from copy ``src`` into copy ``dst``."""
    data = m.copies[src].pread(block * BLOCK, BLOCK)  # type: ignore[union-attr]
    m.copies[dst].pwrite(data, block * BLOCK)  # type: ignore[union-attr]


def adopt(m: MirrorFile, sums: SumStore, txn: lmdb.Transaction, exts: np.ndarray) -> None:
    """Make the copies of ``exts`` agree and record their checksums in ``txn`` (after a crash:
    the regions a dead session had in flight; or extents that have no checksums yet)."""
    for e in np.asarray(exts, np.int64).tolist():
        h0, h1 = hash_copies(m, e)
        if h0 is None and h1 is None:
            continue
        rec = sums.get(txn, e)
        if rec is None:
            rec = np.zeros(m.B, np.uint64)
        direction, new = settle_blocks(h0, h1, rec)
        for b in np.flatnonzero(direction).tolist():
            src, dst = (0, 1) if direction[b] == 1 else (1, 0)
            copy_block(m, src, dst, e * m.B + b)
        for i in m.degraded:  # the missing copy gets this extent at resync
            m.health.add(i, [e], txn)
            m.dirty[i].add(e)
        if not np.array_equal(new, rec):
            sums.put(txn, e, new)
    m.forget_truth(exts)  # what this process knew of their checksums is the record's no longer
    for c in m.copies:
        if c is not None:
            c.sync()


def resync(m: MirrorFile, meta: Meta, only: np.ndarray, progress: Progress = None,
           txn: lmdb.Transaction | None = None, may_write: Callable[[], None] | None = None) -> int:
    """Copy to each copy in service the extents of ``only`` its bitmap names, from the other copy
    where that one has them, then clear their bits; a copy whose bitmap is then empty is ``ok``
    (health.py). The caller holds the pool's lock and makes sure no process writes ``only``
    meanwhile (it holds their LU, or they are a snapshot's, or free: ``txn``, the write
    transaction that keeps them so, is where the bits are cleared). ``may_write``: asked before
    each extent is copied (the data path's fence of a cluster node: it raises once the node may
    no longer write the LU, leaving the rest of the bits set). Returns the extents copied."""
    E = m.E
    with meta.read() if txn is None else nullcontext(txn) as t:
        dirty = [m.health.load(t, i) for i in (0, 1)]
    todo = []
    for i in (0, 1):
        if m.copies[i] is None or m.copies[1 - i] is None:
            continue
        exts = np.intersect1d(np.flatnonzero(dirty[i] & ~dirty[1 - i]), only)  # a source that has them
        todo.append((i, exts))
    total = sum(len(e) for _, e in todo)
    done = 0
    for i, exts in todo:
        dst, src = m.copies[i], m.copies[1 - i]
        assert dst is not None and src is not None
        for e in exts.tolist():
            if may_write is not None:
                may_write()
            native.copy(src.fd, e * E, dst.fd, e * E, E, dst.path)
            done += 1
            if progress:
                progress(done, total)
        dst.dirty = True
        dst.sync()
    whole = []
    with meta.write() if txn is None else nullcontext(txn) as t:
        for i, exts in todo:
            m.health.clear(t, i, exts)
            m.dirty[i].difference_update(exts.tolist())
            if not m.health.load(t, i).any() and m.health.states(t)[i] == RESYNCING:
                m.health.set_state(t, i, OK)
                whole.append(i)
        m.resynced(m.health.cleared(t), whole)
    return total


def copy_to_mirror(m: MirrorFile, have: np.ndarray, exts: np.ndarray, progress: Progress = None) -> None:
    """Give extents their redundant copy (an LU becoming mirrored): copy 0 -> copy 1, with the
    checksums of what is copied (an unmirrored LU's bytes are, by definition, its primary's).
    Extents in ``have`` (with checksums already: shared with a mirrored LU) are skipped."""
    E = m.E
    c0, c1 = m.copies
    assert isinstance(c0, DataFile) and isinstance(c1, DataFile)
    todo = np.setdiff1d(exts, have)
    buf = bytearray(E)
    for k, e in enumerate(todo.tolist()):
        native.pread_all(c0.fd, buf, e * E, c0.path)
        sums = np.empty(m.B, np.uint64)
        r, failed = native.pwrite2(-1, c1.fd, buf, e * E, sums)
        if r < 0:
            native.raise_errno(r, "write", c1.path, e * E)
        m.note_sums(e * E, sums)
        if progress:
            progress(k + 1, len(todo))
    c1.dirty = True


class Examiner:
    """Judges extents block by block against their checksums and each other, repairs (with
    ``repair``) what can be proven, and collects the report. ``finish`` syncs what it wrote."""

    def __init__(self, m: MirrorFile, sums: SumStore, repair: bool) -> None:
        self.m, self.sums, self.repair = m, sums, repair
        self.bad: list[dict[str, int]] = []
        self.unrecoverable: list[int] = []
        self.undecided: list[int] = []
        self.in_use: list[int] = []
        self.repaired = 0  # blocks
        self.mismatched: list[int] = []

    def judge(self, e: int) -> None:
        m = self.m
        hashes = hash_copies(m, e)
        rec = self.sums.load(e)
        if rec is None:
            rec = np.zeros(m.B, np.uint64)
        good = judge(hashes[0], hashes[1], rec)
        if not (good[0] | good[1]).all():
            lost = ~(good[0] | good[1])
            (self.unrecoverable if (rec[lost] != 0).all() else self.undecided).append(e)
        for i in (0, 1):
            if hashes[i] is None:
                continue
            bad = ~good[i] & good[1 - i]
            if not bad.any():
                continue
            self.bad.append({"extent": e, "copy": i, "blocks": int(bad.sum())})
            if self.repair:
                for b in np.flatnonzero(bad).tolist():
                    copy_block(m, 1 - i, i, e * m.B + b)
                    self.repaired += 1
        if hashes[0] is not None and hashes[1] is not None and not np.array_equal(hashes[0], hashes[1]):
            self.mismatched.append(e)

    def finish(self) -> None:
        if self.repaired:
            for c in self.m.copies:
                if c is not None:
                    c.dirty = True
                    c.sync()

    def report(self) -> dict[str, Any]:
        # every block counted bad has a good copy, so a repair run fixes them all
        clean = not self.unrecoverable and not self.undecided and (not self.bad or self.repair)
        return {"bad": self.bad, "repaired": self.repaired, "unrecoverable": self.unrecoverable,
                "undecided": self.undecided, "in_use": self.in_use, "clean": clean}
