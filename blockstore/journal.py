"""The journal: how a change of the pool becomes durable, all of it or none.

A commit first completes every LU's deferred copies on write (lu.py) and syncs the data
files (storage/), then writes, in one LMDB transaction, the caller's change together with
everything pending in memory: the maps of the LUs this process writes (catalog.py), the
reference counts the allocator changed, and the checksums the mirror recorded. Only after that transaction is durable are freed extents punched and handed out
again. So after a crash the metadata describes exactly the last commit, and every extent it
maps holds what was written before that commit. A flush is a commit with no change of its own:
what it makes durable is every write acknowledged before it.

What a flush writes: nothing when nothing was written since the last one; one ``fdatasync`` of
each data file written (both copies of a mirror, at once) when the writes changed no map or
count (overwrites in place of an LU's own extents: a mirror's new checksums wait in memory for
the next commit, their regions in the activity log, unless the flush is a checkpoint); otherwise
one commit (the data synced, then one LMDB transaction). Flushes are grouped: a flush that arrives while another is
under way waits for the next one, which covers it and every other flush that waited with it (a
flush covers the writes acknowledged before it began, and these were), so N threads that each
write and fsync share one sync, not N in a row. Once a flush has left an LU nothing to commit,
a mount's fsync of that LU's file is the data file's sync alone, done in C without this module
(native/fastpath.h, bs_table_fsync), until a change that may need a commit (a write the C path
could not take, a change of the map) sends fsyncs here again.
"""
from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import lmdb

from . import fence
from .errors import Fenced, ReadOnly

if TYPE_CHECKING:
    from .allocator import Allocator
    from .catalog import Catalog
    from .lu import LU
    from .meta import Meta
    from .storage.groups import FailureGroups


class Journal:
    """Commits of one pool. ``writers`` is the pool's table of LUs this process writes (name ->
    handle): their maps are part of every commit."""

    def __init__(self, meta: "Meta", lock: threading.RLock, groups: "FailureGroups", allocator: "Allocator",
                 catalog: "Catalog", writers: "dict[str, LU]", *, readonly: bool = False, path: str = "") -> None:
        self.meta, self.lock, self.groups, self.alloc = meta, lock, groups, allocator
        self.catalog, self.writers, self.readonly, self.path = catalog, writers, readonly, path
        self.fenced: Fenced | None = None  # a commit a fence refused: no later one is made
        #: (LU name, epoch) -> None or Fenced: whether this process may still commit what it
        #: wrote to an LU under that epoch (a cluster node's gate, cluster/serving.py)
        self.gate: Callable[[str, int], None] | None = None
        # group flushes: numbered as they begin; one under way while begun > ended
        self._flushes = threading.Condition(threading.Lock())
        self._begun = self._ended = 0
        self._checkpoint_upto = 0  # the last flush number a checkpoint waits for (``flush``)
        self._failed: dict[int, BaseException] = {}  # flush number -> why it failed (the last few)

    def pending(self) -> bool:
        """Whether memory holds changes no commit has stored yet."""
        return self.alloc.pending or any(lu.extent_map.unsaved for lu in self.writers.values())

    def save(self, txn: lmdb.Transaction, lu: "LU") -> None:
        """Store ``lu``'s map in ``txn`` if it changed since its last save."""
        if lu.extent_map.unsaved:
            lu.saved(self.catalog.save_map(txn, lu.name, lu.extent_map, lu.size))

    def flush(self, *, checkpoint: bool = True) -> None:
        """Make every acknowledged write of every LU open in this pool durable: by the flush
        that begins next (this thread's, when none is under way; else one that a waiting
        thread begins as the one under way ends). Raises what that flush raised.

        ``checkpoint`` False (an LU's own flush: an fsync) lets the checksums a mirror recorded
        stay in memory while the regions they describe are in the activity log, which a
        recovery settles (storage/activity.py): the copies' syncs are then all the flush
        writes. True: they are committed too, so that another process, a scrub or the next open
        finds them on record (a group holding a checkpoint flush is one)."""
        if self.lock._is_owned():  # type: ignore[attr-defined]
            # called under the pool's lock: the flush under way needs that lock to end, so this
            # one cannot wait for it; it flushes at once (nothing else flushes meanwhile)
            return self._flush_now(checkpoint)
        with self._flushes:
            mine = self._begun + 1  # the first flush to begin from now on covers my writes
            if checkpoint:
                self._checkpoint_upto = max(self._checkpoint_upto, mine)
            while self._ended < mine and self._begun > self._ended:
                self._flushes.wait()  # one under way began before my writes were all acknowledged
            if self._ended >= mine:
                if mine in self._failed:
                    raise copy.copy(self._failed[mine])  # a copy: each thread's own traceback
                return
            self._begun = mine
            checkpoint = self._checkpoint_upto >= mine  # every waiter of this group has said so by now
        failed: BaseException | None = None
        try:
            self._flush_now(checkpoint)
        except BaseException as e:
            failed = e
            raise
        finally:
            with self._flushes:
                self._ended = mine
                if failed is not None:
                    self._failed = {n: e for n, e in self._failed.items() if n > mine - 8}  # waiters of older ones are gone
                    self._failed[mine] = failed
                self._flushes.notify_all()

    def _flush_now(self, checkpoint: bool) -> None:
        with self.lock:
            if self.readonly:
                return
            # read before anything is settled or stored: a change counted later may be one
            # this flush does not hold, a commit counted later one whose record it did not follow
            marks = [(lu, lu.flush_begins()) for lu in self.writers.values()]
            word = self.meta.commits
            seen = word.value if word is not None else 0
            for lu in self.writers.values():
                lu.settle()  # a deferred copy changes the map: it completes before the choice
            mirror = self.groups.mirror
            # checksums the mirror recorded (and the extents it touched) since the last commit
            sums = mirror is not None and bool(mirror.pending or mirror.touched)
            if self.pending() or (sums and (checkpoint or (mirror is not None and mirror.must_commit()))):
                self.commit(None)
            elif self.groups.dirty:
                self._check_fences()
                # overwrites in place (a mirror's checksums kept for the next commit, their
                # regions logged): the data is all there is to make durable
                self.groups.sync(keep_armed=True)
            for lu, mark in marks:
                lu.flush_covered(mark, word, seen)  # until either moves, its fsync is the data files' sync

    def _check_fences(self) -> None:
        """What a commit checks for each LU written under an ownership epoch (the node's gate,
        the pool's record), for a flush that commits nothing: its answer is not a success for
        a writer that lost its LU."""
        if any(lu.epoch is not None for lu in self.writers.values()):
            with self.meta.read() as txn:
                for lu in self.writers.values():
                    self._check_fence(txn, lu)

    def _check_fence(self, txn: lmdb.Transaction, lu: "LU") -> None:
        """Fenced if ``lu`` is written under an epoch this process may no longer commit under
        (no record: ``change`` renames or removes it in this very commit)."""
        if lu.epoch is not None and (rec := self.catalog.get(txn, lu.name, missing_ok=True)):
            if self.gate is not None:
                self.gate(lu.name, lu.epoch)  # the data path's layer: the node's own view
            fence.check(rec, lu.epoch)      # the metadata layer: the pool's record

    def commit(self, change: Callable[[lmdb.Transaction], Any] | None) -> Any:
        """Sync data, then commit ``change`` with every pending map, count and checksum change,
        atomically; returns what ``change`` returned.

        ``change`` must validate before it mutates in-memory state; if it or the commit fails,
        the pending changes it added are rolled back so memory matches the last commit.
        """
        if self.readonly:
            raise ReadOnly(f"the pool at {self.path} is open read-only")
        if self.fenced is not None:
            # what memory holds mixes a deposed writer's changes with the others': none is stored
            raise Fenced(f"{self.fenced}; this process commits nothing more (reopen the pool)")
        with self.lock:
            for lu in self.writers.values():
                lu.settle()  # a deferred copy completes before its data is synced and its map stored
            self.groups.sync()
            a, mirror = self.alloc, self.groups.mirror
            marks = a.marks()
            saved = {name: (set(lu.extent_map.dirty), lu.extent_map.resized) for name, lu in self.writers.items()}
            try:
                with self.meta.write() as txn:
                    result = change(txn) if change else None
                    for lu in self.writers.values():
                        self._check_fence(txn, lu)  # a deposed owner stores nothing, not even the others' changes
                        self.save(txn, lu)
                    punch = a.commit(txn)
                    # the copies as the pool records them: what this commit stores was written
                    # without a copy another process failed
                    self.groups.follow(txn)
                    if mirror is not None:
                        mirror.commit_sums(txn, a.unmirrored, lambda e: a.counts_of(txn, e) > 0)
            except BaseException as e:
                if isinstance(e, Fenced) and e.final:  # deposed: never again; in doubt: later
                    self.fenced = e
                a.truncate_pending(*marks)
                for name, (dirty, resized) in saved.items():
                    if name in self.writers:
                        self.writers[name].extent_map.dirty |= dirty
                        self.writers[name].extent_map.resized |= resized
                raise
            if mirror is not None:
                mirror.flushed()
            a.after_commit(punch)
            return result
