"""The storage pool: failure groups' data files, the metadata, and the lifecycle of LUs.

Durability contract (DESIGN.md, enforced here): ``flush`` syncs every data file first and then
commits, in one LMDB transaction, every map and reference-count change made since the last
flush. Each metadata operation (create, snapshot, clone, rollback, flatten, resize, remove) is
itself such a flush plus its own change, in the same transaction. After a crash at any instant:
every write acknowledged before the last completed flush reads back exactly; the metadata is the
last committed transaction (consistent; a dead session's reserved extents are reclaimed on the
next open); an extent shared with a snapshot is never overwritten in place.
"""
from __future__ import annotations

import functools
import logging
import os
import shutil
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, cast

import lmdb
import numpy as np

from . import control, fence
from .allocator import Allocator, init_free, read_resv, resv_key, resv_owner, set_free
from .errors import AlreadyExists, BlockstoreError, Busy, InvalidArgument, ReadOnly
from .catalog import Catalog, LURecord, check_lu_size
from .records import DuReport, DuRow, DuTotal, LUInfo, LUStatus, PoolStatus
from .extents import ExtentMap, runs
from .journal import Journal
from .lifecycle import Lifecycle
from .listeners import Listeners
from .liveness import Claim, Flocks, Liveness
from .locks import this_process
from .lu import LU
from .meta import FORMAT, Meta, Outdated, meta_dir, store_counts
from .names import split_snapshot
from .pooldir import remove_file, subdir
from .storage import recovery
from .storage.activity import REGION, ActivityLog, dead_logs
from .storage.checksums import SumStore
from .storage.datafile import DataFile, fsync_dir
from .storage import Store
from .storage.groups import FailureGroups, check_second_dir
from .storage.health import FAILED
from .storage.mirror import MirrorFile
from .sizes import format_size, parse_size

log = logging.getLogger("blockstore")

DEFAULT_EXTENT = 1 << 20
MIN_EXTENT, MAX_EXTENT = 64 << 10, 16 << 20
DEFAULT_THRESHOLD = 0.8
#: Physical extent numbers are uint32 and 0xFFFFFFFF marks a hole.
MAX_EXTENTS = 0xFFFFFFFE


def _check_extent_size(extent_size: int) -> int:
    if extent_size & (extent_size - 1) or not MIN_EXTENT <= extent_size <= MAX_EXTENT:
        raise InvalidArgument(
            f"extent size must be a power of two from 64K to 16M, not {extent_size}"
        )
    return extent_size


_GLANCES = threading.Lock()  # Pool.glance


class Pool:
    """An open storage pool. Use ``Pool.create`` or ``Pool.open``, ideally as a context manager.

    Thread-safe: one re-entrant lock guards the in-memory state. Several processes may open one
    pool; each LU is writable by one process at a time (its holder lock).

    Its parts: ``meta``, the metadata (meta.py: LMDB transactions and the key layout), and
    ``sums``, the checksum records of mirrored data (checksums.py).
    """

    def __init__(self, path: str, *, readonly: bool = False, recover: bool = True) -> None:
        """Open the pool at ``path``. ``readonly``: look, change nothing on disk (no session
        file, no crash recovery, no reclaim or resync, no write of any kind; LUs open read-only
        and every change is refused); a pool whose metadata needs bringing up to date is opened
        for writing once instead. ``recover``: what sessions that died left behind is recovered
        (``recover()``) as the pool opens, and their activity logs settled before every LU
        opens, as a pool on one machine does for itself; False: only when ``recover()`` is
        called (a cluster node's serving process, where it is the duty of the node that takes
        the dead session's LUs over: cluster/serving.py)."""
        meta = meta_dir(path)
        self.path = os.path.dirname(meta)
        self._lock = threading.RLock()
        try:
            self.meta = Meta(meta, readonly=readonly)
        except Outdated:
            self.meta, readonly = Meta(meta), False
        self.readonly = readonly
        self._recovers = recover and not readonly
        with self.meta.read() as txn:
            cfg = self.meta.config(txn)
        self.extent_size: int = cfg["extent_size"]
        self.session = uuid.uuid4().hex[:16]
        #: who is alive and who holds what (liveness.py): the only place the engine asks
        self.liveness: Liveness = Flocks(self.path)
        self._session_claim: Claim | None = None
        self._write_gate: Callable[[str, int], None] | None = None  # set_gates
        #: read-only handles -> their LU's record as they last read it (refresh_lu)
        self._records_seen: weakref.WeakKeyDictionary[LU, bytes | None] = weakref.WeakKeyDictionary()
        if not readonly:
            subdir(self.path, "locks")
            self._session_claim = self.liveness.hold_session(self.session)
        self._allocators: dict[int, Allocator] = {}
        self._writers: dict[str, LU] = {}
        self._over_threshold = False
        # called with (kind, info) for every engine event, from a thread of their own (listeners.py)
        self.listeners = Listeners()
        self.sums = SumStore(self.meta, self.extent_size)
        self.catalog = Catalog(self.meta, self.extent_size)
        self._activity = ActivityLog(self.locks_dir, self.session)
        try:
            if "id" not in cfg and not readonly:  # a pool made before pools had ids
                cfg = self.meta.set_config(id=uuid.uuid4().hex)
            if not cfg.get("clone_index") and not readonly:  # made before records listed their clones
                with self.meta.write() as txn:
                    self.catalog.index_clones(txn)
                    c = self.meta.config(txn)
                    c["clone_index"] = True
                    self.meta.put_json(txn, "config", b"pool", c)
            self.id: str | None = cfg.get("id")
            self.groups: FailureGroups = FailureGroups(self.path, self.meta, self.extent_size, self.id, self.sums,
                                        self._activity, self.emit, readonly=readonly)
            self.groups.open(cfg)
            # One allocator: a mirrored extent sits at the same index in both groups' files.
            self._allocators[0] = Allocator(self.meta, 0, self.session, self.groups.allocation_store(),
                                            self.extent_size, on_usage=self._usage)
            self.lifecycle = Lifecycle(self)
            self.journal = Journal(self.meta, self._lock, self.groups, self._allocators[0], self.catalog,
                                   self._writers, readonly=readonly, path=self.path)
            self._threshold: float = cfg.get("threshold", DEFAULT_THRESHOLD)
            if readonly:
                return
            # before any I/O: copies agree (the pool's open also looks where older versions logged);
            # a pool from before block checksums is brought up to date whoever opens it
            if self._recovers or not cfg.get("block_sums"):
                self._settle(everything=not cfg.get("block_sums"), legacy=True)
            if self._recovers:
                self.reclaim_dead_sessions()
        except BaseException:
            self._teardown()
            raise

    @property
    def mirror(self) -> MirrorFile | None:
        """The mirror layer (None without a second failure group)."""
        return self.groups.mirror

    def verify_reads(self, on: bool) -> None:
        """Whether mirrored reads are checked against their checksums (on by default; off only to
        measure what the check costs). Applies to handles opened from now on."""
        if self.mirror is not None:
            self.mirror.verify_reads = on

    def emit(self, kind: str, info: dict[str, Any]) -> None:
        self.listeners.emit(kind, info)

    # -- creation and lifetime -----------------------------------------------------------------

    @classmethod
    def create(cls, path: str, size: int | str, *, extent_size: int | str = DEFAULT_EXTENT,
               threshold: float = DEFAULT_THRESHOLD, mirror_dir: str | None = None) -> "Pool":
        """Make a new pool of ``size`` bytes (rounded down to whole extents) at ``path``, with a
        second failure group in ``mirror_dir`` (ideally another disk) for mirrored LUs."""
        E = _check_extent_size(parse_size(extent_size, what="extent size"))
        n = parse_size(size, what="pool size") // E
        if n < 1:
            raise InvalidArgument(f"pool size must be at least one extent ({format_size(E)})")
        if n > MAX_EXTENTS:
            raise InvalidArgument(f"pool size is too large for {format_size(E)} extents; use larger extents")
        if not 0.0 < threshold <= 1.0:
            raise InvalidArgument("threshold must be a fraction in (0, 1]")
        path = os.path.abspath(path)
        if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
            raise AlreadyExists(f"{path} already exists and is not an empty directory")
        made_dir = not os.path.exists(path)
        if mirror_dir is not None:
            check_second_dir(mirror_dir, path)
        try:
            # private by default: the metadata names every LU, the data files hold their bytes
            os.makedirs(path, mode=0o700, exist_ok=True)
            os.chmod(path, 0o700)
            subdir(path, "fg0")
            subdir(path, "locks")
            pool_id = uuid.uuid4().hex
            DataFile(os.path.join(path, "fg0", "data"), root=path, create_size=n * E,
                     label={"pool": pool_id, "group": 0, "owner": None}).close()
            fsync_dir(path)
            if made_dir:
                fsync_dir(os.path.dirname(path))
            meta = Meta(os.path.join(path, "meta"), create=True)
            with meta.write() as txn:
                meta.put_json(txn, "config", b"pool", {
                    "format": FORMAT, "extent_size": E, "threshold": threshold, "next_lu_id": 1,
                    "groups": [{"path": "fg0/data", "extents": n, "labelled": True}], "created": time.time(),
                    "id": pool_id, "block_sums": True, "clone_index": True,
                })
                init_free(meta, txn, 0, 0, n)
            meta.close()
            fsync_dir(os.path.join(path, "meta"))
            fsync_dir(path)
            if mirror_dir is not None:
                with cls(path) as pool:
                    pool.add_failure_group(mirror_dir)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True) if made_dir else _empty_dir(path)
            raise
        return cls(path)

    @classmethod
    def open(cls, path: str, *, readonly: bool = False, recover: bool = True) -> "Pool":
        return cls(path, readonly=readonly, recover=recover)

    @classmethod
    @contextmanager
    def glance(cls, path: str) -> Iterator["Pool"]:
        """The pool at ``path`` opened read-only for a quick look, one look at a time in this
        process: LMDB lets a process hold a pool's metadata open once, so threads that each look
        (a node's request handlers, its metrics scrape, its failover) take turns instead of one
        of them getting Busy. Not for a process that holds the pool open otherwise."""
        with _GLANCES:
            with cls(path, readonly=True) as pool:
                yield pool

    def close(self) -> None:
        """Flush, release this session's reserved extents and every open LU."""
        with self._lock:
            if self.meta is None:
                return
            if self.readonly:
                self._teardown()
                return
            try:
                self.flush()
                for lu in list(self._writers.values()):
                    self._release(lu)
                for a in self._allocators.values():
                    a.release_all()
                self._activity.close()  # flushed: nothing is in flight
            finally:
                self._teardown()
        self.listeners.drain()  # outside the lock: a listener may call back into the pool

    def _teardown(self) -> None:
        groups = getattr(self, "groups", None)  # not there when opening failed before it
        if groups is not None:
            groups.close()
        if self.meta is not None:
            self.meta.close()
            self.meta = None  # type: ignore[assignment]
        if self._session_claim is not None:
            self.liveness.end(self._session_claim)
            self._session_claim = None

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def locks_dir(self) -> str:
        return os.path.join(self.path, "locks")

    def recover(self) -> dict[str, int]:
        """Recover what sessions that died without closing left: settle the regions their
        activity logs name (the copies of a mirrored extent made to agree, their checksums
        recorded) and return what they had reserved to the free bitmap. Returns {settled:
        extents examined, reclaimed: extents}. Safe at any time and in any process: a session
        counts as dead only when liveness.py says so, and one settler works at a time."""
        return {"settled": self._settle(), "reclaimed": self.reclaim_dead_sessions()}

    def reclaim_dead_sessions(self) -> int:
        """Return to the free bitmap what sessions that died without closing had reserved."""
        reclaimed = 0
        with self._lock, self.meta.write() as txn:
            rc = {fg: a.refcounts(txn) for fg, a in self._allocators.items()}
            for key, _ in list(self.meta.iter_prefix(txn, "resv", b"")):
                session, fg = resv_owner(key)
                if session == self.session or self.liveness.session_alive(session):
                    continue
                held = read_resv(txn, self.meta, key)
                held = held[rc[fg][held] == 0]
                set_free(self.meta, txn, fg, held, True)
                txn.delete(key, db=self.meta.db["resv"])
                reclaimed += len(held)
                self.liveness.forget_session(session)
        return reclaimed

    # -- flush and the commit of every metadata change ----------------------------------------

    def flush(self, *, checkpoint: bool = True) -> None:
        """Make every acknowledged write of every LU open in this pool durable; a
        ``checkpoint`` (the default) also commits the checksums a mirror recorded (journal.py)."""
        self.journal.flush(checkpoint=checkpoint)

    def commit(self, change: Callable[[lmdb.Transaction], Any] | None) -> Any:
        """Sync data, then commit ``change`` with every pending change, atomically (journal.py)."""
        return self.journal.commit(change)

    # -- records (catalog.py) -------------------------------------------------------------------

    def record(self, txn: lmdb.Transaction, name: str, *, missing_ok: bool = False) -> LURecord:
        return self.catalog.get(txn, name, missing_ok=missing_ok)

    def records(self, txn: lmdb.Transaction) -> list[LURecord]:
        return self.catalog.all(txn)

    def load_map(self, txn: lmdb.Transaction, rec: LURecord) -> ExtentMap:
        return self.catalog.load_map(txn, rec)

    # -- opening LUs ----------------------------------------------------------------------------

    def open_lu(self, name: str, *, writable: bool = True, epoch: int | None = None) -> LU:
        """Open an LU (or a snapshot, ``LU@SNAP``, always read-only).

        A writable open takes the LU's holder lock: a second process gets Busy naming the holder.
        Opening the same LU again in this process returns the same handle. ``epoch``: the
        ownership epoch a cluster node writes under (fence.py): stored in the LU's record as it
        opens, and compared by every commit; Fenced when a newer owner already took a higher one.
        """
        base, snap = split_snapshot(name)
        with self._lock:
            if name in self._writers:
                lu = self._writers[name]
                lu.add_open()
                return lu
            if writable and self.readonly:
                raise ReadOnly(f"the pool at {self.path} is open read-only: LU {name!r} cannot be written")
            if self._recovers:
                self._settle()  # a session that died since this pool opened may have left copies apart
            if snap is not None and writable:
                writable = False
            holder = None
            if writable:
                with self.meta.read() as txn:
                    rec0 = self.record(txn, name)
                    lu_id = rec0["id"]
                if rec0.get("readonly"):
                    raise ReadOnly(f"LU {name!r} is read-only ({rec0.get('role', 'sealed')})")
                if epoch is None or fence.enabled("agent"):  # the holder locks: one machine's agent
                    holder = self.liveness.hold_lu(lu_id, f"LU {name!r}")
            try:
                with self.meta.read() as txn:
                    rec = self.record(txn, name)
                    if holder and rec["id"] != lu_id:
                        raise Busy(f"LU {name!r} was replaced while opening; try again")
                    emap = self.load_map(txn, rec)
                    if writable:
                        # Fresh counts: only this holder can add sharers of its extents from now on,
                        # so "referenced once" stays true until this handle shares them itself.
                        rc = self._allocators[0].refcounts(txn)
                        emap.own_where(rc)
            except BaseException:
                if holder:
                    holder.release()
                raise
            # A read-only handle of a live LU that no process writes knows its checksums as they
            # are (mirror.py: its reads verify); one that a writer may change under it does not.
            # A writer here holds the LU's holder lock; an owner under an epoch may not (with the
            # agent's fence layer off; on another machine, where no flock reaches), so an LU
            # an owner has written (its record names an epoch) may be written unseen.
            settled = writable or rec["kind"] == "snapshot" or bool(rec.get("readonly")) \
                or not ("fence" in rec or self.liveness.lu_held(rec["id"]))  # the record first: no flock probe
            lu = LU(self, rec, emap, self._store(name, rec.get("mirrored", False), epoch if writable else None),
                    self._allocators[0], writable=writable, holder=holder, settled=settled)
            if writable and epoch is not None:
                try:
                    self.commit(functools.partial(self._take_fence, name, epoch))
                except BaseException:
                    lu.retire()
                    if holder:
                        holder.release()
                    raise
                lu.epoch = epoch
            if writable:
                self._writers[name] = lu
            return lu

    def _take_fence(self, name: str, epoch: int, txn: lmdb.Transaction) -> None:
        """Store ``epoch`` as the LU's fence: from this commit on, a writer under an older epoch
        commits nothing (fence.py). Fenced when a newer one holds it already."""
        rec = self.record(txn, name)
        fence.check(rec, epoch)
        rec["fence"] = epoch
        self.catalog.put(txn, rec)

    def held_lu(self, name: str) -> LU | None:
        """This process's writable handle of ``name`` opened once more (close it as any handle),
        or None when this process does not hold the LU: never takes the writer lock."""
        with self._lock:
            lu = self._writers.get(name)
            if lu is not None:
                lu.add_open()
            return lu

    @contextmanager
    def lu(self, name: str, *, writable: bool = True) -> Iterator[LU]:
        h = self.open_lu(name, writable=writable)
        try:
            yield h
        finally:
            h.close()

    def writing(self, name: str) -> LU | None:
        """This process's writable handle of ``name`` if it has one (not opened again: do not
        close it), else None."""
        return self._writers.get(name)

    def refcounts(self, txn: lmdb.Transaction, db: str = "rc") -> np.ndarray:
        """Every physical extent's reference count (``rc``), or the references mirrored LUs hold
        (``mrc``), as ``txn`` stores them."""
        return self._allocators[0].refcounts(txn, db)

    @property
    def lock(self) -> threading.RLock:
        """The pool's one lock: held, nothing else in this process changes a map or a count."""
        return self._lock

    def refresh_lu(self, lu: LU) -> None:
        """Re-read a read-only handle's map if its writer (maybe another process) committed."""
        if lu.kind == "snapshot":
            return
        with self.meta.read() as txn:
            raw = self.catalog.raw(txn, lu.name)
            if raw is not None and raw == self._records_seen.get(lu):
                return  # the record as this handle last read it: no commit since (nothing to decode)
            rec = self.record(txn, lu.name)
            if rec["gen"] != lu.gen:
                lu.reload(self.load_map(txn, rec), rec["size"], rec["gen"])
            self._records_seen[lu] = raw

    def lu_gen(self, lu: LU) -> int:
        """The generation of ``lu``'s map as the pool's metadata holds it now (its last commit)."""
        with self.meta.read() as txn:
            raw = self.catalog.raw(txn, lu.name)
            if raw is not None and raw == self._records_seen.get(lu):
                return lu.gen
            return self.record(txn, lu.name)["gen"]

    def close_lu(self, lu: LU) -> None:
        """A user of ``lu`` closed it; the last close of a writable handle flushes and lets the
        LU go (its writer lock)."""
        with self._lock:
            if lu.closed or not lu.drop_open():
                return
            if not lu.readonly:
                self.flush()
                self._release(lu)
            lu.retire()

    def set_gates(self, *, writes: Callable[[str, int], None], commits: Callable[[str, int], None]) -> None:
        """The data path's fence (fence.py) for LUs opened under an ownership epoch from now on:
        ``writes(name, epoch)`` is asked before every write to the store (fenced.py), and
        ``commits(name, epoch)`` inside every commit; each raises Fenced when this process may
        no longer write, or commit what it wrote. A refused commit stores nothing, nor any later."""
        self._write_gate = writes
        self.journal.gate = commits

    def _store(self, name: str, mirrored: bool, epoch: int | None) -> Store:
        """The store LU ``name`` is written through: behind the write gate when it is written
        under an ownership epoch and a gate is set."""
        return self.groups.store(mirrored, self._may_write(name, epoch))

    def _may_write(self, name: str, epoch: int | None) -> Callable[[], None] | None:
        """The write gate's question for ``name`` written under ``epoch`` (None: no gate)."""
        gate = self._write_gate
        return None if gate is None or epoch is None else functools.partial(gate, name, epoch)

    def let_go(self, name: str) -> None:
        """Stop writing ``name`` in this process at once, however many users have it open: flush
        (what they wrote is durable under the epoch it was written under), retire the handle and
        free its writer lock, whatever the flush said. The old owner's half of a moved LU; its
        users' next I/O fails."""
        with self._lock:
            lu = self._writers.get(name)
            if lu is None:
                return
            try:
                self.flush()
            finally:
                self._release(lu)

    def _release(self, lu: LU) -> None:
        self._writers.pop(lu.name, None)
        if lu.holder:
            lu.holder.release()
        lu.retire()

    @contextmanager
    def writer(self, name: str) -> Iterator[LU]:
        """This process's writable handle of ``name``, opened for the operation if need be; a
        snapshot is refused (every operation that changes an LU comes here, and a snapshot never
        changes: an operation that went on read-only would write records the checks call damage)."""
        if split_snapshot(name)[1] is not None:
            raise ReadOnly(f"{name!r} is a snapshot and never changes; clone it for a writable copy")
        lu = self.open_lu(name, writable=True)
        try:
            yield lu
        finally:
            self.close_lu(lu)

    # -- LU lifecycle (lifecycle.py) -----------------------------------------------------------

    def create_lu(self, name: str, size: int | str, *, thick: bool = False, mirrored: bool = False,
                  allow_empty: bool = False) -> LU:
        """A new thin (or ``thick``) LU, open for writing; ``mirrored``: with a redundant copy."""
        return self.lifecycle.create_lu(name, size, thick=thick, mirrored=mirrored, allow_empty=allow_empty)

    def snapshot(self, name: str, snap: str) -> LUInfo:
        """A read-only point-in-time copy ``name@snap`` (also of an LU in use elsewhere)."""
        return self.lifecycle.snapshot(name, snap)

    def clone(self, source: str, new: str) -> LUInfo:
        """A writable copy-on-write LU ``new`` of an LU or snapshot ``source``."""
        return self.lifecycle.clone(source, new)

    def rollback(self, name: str, snap: str) -> None:
        """Make ``name`` again what it was at ``name@snap``."""
        self.lifecycle.rollback(name, snap)

    def flatten(self, name: str) -> int:
        """Give ``name`` its own copy of every extent it shares; returns extents copied."""
        return self.lifecycle.flatten(name)

    def resize(self, name: str, size: int | str, *, force: bool = False, allow_empty: bool = False) -> None:
        """Grow ``name`` (also in use elsewhere); shrinking needs ``force``."""
        self.lifecycle.resize(name, size, force=force, allow_empty=allow_empty)

    def remove(self, name: str, *, recursive: bool = False) -> list[str]:
        """Remove an LU (and its snapshots if ``recursive``) or a snapshot; the names removed."""
        return self.lifecycle.remove(name, recursive=recursive)

    def rename(self, old: str, new: str) -> None:
        """Rename an LU; its snapshots follow."""
        self.lifecycle.rename(old, new)

    @property
    def allocator(self) -> Allocator:
        """The allocator of the pool's extents (reference counts, free space)."""
        return self._allocators[0]

    def renamed_writer(self, old: str, new: str) -> None:
        """This process's writer of ``old`` is now the writer of ``new`` (a rename committed)."""
        lu = self._writers[new] = self._writers.pop(old)
        lu.name = new

    # -- failure groups and mirrors -------------------------------------------------------------

    def add_failure_group(self, directory: str) -> None:
        """Add the second failure group (a data file in ``directory``, ideally on another disk)."""
        with self._lock:
            with self.meta.read() as txn:
                cfg = self.meta.config(txn)
            if len(cfg["groups"]) > 1:
                raise AlreadyExists(f"the pool already has a second failure group: {self.groups.path(cfg, 1)}")
            path, entry = self.groups.create_second(directory, cfg["groups"][0]["extents"])

            def change(txn: lmdb.Transaction) -> dict[str, Any]:
                c = self.meta.config(txn)
                c["groups"].append(entry)
                self.meta.put_json(txn, "config", b"pool", c)
                return c
            try:
                cfg = self.commit(change)
            except BaseException:
                os.unlink(path)
                raise
            self.groups.attach_second(cfg)
            self._allocators[0].df = self.groups.allocation_store()

    def failure_groups(self) -> list[dict[str, Any]]:
        with self.meta.read() as txn:
            cfg = self.meta.config(txn)
        return self.groups.describe(cfg, self.dirty_extents())

    def need_mirror(self, *, healthy: bool = True) -> MirrorFile:
        """The mirror, or InvalidArgument without a second group (BlockstoreError while a copy
        is missing, if ``healthy``)."""
        m = self.mirror
        if m is None:
            raise InvalidArgument("the pool has no second failure group (pool failgrp add DIR)")
        if healthy and m.degraded:
            raise BlockstoreError(f"the mirror is degraded (failure group {m.degraded[0]} unavailable); "
                                  "bring it back and run lu resync, or pool failgrp replace")
        return m

    def lu_extents(self, txn: lmdb.Transaction, name: str) -> np.ndarray:
        """The physical extents ``name`` maps (an open writer's map may be ahead of the stored one)."""
        lu = self._writers.get(name)
        emap = lu.extent_map if lu is not None else self.load_map(txn, self.record(txn, name))
        return np.unique(emap.mapped()).astype(np.int64)

    def dirty_extents(self, name: str | None = None) -> dict[int, int]:
        """Per copy, how many extents (of ``name``, or of the pool) it lacks: what resync copies."""
        if self.mirror is None:
            return {0: 0, 1: 0}
        with self.meta.read() as txn:
            only = self.lu_extents(txn, name) if name else None
            out = {}
            for i in (0, 1):
                d = self.mirror.health.load(txn, i)
                out[i] = int(d[only].sum()) if only is not None else int(d.sum())
        return out

    def resync(self, name: str | None = None, progress: Callable[[int, int], None] | None = None) -> int:
        """Copy to each copy the extents it lacks (of ``name`` and its snapshots, if given; else
        of every LU, then the snapshots' and free extents); returns how many were copied. A
        failed group whose file is back (the same file, this pool's label) is put back in
        service first; a file that is not this pool's copy is refused: ``replace`` (scrub.py)
        rebuilds one from scratch.

        No other process's writes can race it: an LU is resynced by the process that holds it
        (asked over its control channel) or held here meanwhile; the extents nobody can write
        in place (a snapshot's, free ones) are resynced in one metadata transaction, which no
        allocation can enter. A copy whose bitmap ends empty is ``ok`` again (health.py)."""
        m = self.need_mirror(healthy=False)
        if name is not None:
            with self.lifecycle.live(name, {"op": "resync", "lu": name}) as asked:
                if asked.done:
                    return int(asked.result["copied"])
        with self._lock:
            if name is not None:
                return self._resync_lu(m, name, progress)
            with self.meta.read() as txn:
                lus = [r["name"] for r in self.records(txn) if r.get("mirrored") and r["kind"] != "snapshot"
                       and not r.get("readonly")]
            lus = [lu for lu in lus if sum(self.dirty_extents(lu).values())]
            for lu in lus:  # refused before anything changes if a holder cannot be asked
                pid = self.lifecycle.holder_of(lu)
                if pid and not control.serves(self.path, pid):
                    raise Busy(f"LU {lu!r} is held by process {pid}, which takes no requests: resync it there "
                               "or close it", holder=pid)
            copied = sum(self.resync(lu, progress) for lu in lus)
            self._bring_back()
            with self.meta.write() as txn:
                rc = self._resync_unused(m, txn)
                mrc = self.refcounts(txn, "mrc")
                writable = np.zeros(len(rc), bool)
                for r in self.records(txn):
                    if r["kind"] != "snapshot" and not r.get("readonly"):
                        writable[self.load_map(txn, r).mapped().astype(np.int64)] = True
                for i in (0, 1):  # data no mirrored LU references: its redundant copy means nothing
                    m.health.clear(txn, i, np.flatnonzero(m.health.load(txn, i) & (rc > 0) & (mrc == 0)))
                # nobody writes in place an extent no writable LU maps, or one shared (copy on write)
                fixed = (rc > 0) & (mrc > 0) & (~writable | (rc >= 2))
                return copied + recovery.resync(m, self.meta, np.flatnonzero(fixed), progress, txn)

    def _resync_unused(self, m: MirrorFile, txn: lmdb.Transaction) -> np.ndarray:
        """Inside ``txn`` (which no allocation can enter): the extents no LU uses, free or reserved
        by this session (flushed, under the pool's lock: unwritten), punched in both copies alike
        and cleared; one another session reserved may be being written by it and waits for that
        LU's resync. Returns the reference counts."""
        rc = self.refcounts(txn)
        unused = self.meta.fg_array(txn, "free", 0, len(rc), bool, 0)
        own = read_resv(txn, self.meta, resv_key(self.session, 0))
        unused[own[rc[own] == 0]] = True
        for i in (0, 1):
            lacking = np.flatnonzero(m.health.load(txn, i) & unused)
            for start, count in runs(lacking):
                m.release(start * self.extent_size, count * self.extent_size)
            m.health.clear(txn, i, lacking)
        return rc

    def _resync_lu(self, m: MirrorFile, name: str, progress: Callable[[int, int], None] | None) -> int:
        """Resync the extents of ``name`` and its snapshots, holding ``name`` (a snapshot or a
        sealed LU never changes: nothing to hold)."""
        with self.meta.read() as txn:
            rec = self.record(txn, name)
            family = [name] + [r["name"] for r in self.catalog.snapshots(txn, name)]
        fixed = rec["kind"] == "snapshot" or rec.get("readonly")
        with nullcontext() if fixed else self.writer(name) as lu:
            self._bring_back()
            with self.meta.write() as txn:
                self._resync_unused(m, txn)  # extents a failing copy had armed ahead, never used
            with self.meta.read() as txn:
                only = np.unique(np.concatenate([self.lu_extents(txn, f) for f in family]))
            # the LU is held: no txn needed
            return recovery.resync(m, self.meta, only, progress,
                                   may_write=self._may_write(name, lu.epoch if lu is not None else None))

    def _bring_back(self) -> None:
        """Failed copies back in service (groups.py), and a commit: from it on, this process
        writes them (the others from their next commit)."""
        with self.meta.read() as txn:
            self.groups.bring_back(self.meta.config(txn))
        self.commit(None)

    def _settle(self, *, everything: bool = False, legacy: bool = False) -> int:
        """Make the copies of every region a dead session had in flight agree, and record their
        checksums, before any I/O; ``everything``: every mirrored extent (a pool from before
        block checksums); ``legacy``: logs where older versions kept them too. Returns the
        extents examined."""
        if not everything and not dead_logs(self.locks_dir, self.liveness.session_alive, legacy=legacy):
            return 0  # the common open: one listdir of the live sessions' logs
        m, E = self.mirror, self.extent_size
        done = 0
        with self._lock:
            with self.meta.write() as txn:  # one settler at a time, across processes
                logs = dead_logs(self.locks_dir, self.liveness.session_alive, legacy=legacy)
                if m is not None and m.copies != [None, None]:
                    if everything:  # from before mirrored reference counts: count them now
                        counts = self.mirrored_refs(txn)
                        store_counts(self.meta, txn, "mrc", 0, counts)
                        exts = np.flatnonzero(counts)
                    else:
                        regions = np.unique(np.concatenate([r for _, r in logs] + [np.zeros(0, np.int64)]))
                        per = max(1, REGION // E)
                        cand = np.unique((regions[:, None] * REGION // E + np.arange(per)[None, :]).ravel())
                        exts = np.intersect1d(cand, self.sums.extents(txn))
                    recovery.adopt(m, self.sums, txn, exts)
                    done = len(exts)
                if everything:
                    cfg = self.meta.config(txn)
                    cfg["block_sums"] = True
                    self.meta.put_json(txn, "config", b"pool", cfg)
            for path, _ in logs:
                try:
                    remove_file(self.path, path)
                except FileNotFoundError:
                    pass  # another process settled it first
        return done

    def set_mirrored(self, name: str, on: bool, progress: Callable[[int, int], None] | None = None) -> int:
        """Give ``name`` (and its snapshots) a redundant copy, or take it away. Returns extents
        copied. Before the redundant copy goes, every block the primary holds bad is repaired
        from it, so the copy that stays is the good one."""
        m = self.need_mirror()
        with self._lock, self.writer(name) as lu:
            with self.meta.read() as txn:
                family = [name] + [r["name"] for r in self.catalog.snapshots(txn, name)]
            with self.meta.read() as txn:
                exts = np.unique(np.concatenate(
                    [lu.extent_map.mapped()] + [self.load_map(txn, self.record(txn, f)).mapped() for f in family[1:]]
                )).astype(np.int64)
            copied = 0
            if on:
                with self.meta.read() as txn:
                    have = self.sums.extents(txn)
                recovery.copy_to_mirror(m, have, exts, progress)
                copied = len(exts)
            elif lu.mirrored:
                self.flush()
                ex = recovery.Examiner(m, self.sums, repair=True)  # the family is this process's
                for e in exts.tolist():
                    ex.judge(e)
                ex.finish()

            a = self._allocators[0]

            def change(txn: lmdb.Transaction) -> None:
                for f in family:
                    rec = self.record(txn, f)
                    if rec.get("mirrored", False) != on:
                        m = lu.extent_map if f == name else self.load_map(txn, rec)
                        a.set_mirrored_refs(m.mapped(), on)
                    rec["mirrored"] = on
                    self.catalog.put(txn, rec)
            self.commit(change)
            lu.restack(self._store(name, on, lu.epoch), on)
            if not on:
                self._drop_unmirrored_copies()
            return copied

    def check_lu_size(self, size: int | str) -> int:
        """``size`` in bytes if an LU of that size can be created here; InvalidArgument if not."""
        return check_lu_size(size, extent_size=self.extent_size)

    def primary(self) -> DataFile:
        """Failure group 0's data file, where unmirrored LUs live."""
        return self.groups.primary()

    def mirrored_refs(self, txn: lmdb.Transaction) -> np.ndarray:
        """How many references each physical extent has from mirrored LUs and snapshots, counted
        from the maps ``txn`` stores (what the ``mrc`` counts must equal)."""
        n = self.meta.config(txn)["groups"][0]["extents"]
        counts = np.zeros(n, np.int64)
        for r in self.records(txn):
            if r.get("mirrored"):
                np.add.at(counts, self.load_map(txn, r).mapped().astype(np.int64), 1)
        return counts

    def _drop_unmirrored_copies(self) -> None:
        """Punch, in the second group, extents no mirrored LU references any more (space)."""
        with self.meta.read() as txn:
            keep = self.refcounts(txn, "mrc") > 0
            rc = self.refcounts(txn)
        self.groups.punch_second(~keep & (rc > 0))

    def update_lu(self, name: str, **fields: Any) -> None:
        """Set descriptive fields of an LU's record (role, readonly, lpar...). Not size or map."""
        bad = set(fields) & {"id", "name", "size", "kind", "parent", "allocated", "gen", "mirrored", "thick", "fence"}
        if bad:
            raise InvalidArgument(f"cannot set {', '.join(sorted(bad))} this way")
        if fields.get("on_fence") not in (None, *fence.ON_FENCE):
            raise InvalidArgument(f"on_fence is one of {', '.join(fence.ON_FENCE)}, or None (the mount's choice)")

        def change(txn: lmdb.Transaction) -> None:
            rec = self.record(txn, name)
            if rec["kind"] == "snapshot" and "on_fence" in fields:
                raise InvalidArgument(f"{name!r} is a snapshot: nothing writes it")
            rec.update(cast(LURecord, fields))
            if fields.get("on_fence", "") is None:
                rec.pop("on_fence", None)
            self.catalog.put(txn, rec)
        self.commit(change)

    # -- service records (paging, images, partitions): small JSON documents ------------------------

    def svc_get(self, kind: str, name: str) -> dict[str, Any] | None:
        key = f"{kind}/{name}".encode()
        with self.meta.read() as txn:
            return self.meta.svc_record(key, txn.get(key, db=self.meta.db["svc"]))

    def svc_put(self, kind: str, name: str, value: dict[str, Any] | None) -> None:
        """Store (or with None delete) a service record, in a commit of its own; listeners hear
        ``record_changed`` with the kind, the name and the new record (None: removed)."""
        def change(txn: lmdb.Transaction) -> None:
            key = f"{kind}/{name}".encode()
            if value is None:
                txn.delete(key, db=self.meta.db["svc"])
            else:
                self.meta.put_json(txn, "svc", key, value)
        with self._lock:
            self.commit(change)
        self.emit("record_changed", {"kind": kind, "name": name, "record": value})

    def svc_list(self, kind: str) -> list[dict[str, Any]]:
        with self.meta.read() as txn:
            found = (self.meta.svc_record(k, raw) for k, raw in self.meta.iter_prefix(txn, "svc", f"{kind}/".encode()))
            return [r for r in found if r is not None]

    def open_redundant(self, name: str) -> LU:
        """A read-only handle of a mirrored LU that reads the redundant copy (failure group 1):
        what a second node reads while the first still holds the LU (read redirection)."""
        self.need_mirror(healthy=False)
        if self.writing(name) is not None:  # opening it again would hand back the writer itself
            raise InvalidArgument(f"LU {name!r} is written by this process: read it through its own handle")
        copy = self.groups.redundant()
        lu = self.open_lu(name, writable=False)
        if not lu.mirrored:
            lu.close()
            raise InvalidArgument(f"LU {name!r} has no redundant copy")
        lu.read_from(copy, self.meta.commits)
        return lu

    # -- queries --------------------------------------------------------------------------------

    def list_lus(self) -> list[LUInfo]:
        """Every LU and snapshot: name, size, allocated bytes, kind, parent (sorted by name)."""
        with self._lock, self.meta.read() as txn:
            records = self.records(txn)
        return [self.describe(r) for r in records]

    def du(self, name: str | None = None) -> DuReport:
        """Space per LU and snapshot (of ``name`` and its snapshots, or of every one), as ``rbd
        du`` counts it, in bytes: ``provisioned`` (its size), ``used`` (what its map holds),
        ``exclusive`` (extents nothing else references: what removing it alone frees) and
        ``shared`` (the rest). ``total``: the sums, with the shared extents counted once."""
        with self._lock, self.meta.read() as txn:
            records = self.records(txn) if name is None else \
                [self.record(txn, name)] + self.catalog.snapshots(txn, name)
            rc = self.refcounts(txn)
            maps = {r["name"]: (self._writers[r["name"]].extent_map if r["name"] in self._writers
                                else self.load_map(txn, r)) for r in records}
        E, rows, shared_all = self.extent_size, list[DuRow](), [np.zeros(0, np.uint32)]
        for r in sorted(records, key=lambda r: r["name"]):
            phys = maps[r["name"]].mapped()
            only = rc[phys] == 1
            shared_all.append(phys[~only])
            rows.append({"name": r["name"], "kind": r["kind"], "provisioned": r["size"], "used": len(phys) * E,
                         "exclusive": int(only.sum()) * E, "shared": int((~only).sum()) * E})
        shared_once = len(np.unique(np.concatenate(shared_all))) * E
        exclusive = sum(r["exclusive"] for r in rows)
        total = DuTotal(provisioned=sum(r["provisioned"] for r in rows if r["kind"] != "snapshot"),
                        used=exclusive + shared_once, exclusive=exclusive, shared=shared_once)
        return {"lus": rows, "total": total}

    def lu_info(self, name: str) -> LUInfo:
        with self._lock, self.meta.read() as txn:
            rec = self.record(txn, name)
            snaps = self.catalog.snapshots(txn, name) if "@" not in name else []
        info = self.describe(rec)
        info["snapshots"] = [r["name"] for r in snaps]
        info["clones"] = self.catalog.clones(rec)
        info["holder"] = this_process() if name in self._writers else \
            None if "@" in name else self.liveness.lu_holder(rec["id"])
        info["open_for_writing"] = info["holder"] is not None
        if info["mirrored"]:
            m = self.mirror
            with self.meta.read() as txn:  # the pool's record, not this process's view
                states = m.health.states(txn) if m else [FAILED, FAILED]
            missing = [i for i, s in enumerate(states) if s == FAILED] or (m.degraded if m else [])
            dirty = self.dirty_extents(name)
            info["mirror"] = {"state": "degraded" if missing else "resyncing" if any(dirty.values()) else "in-sync",
                              "missing_copy": missing[0] if missing else None,
                              "dirty_extents": dirty[0] + dirty[1]}
        return info

    def map_of(self, name: str) -> tuple[ExtentMap, int]:
        """The extent map and size of an LU or snapshot as they stand: this process's writer's
        (ahead of the stored ones), else the stored ones (for an LU another process writes:
        as of its last commit)."""
        with self._lock:
            lu = self._writers.get(name)
            if lu is not None:
                return lu.extent_map, lu.size
            with self.meta.read() as txn:
                rec = self.record(txn, name)
                return self.load_map(txn, rec), rec["size"]

    def lu_status(self, name: str) -> LUStatus:
        """``lu_info`` as the LU's holder sees it: a process holding it open (asked over its
        control channel) adds ``holder`` (pid), ``open_handles``, ``writable``, ``bytes_written``
        and ``pending_copies``; an LU nobody holds has ``holder`` None."""
        with self.lifecycle.live(name, {"op": "status", "lu": name}) as asked:
            if asked.done:
                return cast(LUStatus, asked.result)
        # held here, by nobody, or by a process that takes no requests (a program of the Python
        # API: its handles and counts are its own to know)
        info = self.lu_info(name)
        lu = self._writers.get(name)
        elsewhere = lu is None and info["holder"] is not None
        return {**info, "open_handles": None if elsewhere else 1 if lu else 0,
                "writable": info["holder"] is not None,
                "bytes_written": None if elsewhere else lu.bytes_written if lu else 0,
                "pending_copies": None if elsewhere else lu.pending_copies if lu else 0}

    def describe(self, rec: LURecord) -> LUInfo:
        """An LU record as the API shows it (sizes in bytes; this process's open writer's figures)."""
        lu = self._writers.get(rec["name"])
        allocated = lu.extent_map.allocated() if lu else rec["allocated"]
        size = lu.size if lu else rec["size"]
        return {"name": rec["name"], "size": size, "allocated": allocated * self.extent_size,
                "kind": rec["kind"], "parent": rec["parent"], "thick": rec.get("thick", False),
                "mirrored": rec.get("mirrored", False), "role": rec.get("role"),
                "readonly": rec["kind"] == "snapshot", "created": rec["created"], "id": rec["id"],
                "on_fence": rec.get("on_fence")}

    def status(self) -> PoolStatus:
        """Capacity and use of the pool, in bytes, with the overcommit ratio and threshold."""
        with self._lock, self.meta.read() as txn:
            cfg = self.meta.config(txn)
            n = cfg["groups"][0]["extents"]
            used = int(np.count_nonzero(self.meta.fg_array(txn, "rc", 0, n, np.uint32, 0)))
            free = int(np.count_nonzero(self.meta.fg_array(txn, "free", 0, n, bool, 0)))
            records = self.records(txn)
            info = self.meta.env.info()
            stat = self.meta.env.stat()
        E = self.extent_size
        provisioned = sum(r["size"] for r in records if r["kind"] != "snapshot")
        capacity = n * E
        used_fraction = (n - free) / n if n else 0.0
        return {
            "path": self.path, "extent_size": E, "capacity": capacity,
            "allocated": used * E, "reserved": (n - free - used) * E, "free": free * E,
            "provisioned": provisioned, "overcommit": provisioned / capacity if capacity else 0.0,
            "threshold": cfg.get("threshold", DEFAULT_THRESHOLD), "used_fraction": used_fraction,
            "threshold_exceeded": used_fraction >= cfg.get("threshold", DEFAULT_THRESHOLD),
            "lus": sum(1 for r in records if r["kind"] != "snapshot"),
            "snapshots": sum(1 for r in records if r["kind"] == "snapshot"),
            "metadata_bytes": (info["last_pgno"] + 1) * stat["psize"],
            "copies": [g["state"] for g in self.groups.describe(cfg, self.dirty_extents())],
        }

    def grow(self, size: int | str) -> None:
        """Grow the pool to ``size`` bytes (whole extents); shrinking a pool is not supported."""
        n_new = parse_size(size, what="pool size") // self.extent_size
        with self._lock:
            def change(txn: lmdb.Transaction) -> None:
                cfg = self.meta.config(txn)
                n_old = cfg["groups"][0]["extents"]
                if n_new < n_old:
                    raise InvalidArgument(
                        f"pool cannot shrink: {format_size(n_new * self.extent_size)} is less than the "
                        f"current {format_size(n_old * self.extent_size)}")
                if n_new > MAX_EXTENTS:
                    raise InvalidArgument("pool size is too large for its extent size")
                self.groups.grow(n_new)
                for group in cfg["groups"]:
                    group["extents"] = n_new
                init_free(self.meta, txn, 0, n_old, n_new)
                self.meta.put_json(txn, "config", b"pool", cfg)
            self.commit(change)

    def set_threshold(self, threshold: float) -> None:
        if not 0.0 < threshold <= 1.0:
            raise InvalidArgument("threshold must be a fraction in (0, 1]")

        def change(txn: lmdb.Transaction) -> None:
            cfg = self.meta.config(txn)
            cfg["threshold"] = threshold
            self.meta.put_json(txn, "config", b"pool", cfg)
        self.commit(change)
        self._threshold = threshold

    def _usage(self, fraction: float) -> None:
        """Called by the allocator after each reservation with the pool's used fraction."""
        over = fraction >= self._threshold
        if over and not self._over_threshold:
            log.warning("pool %s is %.0f%% allocated, over its %.0f%% threshold",
                        self.path, fraction * 100, self._threshold * 100)
            self.emit("pool_threshold", {"used_fraction": fraction, "threshold": self._threshold})
        self._over_threshold = over


def _empty_dir(path: str) -> None:
    for entry in os.listdir(path):
        p = os.path.join(path, entry)
        shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else os.unlink(p)

