"""Keeping mirrored LUs honest: checksums recorded at flush, ``resync`` of what a degraded copy
missed, ``verify`` (the two copies against each other) and ``scrub`` (every copy against its
recorded checksum), each with repair.

Checksums are xxh3-64 of whole extents, recorded at every flush for the mirrored extents written
since the previous one. A copy that matches the recorded checksum is good; repair rewrites a bad
copy from a good one and never guesses: when no copy matches, the extent is reported
unrecoverable. Two copies that agree with each other but not with the checksum are reported as
``stale``: a write that came after the last flush before a crash looks exactly like the same
corruption in both copies, so it is left for a person to judge.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import lmdb
import numpy as np
import xxhash

from . import native
from .datafile import DataFile
from .errors import BlockstoreError, InvalidArgument
from .extents import CHUNK, UNMAPPED
from .meta import fg_key

if TYPE_CHECKING:
    from .pool import Pool

Progress = Callable[[int, int], None] | None


def _hash(data: bytes) -> int:
    return xxhash.xxh3_64_intdigest(data) or 1  # 0 marks "no checksum"


def record_checksums(pool: "Pool", txn: lmdb.Transaction, extents: set[int]) -> None:
    """Store the checksum of each extent's current content (read from a live copy)."""
    m, E, db = pool._mirror, pool.extent_size, pool._meta.db["sums"]
    assert m is not None
    _, src = m._one()
    exts = np.array(sorted(extents), np.int64)
    for c in np.unique(exts // CHUNK):
        raw = txn.get(fg_key(0, int(c)), db=db)
        sums = np.frombuffer(raw, np.uint64).copy() if raw else np.zeros(CHUNK, np.uint64)
        for e in exts[exts // CHUNK == c].tolist():
            sums[e % CHUNK] = _hash(src.pread(e * E, E))
        txn.put(fg_key(0, int(c)), sums.tobytes(), db=db)


def _mirror(pool: "Pool", *, healthy: bool = True):  # type: ignore[no-untyped-def]
    m = pool._mirror
    if m is None:
        raise InvalidArgument("the pool has no second failure group (pool failgrp add DIR)")
    if healthy and m.degraded:
        raise BlockstoreError(f"the mirror is degraded (failure group {m.degraded[0]} unavailable); "
                              "bring it back and run lu resync")
    return m


def _extents_of(pool: "Pool", txn: lmdb.Transaction, name: str) -> np.ndarray:
    lu = pool._writers.get(name)  # an open writer's map may be ahead of the stored one
    phys = lu._map.phys if lu is not None else pool._load_map(txn, pool._record(txn, name)).phys
    return np.unique(phys[phys != UNMAPPED]).astype(np.int64)


def resync(pool: "Pool", name: str | None = None, progress: Progress = None) -> int:
    """Copy to each copy the extents it missed while degraded; returns how many were copied.

    A group whose file is back (or whose filesystem works again) is reattached first.
    """
    m = _mirror(pool, healthy=False)
    E = pool.extent_size
    with pool._lock:
        for i in list(m.degraded):
            try:
                with pool._meta.read() as txn:
                    df = pool._open_group(pool._meta.config(txn), i)
            except BlockstoreError as e:
                raise BlockstoreError(f"failure group {i} is still unavailable: {e}") from None
            old = pool._datafiles.get(i)
            if old is not None and old is not df:
                old.close()
            pool._datafiles[i] = df
            m.copies[i] = df
        pool.flush()
        with pool._meta.read() as txn:
            n = pool._meta.config(txn)["groups"][0]["extents"]
            dirty = [pool._meta.fg_array(txn, "dirty", i, n, bool, 0) for i in (0, 1)]
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
        with pool._meta.write() as txn:
            from .allocator import set_bits
            for i, exts in todo:
                set_bits(pool._meta, txn, "dirty", i, exts, False)
        for i, exts in todo:
            m.dirty[i].difference_update(exts.tolist())
        return total


def dirty_count(pool: "Pool", name: str | None = None) -> dict[int, int]:
    with pool._meta.read() as txn:
        n = pool._meta.config(txn)["groups"][0]["extents"]
        only = _extents_of(pool, txn, name) if name else None
        out = {}
        for i in (0, 1):
            d = pool._meta.fg_array(txn, "dirty", i, n, bool, 0)
            out[i] = int(d[only].sum()) if only is not None else int(d.sum())
    return out


def verify(pool: "Pool", name: str, *, repair: bool = False, progress: Progress = None) -> dict[str, Any]:
    """Compare the two copies of every extent of ``name`` by xxh3; with ``repair`` make them agree
    (the copy matching the recorded checksum wins; with no checksum to decide, the primary)."""
    m = _mirror(pool)
    E = pool.extent_size
    t = time.monotonic()
    with pool._lock:
        pool.flush()
        with pool._meta.read() as txn:
            rec = pool._record(txn, name)
            if not rec.get("mirrored"):
                raise InvalidArgument(f"LU {name!r} is not mirrored")
            exts = _extents_of(pool, txn, name)
            sums = _sums(pool, txn)
        c0, c1 = m.copies
        assert c0 is not None and c1 is not None
        mismatched, repaired = [], 0
        for k, e in enumerate(exts.tolist()):
            a, b = c0.pread(e * E, E), c1.pread(e * E, E)
            ha, hb = _hash(a), _hash(b)
            if ha != hb:
                mismatched.append(e)
                if repair:
                    good_is_b = sums[e] != 0 and hb == sums[e]
                    (c0 if good_is_b else c1).pwrite(b if good_is_b else a, e * E)
                    repaired += 1
            if progress:
                progress(k + 1, len(exts))
        if repaired:
            c0.sync()
            c1.sync()
    if mismatched:
        pool._event("checksum_mismatch", {"lu": name, "extents": mismatched[:64], "repaired": repaired})
    secs = time.monotonic() - t
    return {"lu": name, "extents": len(exts), "bytes": len(exts) * E, "mismatched": mismatched,
            "repaired": repaired, "clean": not mismatched or repaired == len(mismatched),
            "seconds": secs, "mib_per_s": len(exts) * E / (1 << 20) / secs if secs else 0.0}


def _sums(pool: "Pool", txn: lmdb.Transaction) -> np.ndarray:
    n = pool._meta.config(txn)["groups"][0]["extents"]
    return pool._meta.fg_array(txn, "sums", 0, n, np.uint64, 0)


def scrub(pool: "Pool", *, repair: bool = False, progress: Progress = None) -> dict[str, Any]:
    """Read every referenced extent that has a recorded checksum, in every live copy, and check it."""
    m = _mirror(pool, healthy=False)
    E = pool.extent_size
    t = time.monotonic()
    with pool._lock:
        pool.flush()
        with pool._meta.read() as txn:
            sums = _sums(pool, txn)
            rc = pool._allocators[0].refcounts(txn)
        exts = np.flatnonzero((sums != 0) & (rc > 0))
        bad: list[dict[str, int]] = []
        unrecoverable, stale = [], []
        repaired = 0
        copies = [(i, c) for i, c in enumerate(m.copies) if c is not None]
        for k, e in enumerate(exts.tolist()):
            datas = {i: c.pread(e * E, E) for i, c in copies}
            good = {i for i, d in datas.items() if _hash(d) == sums[e]}
            if len(good) == len(copies):
                pass
            elif good:
                src = datas[next(iter(good))]
                for i, c in copies:
                    if i not in good:
                        bad.append({"extent": e, "copy": i})
                        if repair:
                            c.pwrite(src, e * E)
                            repaired += 1
            elif len(copies) == 2 and datas[0] == datas[1]:
                stale.append(e)
            else:
                unrecoverable.append(e)
            if progress:
                progress(k + 1, len(exts))
        if repaired:
            for _, c in copies:
                c.sync()
    if bad or unrecoverable or stale:
        pool._event("checksum_mismatch", {"bad": bad[:64], "unrecoverable": unrecoverable[:64],
                                          "stale": stale[:64], "repaired": repaired})
    secs = time.monotonic() - t
    clean = not unrecoverable and not stale and (not bad or repaired == len(bad))
    return {"extents": len(exts), "bytes": len(exts) * E * len(copies), "bad": bad, "repaired": repaired,
            "unrecoverable": unrecoverable, "stale": stale, "clean": clean, "seconds": secs,
            "mib_per_s": len(exts) * E * len(copies) / (1 << 20) / secs if secs else 0.0,
            "copies": [i for i, _ in copies]}


def copy_to_mirror(pool: "Pool", exts: np.ndarray, progress: Progress = None) -> None:
    """Give extents their redundant copy (making an LU mirrored): copy 0 -> copy 1."""
    m = _mirror(pool)
    E = pool.extent_size
    c0, c1 = m.copies
    assert isinstance(c0, DataFile) and isinstance(c1, DataFile)
    for k, e in enumerate(exts.tolist()):
        native.copy(c0.fd, e * E, c1.fd, e * E, E, c1.path)
        m.touched.add(e)
        if progress:
            progress(k + 1, len(exts))
    c1.dirty = True
