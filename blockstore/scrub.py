"""Keeping mirrored LUs honest, as commands over a pool: ``replace`` of a lost copy, ``verify``
(one LU) and ``scrub`` (the pool): every copy of every block against its recorded checksum, with
repair (storage/recovery.py holds the rules and the per-extent work; settling after a crash and
resync are the pool's, at open and on demand).

An extent that another process has open for writing is not judged (its copies may be
mid-write): it is reported ``in_use``; with repair, the LU's holder lock is taken for the
extent's repair, so nobody writes it meanwhile.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from typing import TYPE_CHECKING, Any

import lmdb
import numpy as np

from . import native
from .errors import AlreadyExists, BlockstoreError, Busy, InvalidArgument
from .names import split_snapshot
from .storage.datafile import DataFile
from .storage.health import OK
from .storage.recovery import Examiner

if TYPE_CHECKING:
    from .pool import Pool

Progress = Callable[[int, int], None] | None


def replace(pool: "Pool", group: int = 1, directory: str | None = None, progress: Progress = None) -> dict[str, Any]:
    """Rebuild failure group ``group``'s copy from scratch in ``directory`` (default: where it
    was): every extent a mirrored LU references, block by block from the other copy where that
    copy matches its checksum; then read back and verified before it enters service. Rebuilding
    group 0 cannot bring back unmirrored LUs' extents (``unmirrored_lost``): they read as zeros."""
    m = pool.need_mirror(healthy=False)
    E = pool.extent_size
    with pool.lock, ExitStack() as held:
        # no process writes a mirrored LU meanwhile (Busy, naming the holder): every write is
        # in the copy rebuilt from, so the new copy lacks nothing and is recorded ok
        with pool.meta.read() as txn:
            writable = [r["name"] for r in pool.records(txn) if r.get("mirrored") and r["kind"] != "snapshot"
                        and not r.get("readonly")]
        for name in writable:
            held.enter_context(pool.writer(name))
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
        if directory and path != old_path and os.path.lexists(path):
            # as `failgrp add` refuses: the rename at the end would replace that file
            raise AlreadyExists(f"{os.path.abspath(directory)} already holds a data file")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".rebuild"
        if os.path.exists(tmp):
            os.unlink(tmp)
        df = DataFile(tmp, root=pool.path, create_size=n * E, label=pool.groups.label(group, path))
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
            m.health.clear(txn, group, np.arange(n))
            m.health.set_state(txn, group, OK)
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


def _run(pool: "Pool", exts: np.ndarray, repair: bool, progress: Progress,
         lu: str | None = None) -> tuple[Examiner, float]:
    m = pool.mirror
    assert m is not None
    t = time.monotonic()
    with pool.meta.read() as txn:
        owners = _owners(pool, txn)
    ex = Examiner(m, pool.sums, repair)

    def examine(e: int) -> None:
        owner = owners.get(e)
        with ExitStack() as stack:
            if owner is not None and pool.writing(owner[0]) is None:
                if not repair:
                    if pool.liveness.lu_held(owner[1]):
                        ex.in_use.append(e)
                        return
                else:
                    try:  # held for the repair: nobody writes the extent meanwhile
                        stack.callback(pool.liveness.hold_lu(owner[1], f"LU {owner[0]!r}").release)
                    except Busy:
                        ex.in_use.append(e)
                        return
            ex.judge(e)
    for k, e in enumerate(exts.tolist()):
        examine(e)
        if progress:
            progress(k + 1, len(exts))
    ex.finish()
    rep = ex.report()
    if rep["bad"] or rep["unrecoverable"] or rep["undecided"]:
        pool.emit("checksum_mismatch", {**({"lu": lu} if lu else {}), "bad": rep["bad"][:64],
                                        "unrecoverable": rep["unrecoverable"][:64],
                                        "undecided": rep["undecided"][:64], "repaired": rep["repaired"]})
    return ex, time.monotonic() - t


def verify(pool: "Pool", name: str, *, repair: bool = False, progress: Progress = None) -> dict[str, Any]:
    """Check both copies of every extent of ``name`` against their checksums and each other;
    with ``repair``, rewrite each provably bad block from the copy that is provably good.
    Holds the LU for writing meanwhile: Busy, naming the holder, if another process writes it."""
    pool.need_mirror()
    E = pool.extent_size
    with pool.lock:
        with pool.meta.read() as txn:
            if not pool.record(txn, name).get("mirrored"):
                raise InvalidArgument(f"LU {name!r} is not mirrored")
        # a snapshot never changes (its extents are shared, never written in place): nothing to hold
        with pool.writer(name) if split_snapshot(name)[1] is None else nullcontext():
            pool.flush()
            with pool.meta.read() as txn:
                exts = pool.lu_extents(txn, name)
            ex, secs = _run(pool, exts, repair, progress, lu=name)
    rep = ex.report()
    return {"lu": name, "extents": len(exts), "bytes": len(exts) * E, "mismatched": ex.mismatched, **rep,
            "seconds": secs, "mib_per_s": len(exts) * E / (1 << 20) / secs if secs else 0.0}


def scrub(pool: "Pool", *, repair: bool = False, progress: Progress = None) -> dict[str, Any]:
    """Read every block of every mirrored extent in every live copy and check it against its
    recorded checksum; with ``repair``, rewrite provably bad blocks from a provably good copy."""
    m = pool.need_mirror(healthy=False)
    E = pool.extent_size
    with pool.lock:
        pool.flush()
        with pool.meta.read() as txn:
            exts = pool.sums.extents(txn)
        ex, secs = _run(pool, exts, repair, progress)
    copies = [i for i, c in enumerate(m.copies) if c is not None]
    total = len(exts) * E * len(copies)
    return {"extents": len(exts), "bytes": total, **ex.report(), "seconds": secs,
            "mib_per_s": total / (1 << 20) / secs if secs else 0.0, "copies": copies,
            "groups": pool.failure_groups()}
