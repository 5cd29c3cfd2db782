"""Keeping mirrored LUs honest: ``settle`` after a crash, ``resync`` of what a degraded copy
missed, ``replace`` of a lost copy, ``verify`` (one LU) and ``scrub`` (the pool): every copy of
every block against its recorded checksum, with repair.

The rules (checksums.py says where the checksums come from):
- a copy is good where it matches the checksum recorded for the block; repair writes only a
  block that is provably bad, and only from a copy that is provably good. A block bad in every
  copy is reported unrecoverable and left alone; a block with no checksum whose copies differ is
  reported undecided and left alone;
- an extent that another process has open for writing is not judged (its copies may be
  mid-write): it is reported ``in_use``;
- ``settle`` runs when a pool or LU is opened and a dead session's activity log is found: the
  regions it names are made to agree (checksums.settle) before anything reads them, so a read
  after a crash never changes later.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import lmdb
import numpy as np

from . import native
from .storage.activity import REGION, dead_logs
from .meta import store_counts
from .storage.checksums import BLOCK, judge
from .storage.checksums import settle as settle_blocks
from .storage.datafile import DataFile
from .errors import BlockstoreError, Busy, InvalidArgument
from .locks import HolderLock, is_held

if TYPE_CHECKING:
    from .storage.mirror import MirrorFile
    from .pool import Pool

Progress = Callable[[int, int], None] | None


def _mirror(pool: "Pool", *, healthy: bool = True) -> "MirrorFile":
    m = pool.mirror
    if m is None:
        raise InvalidArgument("the pool has no second failure group (pool failgrp add DIR)")
    if healthy and m.degraded:
        raise BlockstoreError(f"the mirror is degraded (failure group {m.degraded[0]} unavailable); "
                              "bring it back and run lu resync, or pool failgrp replace")
    return m


def _extents_of(pool: "Pool", txn: lmdb.Transaction, name: str) -> np.ndarray:
    lu = pool.writing(name)  # an open writer's map may be ahead of the stored one
    emap = lu.extent_map if lu is not None else pool.load_map(txn, pool.record(txn, name))
    return np.unique(emap.mapped()).astype(np.int64)


def _hash_copies(m: "MirrorFile", ext: int) -> list[np.ndarray | None]:
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


def _copy_block(m: "MirrorFile", src: int, dst: int, block: int) -> None:
    """Block number ``block`` from copy ``src`` into copy ``dst``."""
    data = m.copies[src].pread(block * BLOCK, BLOCK)  # type: ignore[union-attr]
    m.copies[dst].pwrite(data, block * BLOCK)  # type: ignore[union-attr]


# -- after a crash -------------------------------------------------------------------------------

def settle(pool: "Pool", *, everything: bool = False) -> int:
    """Make the copies of every region a dead session had in flight agree, and record their
    checksums, before any I/O; ``everything``: every mirrored extent (a pool from before block
    checksums). Returns the extents examined."""
    if not everything and not dead_logs(pool.locks_dir):
        return 0  # the common open: one listdir
    m, E = pool.mirror, pool.extent_size
    done = 0
    with pool.lock:
        with pool.meta.write() as txn:  # one settler at a time, across processes
            logs = dead_logs(pool.locks_dir)
            if m is not None and m.copies != [None, None]:
                if everything:  # from before mirrored reference counts: count them now
                    counts = pool.mirrored_refs(txn)
                    store_counts(pool.meta, txn, "mrc", 0, counts)
                    exts = np.flatnonzero(counts)
                else:
                    regions = np.unique(np.concatenate([r for _, r in logs] + [np.zeros(0, np.int64)]))
                    per = max(1, REGION // E)
                    cand = np.unique((regions[:, None] * REGION // E + np.arange(per)[None, :]).ravel())
                    exts = np.intersect1d(cand, pool.sums.extents(txn))
                adopt(pool, txn, exts)
                done = len(exts)
            if everything:
                cfg = pool.meta.config(txn)
                cfg["block_sums"] = True
                pool.meta.put_json(txn, "config", b"pool", cfg)
        for path, _ in logs:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass  # another process settled it first
    return done


def adopt(pool: "Pool", txn: lmdb.Transaction, exts: np.ndarray) -> None:
    """Give mirrored extents that have no checksums some, from their copies (made to agree)."""
    m = _mirror(pool, healthy=False)
    for e in np.asarray(exts, np.int64).tolist():
        _settle_extent(pool, m, txn, e)
    for c in m.copies:
        if c is not None:
            c.sync()


def _settle_extent(pool: "Pool", m: "MirrorFile", txn: lmdb.Transaction, e: int) -> None:
    h0, h1 = _hash_copies(m, e)
    if h0 is None and h1 is None:
        return
    rec = pool.sums.get(txn, e)
    if rec is None:
        rec = np.zeros(m.B, np.uint64)
    direction, new = settle_blocks(h0, h1, rec)
    for b in np.flatnonzero(direction).tolist():
        src, dst = (0, 1) if direction[b] == 1 else (1, 0)
        _copy_block(m, src, dst, e * m.B + b)
    for i in m.degraded:  # the missing copy gets this extent at resync
        m.dirty_log.add(i, [e], txn)
        m.dirty[i].add(e)
    if not np.array_equal(new, rec):
        pool.sums.put(txn, e, new)


# -- degraded copies -----------------------------------------------------------------------------

def resync(pool: "Pool", name: str | None = None, progress: Progress = None) -> int:
    """Copy to each copy the extents it missed while degraded; returns how many were copied.

    A group whose file is back (the same file, with this pool's label) is reattached first; a
    file that is not this pool's copy is refused: ``replace`` rebuilds one from scratch.
    """
    m = _mirror(pool, healthy=False)
    E = pool.extent_size
    with pool.lock:
        for i in list(m.degraded):
            try:
                with pool.meta.read() as txn:
                    pool.groups.reopen(pool.meta.config(txn), i)
            except BlockstoreError as e:
                raise BlockstoreError(f"failure group {i} is still unavailable: {e}") from None
        pool.flush()
        with pool.meta.read() as txn:
            dirty = [m.dirty_log.load(txn, i) for i in (0, 1)]
            only = _extents_of(pool, txn, name) if name else None
        todo = [(i, np.flatnonzero(d)) for i, d in enumerate(dirty)]
        if only is not None:
            todo = [(i, np.intersect1d(exts, only)) for i, exts in todo]
        total = sum(len(e) for _, e in todo)
        done = 0
        for i, exts in todo:
            dst, src = m.copies[i], m.copies[1 - i]
            assert dst is not None and src is not None
            for e in exts.tolist():
                native.copy(src.fd, e * E, dst.fd, e * E, E, dst.path)
                done += 1
                if progress:
                    progress(done, total)
            dst.dirty = True
            dst.sync()
        with pool.meta.write() as txn:
            for i, exts in todo:
                m.dirty_log.clear(txn, i, exts)
        for i, exts in todo:
            m.dirty[i].difference_update(exts.tolist())
        return total


def dirty_count(pool: "Pool", name: str | None = None) -> dict[int, int]:
    with pool.meta.read() as txn:
        n = pool.meta.config(txn)["groups"][0]["extents"]
        only = _extents_of(pool, txn, name) if name else None
        out = {}
        for i in (0, 1):
            d = pool.meta.fg_array(txn, "dirty", i, n, bool, 0)
            out[i] = int(d[only].sum()) if only is not None else int(d.sum())
    return out


def replace(pool: "Pool", group: int = 1, directory: str | None = None, progress: Progress = None) -> dict[str, Any]:
    """Rebuild failure group ``group``'s copy from scratch in ``directory`` (default: where it
    was): every extent a mirrored LU references, block by block from the other copy where that
    copy matches its checksum; then read back and verified before it enters service. Rebuilding
    group 0 cannot bring back unmirrored LUs' extents (``unmirrored_lost``): they read as zeros."""
    m = _mirror(pool, healthy=False)
    E = pool.extent_size
    with pool.lock:
        src = m.copies[1 - group]
        if src is None:
            raise BlockstoreError(f"failure group {1 - group} is unavailable too: nothing to rebuild from")
        pool.flush()
        with pool.meta.read() as txn:
            cfg = pool.meta.config(txn)
            keep = pool.refcounts(txn, "mrc") > 0
            # the primary also held unmirrored LUs' extents: those have no other copy
            lost = int(((pool.refcounts(txn) > 0) & ~keep).sum()) if group == 0 else 0
            n = cfg["groups"][0]["extents"]
        old_path = pool.groups.path(cfg, group)
        path = os.path.join(os.path.abspath(directory), "data") if directory else old_path
        if directory and os.path.abspath(directory) == os.path.dirname(pool.groups.path(cfg, 1 - group)):
            raise InvalidArgument("the new copy must be outside the other failure group")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".rebuild"
        if os.path.exists(tmp):
            os.unlink(tmp)
        df = DataFile(tmp, create_size=n * E, label=pool.groups.label(group, path))
        exts = np.flatnonzero(keep)
        unrecoverable: list[int] = []
        recs: dict[int, np.ndarray | None] = {}
        try:
            for k, e in enumerate(exts.tolist()):
                data = bytearray(src.pread(e * E, E))
                rec = recs[e] = pool.sums.load(e)
                if rec is not None:
                    bad = (rec != 0) & (native.sum_blocks(data) != rec)
                    if bad.any():
                        unrecoverable.append(e)  # copied as it is: no other copy to take it from
                df.pwrite(data, e * E)
                if progress:
                    progress(k + 1, len(exts))
            df.sync()
            for e in exts.tolist():  # read back: the new copy enters service only if it is whole
                rec = recs[e]
                got = native.sum_file(df.fd, e * E, E, df.path)
                if rec is not None and e not in unrecoverable and ((rec != 0) & (got != rec)).any():
                    raise BlockstoreError(f"the rebuilt copy reads back wrong at extent {e}")
            os.replace(tmp, path)
            df.path = path
            dfd = os.open(os.path.dirname(path), os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except BaseException:
            df.close()
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

        def change(txn: lmdb.Transaction) -> None:
            c = pool.meta.config(txn)
            c["groups"][group]["path"] = pool.groups.stored_path(path)
            c["groups"][group]["labelled"] = True
            pool.meta.put_json(txn, "config", b"pool", c)
            m.dirty_log.clear(txn, group, np.arange(n))
        pool.commit(change)
        pool.groups.install(group, df, path)
    return {"group": group, "path": path, "extents": len(exts), "bytes": len(exts) * E,
            "unrecoverable": unrecoverable, "old_path": old_path, "unmirrored_lost": lost}


# -- verify and scrub ----------------------------------------------------------------------------

def _owners(pool: "Pool", txn: lmdb.Transaction) -> dict[int, tuple[str, int]]:
    """Extent -> (name, id) of the one writable LU that may write it in place: extents referenced
    once, by a live LU (shared extents and snapshots are never written in place)."""
    rc = pool.refcounts(txn)
    out: dict[int, tuple[str, int]] = {}
    for r in pool.records(txn):
        if r.get("mirrored") and r["kind"] != "snapshot":
            mapped = pool.load_map(txn, r).mapped().astype(np.int64)
            for e in mapped[rc[mapped] == 1].tolist():
                out[e] = (r["name"], r["id"])
    return out


class _Examiner:
    """Judges extents block by block and repairs what can be proven; collects the report."""

    def __init__(self, pool: "Pool", m: "MirrorFile", repair: bool, owners: dict[int, tuple[str, int]]) -> None:
        self.pool, self.m, self.repair, self.owners = pool, m, repair, owners
        self.bad: list[dict[str, int]] = []
        self.unrecoverable: list[int] = []
        self.undecided: list[int] = []
        self.in_use: list[int] = []
        self.repaired = 0  # blocks
        self.mismatched: list[int] = []

    def examine(self, e: int) -> None:
        owner = self.owners.get(e)
        with ExitStack() as stack:
            if owner is not None and self.pool.writing(owner[0]) is None:
                lock = self.pool.holder_path(owner[1])
                if not self.repair:
                    if is_held(lock):
                        self.in_use.append(e)
                        return
                else:
                    try:  # held for the repair: nobody writes the extent meanwhile
                        stack.enter_context(HolderLock(lock).acquire(f"LU {owner[0]!r}"))
                    except Busy:
                        self.in_use.append(e)
                        return
            self._judge(e)

    def _judge(self, e: int) -> None:
        m = self.m
        hashes = _hash_copies(m, e)
        rec = self.pool.sums.load(e)
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
                    _copy_block(m, 1 - i, i, e * m.B + b)
                    self.repaired += 1
        if hashes[0] is not None and hashes[1] is not None and not np.array_equal(hashes[0], hashes[1]):
            self.mismatched.append(e)

    def report(self) -> dict[str, Any]:
        # every block counted bad has a good copy, so a repair run fixes them all
        clean = not self.unrecoverable and not self.undecided and (not self.bad or self.repair)
        return {"bad": self.bad, "repaired": self.repaired, "unrecoverable": self.unrecoverable,
                "undecided": self.undecided, "in_use": self.in_use, "clean": clean}


def _run(pool: "Pool", exts: np.ndarray, repair: bool, progress: Progress,
         lu: str | None = None) -> tuple[_Examiner, float]:
    m = pool.mirror
    assert m is not None
    t = time.monotonic()
    with pool.meta.read() as txn:
        owners = _owners(pool, txn)
    ex = _Examiner(pool, m, repair, owners)
    for k, e in enumerate(exts.tolist()):
        ex.examine(e)
        if progress:
            progress(k + 1, len(exts))
    if ex.repaired:
        for c in m.copies:
            if c is not None:
                c.dirty = True
                c.sync()
    rep = ex.report()
    if rep["bad"] or rep["unrecoverable"] or rep["undecided"]:
        pool.emit("checksum_mismatch", {**({"lu": lu} if lu else {}), "bad": rep["bad"][:64],
                                          "unrecoverable": rep["unrecoverable"][:64],
                                          "undecided": rep["undecided"][:64], "repaired": rep["repaired"]})
    return ex, time.monotonic() - t


def repair_extents(pool: "Pool", exts: np.ndarray) -> dict[str, Any]:
    """Repair what can be proven bad in ``exts`` (flushed); the report as ``scrub`` gives it."""
    return _run(pool, exts, True, None)[0].report()


def verify(pool: "Pool", name: str, *, repair: bool = False, progress: Progress = None) -> dict[str, Any]:
    """Check both copies of every extent of ``name`` against their checksums and each other;
    with ``repair``, rewrite each provably bad block from the copy that is provably good.
    Holds the LU for writing meanwhile: Busy, naming the holder, if another process writes it."""
    _mirror(pool)
    E = pool.extent_size
    with pool.lock:
        with pool.meta.read() as txn:
            if not pool.record(txn, name).get("mirrored"):
                raise InvalidArgument(f"LU {name!r} is not mirrored")
        with pool.writer(name):
            pool.flush()
            with pool.meta.read() as txn:
                exts = _extents_of(pool, txn, name)
            ex, secs = _run(pool, exts, repair, progress, lu=name)
    rep = ex.report()
    return {"lu": name, "extents": len(exts), "bytes": len(exts) * E, "mismatched": ex.mismatched, **rep,
            "seconds": secs, "mib_per_s": len(exts) * E / (1 << 20) / secs if secs else 0.0}


def scrub(pool: "Pool", *, repair: bool = False, progress: Progress = None) -> dict[str, Any]:
    """Read every block of every mirrored extent in every live copy and check it against its
    recorded checksum; with ``repair``, rewrite provably bad blocks from a provably good copy."""
    m = _mirror(pool, healthy=False)
    E = pool.extent_size
    with pool.lock:
        pool.flush()
        with pool.meta.read() as txn:
            exts = pool.sums.extents(txn)
        ex, secs = _run(pool, exts, repair, progress)
    copies = [i for i, c in enumerate(m.copies) if c is not None]
    total = len(exts) * E * len(copies)
    return {"extents": len(exts), "bytes": total, **ex.report(), "seconds": secs,
            "mib_per_s": total / (1 << 20) / secs if secs else 0.0, "copies": copies}


def copy_to_mirror(pool: "Pool", exts: np.ndarray, progress: Progress = None) -> None:
    """Give extents their redundant copy (making an LU mirrored): copy 0 -> copy 1, with the
    checksums of what is copied (an unmirrored LU's bytes are, by definition, its primary's).
    Extents that already have checksums are mirrored already (shared with a mirrored LU)."""
    m = _mirror(pool)
    E = pool.extent_size
    c0, c1 = m.copies
    assert isinstance(c0, DataFile) and isinstance(c1, DataFile)
    with pool.meta.read() as txn:
        have = pool.sums.extents(txn)
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
