"""LU lifecycle: create, snapshot, clone, rollback, flatten, resize, remove, rename.

Each operation is a commit (journal.py) of the catalog's records (catalog.py) and the reference
counts (allocator.py), done under the pool's lock through the pool's public parts; an LU this
process writes takes part through its handle (lu.py), one another process holds open is asked
of that process (control.py) where the operation can be done live (snapshot, clone, grow).
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import lmdb
import numpy as np

from . import control
from .catalog import LURecord, check_lu_size
from .errors import AlreadyExists, Busy, InvalidArgument, NotFound, ReadOnly
from .extents import UNMAPPED, extents_for
from .names import check_name, snapshot_name, split_snapshot
from .records import LUInfo
from .sizes import format_size

if TYPE_CHECKING:
    from .lu import LU
    from .pool import Pool


class Lifecycle:
    """The lifecycle operations of ``pool``'s LUs (the pool's methods of the same names)."""

    def __init__(self, pool: "Pool") -> None:
        self.pool = pool

    def create_lu(self, name: str, size: int | str, *, thick: bool = False, mirrored: bool = False,
                  allow_empty: bool = False) -> LU:
        """Create a thin (or thick: every extent reserved now) LU and return it open for writing.

        ``mirrored`` keeps a redundant copy of every extent in the second failure group.
        ``allow_empty`` permits size 0 (a file created through a mount, sized by truncate next).
        """
        check_name(name)
        n = check_lu_size(size, allow_empty, self.pool.extent_size)
        if mirrored and self.pool.mirror is None:
            raise InvalidArgument("the pool has no second failure group for mirrored LUs (pool failgrp add DIR)")
        if not mirrored:
            self.pool.primary()  # refused before anything is written when group 0 is gone
        with self.pool.lock:
            def change(txn: lmdb.Transaction) -> None:
                self.pool.catalog.new(txn, name, n, "lu", None, thick=thick, mirrored=mirrored)
            if thick:
                self.pool.allocator.ensure(extents_for(n, self.pool.extent_size))
            self.pool.commit(change)
            lu = self.pool.open_lu(name)
            if thick:
                lu.fill_holes(0)
                self.pool.flush()
            self.pool.emit("lu_created", {"name": name, "size": n, "thick": thick, "mirrored": mirrored})
            return lu

    def snapshot(self, name: str, snap: str) -> LUInfo:
        """A read-only, point-in-time copy ``name@snap`` sharing every extent (O(allocated chunks)).
        An LU another process holds open is snapshotted by that process, asked over its control
        channel (control.py)."""
        full = snapshot_name(name, snap)
        with self.live(name, {"op": "snapshot", "lu": name, "snap": snap}) as asked:
            if asked.done:
                return cast(LUInfo, asked.result)
            with self.pool.lock, self.pool.writer(name) as lu:
                def change(txn: lmdb.Transaction) -> LURecord:
                    return self._share(txn, lu, full, "snapshot", name)
                self._freeze(lu)
                return self.pool.describe(self.pool.commit(change))

    def _freeze(self, lu: LU) -> None:
        """Before a commit shares ``lu``'s extents: none is written in place from here on (held
        copies completed first). The point in time of a snapshot or clone: a write the direct
        path had in flight is in it, the next one copies. If the commit then fails, the extents
        only stay marked shared (a write copies one it did not need to)."""
        lu.extent_map.share_all()

    @contextmanager
    def live(self, name: str, request: dict[str, Any]) -> Iterator[Any]:
        """Run the block for ``name``; if another process holds it open for writing and serves
        a control channel (control.py), ask that process instead: ``asked.done``, ``asked.result``."""
        asked = SimpleNamespace(done=False, result=None)
        pid = self.holder_of(name)
        if pid:
            try:
                asked.result, asked.done = control.ask(self.pool.path, pid, request), True
            except NotFound:
                pass  # no control channel: the block meets the holder's Busy
        yield asked

    def holder_of(self, name: str) -> int | None:
        """The pid of another process holding LU ``name`` open for writing, if any."""
        if self.pool.writing(name) is not None or "@" in name:
            return None
        with self.pool.meta.read() as txn:
            rec = self.pool.record(txn, name, missing_ok=True)
        who = self.pool.liveness.lu_holder(rec["id"]) if rec else None
        return who["pid"] if who and who["pid"] and who["pid"] != os.getpid() else None

    def clone(self, source: str, new: str) -> LUInfo:
        """A writable copy-on-write LU ``new`` of an LU or snapshot ``source``."""
        check_name(new)
        base, snap = split_snapshot(source)
        with self.pool.lock:
            with self.pool.meta.read() as txn:
                sealed = bool(self.pool.record(txn, source).get("readonly"))
            if snap is not None or sealed:  # nothing writes it, so its stored map is the truth
                def change(txn: lmdb.Transaction) -> LURecord:
                    src = self.pool.record(txn, source)
                    return self._share(txn, None, new, "clone", source, src=src)
                return self.pool.describe(self.pool.commit(change))
            with self.live(source, {"op": "clone", "source": source, "new": new}) as asked:
                if asked.done:
                    return cast(LUInfo, asked.result)
                with self.pool.writer(source) as lu:
                    self._freeze(lu)
                    return self.pool.describe(self.pool.commit(lambda txn: self._share(txn, lu, new, "clone", source)))

    def _share(self, txn: lmdb.Transaction, lu: LU | None, new: str, kind: str, parent: str,
               src: LURecord | None = None) -> LURecord:
        """Create ``new`` with the same map as ``lu`` (or the stored ``src``), counting the shares."""
        if lu is not None:
            self.pool.journal.save(txn, lu)  # the handle's pending map is part of what is shared
            src = self.pool.record(txn, lu.name)
        assert src is not None
        rec = self.pool.catalog.new(txn, new, src["size"], kind, parent, thick=False, mirrored=src.get("mirrored", False))
        # The stored chunks (just saved) are the map: copying them costs O(allocated chunks), where
        # counting the in-memory map would cost O(size).
        chunks = self.pool.catalog.copy_map(txn, src, rec)
        phys = [arr[arr != UNMAPPED] for arr in (np.frombuffer(raw, np.uint32) for raw in chunks)]
        rec["allocated"] = sum(map(len, phys))
        self.pool.catalog.put(txn, rec)
        if phys:
            self.pool.allocator.ref_many(np.concatenate(phys), rec["mirrored"])
        return rec

    def rollback(self, name: str, snap: str) -> None:
        """Make ``name`` again what it was when ``name@snap`` was taken (size included); ``snap``
        is the snapshot's name or its whole ``NAME@SNAP`` (as rbd takes it)."""
        if snap.startswith(name + "@"):
            snap = snap[len(name) + 1:]
        full = snapshot_name(name, snap)
        with self.pool.lock, self.pool.writer(name) as lu:
            with self.pool.meta.read() as txn:
                srec = self.pool.record(txn, full)
                smap = self.pool.load_map(txn, srec)
            a = self.pool.allocator

            def change(txn: lmdb.Transaction) -> None:
                a.unref_many(lu.extent_map.mapped(), lu.mirrored)
                a.ref_many(smap.mapped(), lu.mirrored)
                # every stored chunk of either map is rewritten or deleted (the chunks that exist),
                # and the record takes the snapshot's size
                smap.dirty, smap.resized = lu.extent_map.made | smap.made, True
                lu.replace_map(smap, srec["size"])
            old_map, old_size = lu.extent_map, lu.size
            try:
                self.pool.commit(change)
            except BaseException:
                lu.replace_map(old_map, old_size)
                raise

    def flatten(self, name: str) -> int:
        """Copy every extent ``name`` shares into its own, and drop its parent link.

        Returns the number of extents copied. Only a clone has a parent to let go of: an LU
        shares extents with its own snapshots alone, and copying those would only double the
        space it takes (refused, as rbd refuses flattening an image without a parent).
        """
        with self.pool.lock, self.pool.writer(name) as lu:
            with self.pool.meta.read() as txn:
                kind = self.pool.record(txn, name)["kind"]
            if kind != "clone":
                raise InvalidArgument(f"{name!r} is not a clone: it has no parent to stop sharing with "
                                      f"(what it shares, it shares with its own snapshots)")
            copied = lu.copy_shared()

            def change(txn: lmdb.Transaction) -> None:
                rec = self.pool.record(txn, name)
                self.pool.catalog.unlink_clone(txn, rec)
                rec["parent"] = None
                if rec["kind"] == "clone":
                    rec["kind"] = "lu"
                self.pool.catalog.put(txn, rec)
            self.pool.commit(change)
            return copied

    def resize(self, name: str, size: int | str, *, force: bool = False, allow_empty: bool = False) -> None:
        """Grow ``name`` to ``size`` bytes; shrinking needs ``force`` and frees the cut-off tail."""
        n = check_lu_size(size, allow_empty, self.pool.extent_size)
        if "@" in name:
            raise ReadOnly(f"{name!r} is a snapshot and cannot be resized")
        if self.holder_of(name) and n >= self.pool.lu_info(name)["size"]:
            with self.live(name, {"op": "grow", "lu": name, "size": n}) as asked:
                if asked.done:
                    return
        with self.pool.lock, self.pool.writer(name) as lu:
            if n < lu.size:
                if not force:
                    raise InvalidArgument(
                        f"shrinking {name!r} from {format_size(lu.size)} to {format_size(n)} loses what lies past "
                        "the new end; add --force")
                lu.discard(n, lu.size - n)
            old_size = lu.size
            lu.resize_map(n)
            if lu.thick:
                lu.fill_holes(0)
            self.pool.commit(None)
        self.pool.emit("lu_resized", {"name": name, "size": n, "old_size": old_size})

    def remove(self, name: str, *, recursive: bool = False) -> list[str]:
        """Remove an LU (with its snapshots if ``recursive``) or a snapshot ``LU@SNAP``.

        Refused while anything has clones of it. Returns the names removed.
        """
        base, snap = split_snapshot(name)
        with self.pool.lock:
            with self.pool.meta.read() as txn:  # what depends on it, from the indexes (catalog.py)
                rec = self.pool.record(txn, name)
                lu_id = rec["id"]
                family = [rec] + (self.pool.catalog.snapshots(txn, name) if snap is None else [])
            snaps = [r["name"] for r in family[1:]]
            if snaps and not recursive:
                raise Busy(f"LU {name!r} has snapshots ({', '.join(snaps)}); remove them first or use --recursive")
            doomed = [name] + snaps
            clones = sorted(c for r in family for c in self.pool.catalog.clones(r))
            if clones:
                raise Busy(f"{name!r} has clones ({', '.join(clones)}); remove or flatten them first")
            if self.pool.writing(name) is not None:
                raise Busy(f"LU {name!r} is open in this process; close it first")
            # A snapshot never changes, so only a live LU needs its holder lock for removal.
            holder = self.pool.liveness.hold_lu(lu_id, f"LU {name!r}") if snap is None else None
            a = self.pool.allocator

            def change(txn: lmdb.Transaction) -> None:
                for victim in doomed:
                    rec = self.pool.record(txn, victim)
                    a.unref_many(self.pool.load_map(txn, rec).mapped(), rec.get("mirrored", False))
                    self.pool.catalog.remove(txn, rec)
            try:
                self.pool.commit(change)
            except BaseException:
                if holder:
                    holder.release()
                raise
            if holder:
                self.pool.liveness.end(holder)  # the LU is gone: so is its claim
        for victim in doomed:
            self.pool.emit("lu_removed", {"name": victim})
        return doomed

    def rename(self, old: str, new: str) -> None:
        """Rename an LU; its snapshots follow (``old@s`` becomes ``new@s``) and clones keep their
        parent. Works while this process has it open; refused while another process writes it."""
        check_name(old)
        check_name(new)
        with self.pool.lock:
            with self.pool.meta.read() as txn:
                rec = self.pool.record(txn, old)
            if rec["kind"] == "snapshot":
                raise InvalidArgument(f"{old!r} is a snapshot; only LUs can be renamed")
            mine = self.pool.writing(old)
            holder = None if mine else self.pool.liveness.hold_lu(rec["id"], f"LU {old!r}")

            def change(txn: lmdb.Transaction) -> None:
                if self.pool.record(txn, new, missing_ok=True) is not None:
                    raise AlreadyExists(f"an LU named {new!r} already exists")
                renames = {old: new}
                moved_clones: list[tuple[str, str, str]] = []  # (parent, old name, new name)
                for r in self.pool.records(txn):
                    if r["kind"] == "snapshot" and r["parent"] == old:
                        renames[r["name"]] = f"{new}@{r['name'].split('@', 1)[1]}"
                for r in self.pool.records(txn):
                    changed = False
                    if r["parent"] in renames:
                        r["parent"] = renames[r["parent"]] if r["kind"] != "snapshot" else new
                        changed = True
                    if r["name"] in renames:
                        txn.delete(r["name"].encode(), db=self.pool.meta.db["lus"])
                        if r["kind"] == "clone" and r["parent"] and r["parent"] not in renames.values():
                            moved_clones.append((str(r["parent"]), r["name"], renames[r["name"]]))
                        r["name"] = renames[r["name"]]
                        r["clones"] = sorted(renames.get(c, c) for c in r.get("clones", []))
                        changed = True
                    if changed:
                        self.pool.catalog.put(txn, r)
                for parent, was, now in moved_clones:
                    self.pool.catalog.renamed_clone(txn, parent, was, now)
            try:
                self.pool.commit(change)
            finally:
                if holder:
                    holder.release()
            if mine:
                self.pool.renamed_writer(old, new)

