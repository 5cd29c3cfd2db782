"""The storage stack of one pool, built and re-pointed here and nowhere else (as s3backer builds
its stores in one function): failure group 0's data file, and with a second group the mirror
over both. Which store an LU writes to, a copy failing or coming back, a group added, rebuilt or
grown: all of it goes through ``FailureGroups``; the layers above ask it for a store and never
assemble one themselves.

Each group's data file carries a label (datafile.py) naming the pool and the group; a file
without the right label is refused, so a copied pool never writes into its original's files.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import AlreadyExists, BlockstoreError, InvalidArgument, PoolCorrupt
from ..extents import runs
from ..meta import Meta
from .activity import ActivityLog
from .checksums import SumStore
from .datafile import DataFile, fsync_dir
from .health import FAILED, OK, RESYNCING, CopyHealth
from .mirror import MirrorFile
from . import Store
from .fenced import FencedStore
from .redirect import RedirectedCopy

log = logging.getLogger("blockstore")


class FailureGroups:
    """The data files of a pool at ``root`` and the mirror over them.

    ``files[i]`` is group ``i``'s open data file (absent while it cannot be opened); ``mirror``
    the mirror layer when the pool has a second group. ``on_event(kind, info)`` hears a copy
    failing.
    """

    def __init__(self, root: str, meta: Meta, extent_size: int, pool_id: str | None, sums: SumStore,
                 activity: ActivityLog, on_event: Callable[[str, dict[str, Any]], None], *, readonly: bool = False) -> None:
        """``readonly``: the files are opened for reading and nothing is written to them (no label
        brought up to date: a pool that needs it is checked as far as it can be)."""
        self.root, self.meta, self.E, self.pool_id = root, meta, extent_size, pool_id
        self.readonly = readonly
        self.sums, self.activity, self.on_event = sums, activity, on_event
        self.files: dict[int, DataFile] = {}
        self.mirror: MirrorFile | None = None
        #: group -> why its file could not be opened here (at open, or when brought back)
        self.problems: dict[int, str] = {}

    def open(self, cfg: dict[str, Any]) -> None:
        """Open every group the config names; a missing group 0 is tolerated when group 1 can
        serve the mirrored LUs (``pool failgrp replace --group 0`` rebuilds it)."""
        try:
            self.files[0] = self.open_group(cfg, 0)
        except BlockstoreError as e:
            if len(cfg["groups"]) < 2:
                raise
            self.problems[0] = str(e)
            log.warning("failure group 0 is unavailable: %s; only mirrored LUs can be used", e)
        if len(cfg["groups"]) > 1:
            self._attach_mirror(cfg)

    def close(self) -> None:
        if self.mirror:
            self.mirror.close()
        for df in self.files.values():
            df.close()

    # -- paths and labels ---------------------------------------------------------------------

    def path(self, cfg: dict[str, Any], fg: int) -> str:
        p = cfg["groups"][fg]["path"]
        return p if os.path.isabs(p) else os.path.join(self.root, p)

    def stored_path(self, path: str) -> str:
        """A group's path as the config keeps it: relative where it lies inside the pool's
        directory, so a copied or moved pool takes its own files along."""
        rel = os.path.relpath(path, self.root)
        return path if rel.startswith("..") else rel

    def label(self, fg: int, path: str) -> dict[str, Any]:
        """What a data file of group ``fg`` at ``path`` says of itself: the pool's id, and for a
        group outside the pool's directory, the pool's path (a copied pool is another pool)."""
        inside = not os.path.relpath(path, self.root).startswith("..")
        return {"pool": self.pool_id, "group": fg, "owner": None if inside else self.root}

    def open_group(self, cfg: dict[str, Any], fg: int) -> DataFile:
        """Open group ``fg``'s data file, refusing one that is not this pool's or is too short."""
        path = self.path(cfg, fg)
        need = cfg["groups"][fg]["extents"] * self.E
        df = DataFile(path, root=self.root, readonly=self.readonly)
        try:
            size = df.size()
            unlabelled = self.pool_id is None or not cfg["groups"][fg].get("labelled")
            if self.readonly and unlabelled:
                pass  # made before labels: a writable open gives it one
            elif size == need and not cfg["groups"][fg].get("labelled"):
                # made before data files had labels: give it one past the extents
                df.grow(need)
                df.write_label(self.label(fg, path))
                cfg["groups"][fg]["labelled"] = True
                self.meta.set_config(groups=cfg["groups"])
            label = {"pool": self.pool_id, "group": fg} if self.readonly and unlabelled else df.label()
            if label is None or label.get("pool") != self.pool_id or label.get("group") != fg:
                raise PoolCorrupt(f"{path} is not failure group {fg} of this pool (no matching label); "
                                      f"'pool failgrp replace' makes a new one")
            owner = label.get("owner")
            if owner is not None and owner != self.root:
                if self.pool_id is not None and holds_pool(str(owner), self.pool_id):
                    raise BlockstoreError(f"{path} belongs to the pool at {owner} (this pool is a copy of it); "
                                          f"'pool failgrp replace DIR' gives this pool its own")
                if not self.readonly:
                    df.write_label(self.label(fg, path))  # the pool was moved: the file follows it
            why = df.problem(need)
            if why:
                raise PoolCorrupt(f"data file {why}: damaged pool")
        except BaseException:
            df.close()
            raise
        return df

    def _attach_mirror(self, cfg: dict[str, Any]) -> None:
        """Build the mirror over groups 0 and 1 as the pool's record of the copies has them
        (health.py): a copy failed there stays out of service, one being resynced is written but
        not read; a group that cannot be opened is recorded failed, leaving the pool degraded,
        not shut."""
        health = CopyHealth(self.meta)
        try:
            self.files[1] = self.open_group(cfg, 1)
        except BlockstoreError as e:
            self.problems[1] = str(e)
            log.warning("failure group 1 is unavailable: %s; mirrored LUs run degraded", e)
        paths = [self.path(cfg, 0), self.path(cfg, 1)]
        if not self.files:
            raise BlockstoreError(f"both failure groups are unavailable ({paths[0]}, {paths[1]})")
        with self.meta.read() as txn:
            states = health.states(txn)
        copies = [self.files.get(i) if states[i] != FAILED else None for i in (0, 1)]
        self.mirror = MirrorFile(copies[0], copies[1], paths, self.E, health=health, sums=self.sums,
                                 activity=self.activity, need=cfg["groups"][0]["extents"] * self.E,
                                 on_event=self.on_event, readable=[s == OK for s in states],
                                 readonly=self.readonly)
        for i in self.mirror.degraded:
            why = states[i] == FAILED and "failed before this open" or "unavailable at open"
            self.on_event("mirror_degraded", {"copy": i, "path": paths[i], "why": why})
            if states[i] != FAILED and not self.readonly:
                with self.meta.write() as txn:
                    health.set_state(txn, i, FAILED, why)

    def follow(self, txn: Any) -> None:
        """Take the pool's record of the copies, inside ``txn`` (mirror.py: ``follow``)."""
        if self.mirror is None:
            return
        cfg = self.meta.config(txn)

        def reopen(i: int) -> DataFile | None:
            try:
                return self._swap(cfg, i)
            except BlockstoreError as e:
                log.warning("failure group %d is back in service for the pool but not here: %s", i, e)
                return None
        self.mirror.follow(txn, reopen)

    def bring_back(self, cfg: dict[str, Any]) -> None:
        """Every failed copy back in service to be resynced: its file reopened (the same file,
        this pool's label; BlockstoreError naming the group if it is still unavailable) and
        recorded ``resyncing``: from the next commit of each process on, it is written again."""
        m = self.mirror
        assert m is not None
        with self.meta.write() as txn:
            states = m.health.states(txn)
            for i in (0, 1):
                if states[i] != FAILED and m.copies[i] is not None:
                    continue
                try:
                    m.attach(i, self._swap(cfg, i), readable=states[i] == OK)
                except BlockstoreError as e:
                    raise BlockstoreError(f"failure group {i} is still unavailable: {e}") from None
                if states[i] == FAILED:
                    m.health.set_state(txn, i, RESYNCING)

    # -- the stores ---------------------------------------------------------------------------

    def primary(self) -> DataFile:
        """Failure group 0's data file, where unmirrored LUs live."""
        df = self.files.get(0)
        if df is None:
            raise BlockstoreError("failure group 0 is unavailable: only mirrored LUs can be used "
                                  "until 'pool failgrp replace --group 0' rebuilds it")
        return df

    def store(self, mirrored: bool, may_write: Callable[[], None] | None = None) -> Store:
        """The store an LU's extents live in: the mirror for a mirrored LU, else group 0; with
        ``may_write``, behind the data path's fence (fenced.py) that asks it before every write."""
        store: Store = self.mirror if mirrored and self.mirror is not None else self.primary()
        return store if may_write is None else FencedStore(store, may_write)

    def allocation_store(self) -> DataFile | MirrorFile:
        """The store the allocator punches freed extents in (both copies when mirrored: an
        extent's index is the same in both groups)."""
        return self.mirror or self.files[0]

    def redundant(self) -> RedirectedCopy:
        """Group 1's copy, for reads that must not touch group 0 (read redirection); each read
        refused where the copy lacks the extent (redirect.py)."""
        m = self.mirror
        if m is None or m.copies[1] is None:
            raise BlockstoreError("the redundant copy is unavailable")
        return RedirectedCopy(m.copies[1], m.health, 1, self.E)

    @property
    def dirty(self) -> bool:
        """Whether anything was written since the last sync."""
        return self.mirror.dirty_data if self.mirror else self.files[0].dirty

    def sync(self, keep_armed: bool = False) -> None:
        """Sync the data files (``keep_armed``: MirrorFile.sync)."""
        if self.mirror:
            self.mirror.sync(keep_armed)
        else:
            self.files[0].sync()

    # -- changes of the stack -----------------------------------------------------------------

    def create_second(self, directory: str, extents: int) -> tuple[str, dict[str, Any]]:
        """Make group 1's data file in ``directory`` (refused inside group 0, or where a data file
        is); returns its path and its config entry, which the caller commits before ``attach_second``."""
        check_second_dir(directory, self.root)
        d = os.path.abspath(directory)
        made = not os.path.exists(d)
        os.makedirs(d, mode=0o700, exist_ok=True)
        if made:
            fsync_dir(os.path.dirname(d))
        path = os.path.join(d, "data")
        DataFile(path, root=self.root, create_size=extents * self.E, label=self.label(1, path)).close()
        return path, {"path": self.stored_path(path), "extents": extents, "labelled": True}

    def attach_second(self, cfg: dict[str, Any]) -> None:
        """The config now names group 1: open it and build the mirror."""
        self._attach_mirror(cfg)

    def _swap(self, cfg: dict[str, Any], i: int) -> DataFile:
        """Group ``i``'s file opened anew (the same file, this pool's label) in place of the one
        held; BlockstoreError when it is still unavailable."""
        df = self.open_group(cfg, i)
        old = self.files.get(i)
        if old is not None and old is not df:
            old.close()
        self.files[i] = df
        return df

    def install(self, i: int, df: DataFile, path: str) -> None:
        """A rebuilt copy of group ``i`` (whole, synced, at ``path``) replaces the old one."""
        old = self.files.get(i)
        if old is not None:
            old.close()
        self.files[i] = df
        assert self.mirror is not None
        self.mirror.paths[i] = path
        self.mirror.dirty[i].clear()
        self.mirror.attach(i, df, readable=True)

    def grow(self, extents: int) -> None:
        for df in self.files.values():
            df.grow(extents * self.E)
        if self.mirror is not None:
            self.mirror.grow(extents * self.E)

    def punch_second(self, drop: np.ndarray) -> None:
        """Punch, in group 1, the extents ``drop`` names (bool per extent): what no mirrored LU
        references any more takes no space there."""
        m = self.mirror
        if m is None or m.copies[1] is None:
            return
        for start, count in runs(np.flatnonzero(drop)):
            m.copies[1].punch(start * self.E, count * self.E)

    def describe(self, cfg: dict[str, Any], dirty: dict[int, int]) -> list[dict[str, Any]]:
        """Each group: path, extents, state (the pool's record: ok, failed, resyncing; or
        unavailable where this process cannot open it), extents its copy lacks."""
        states = [OK, OK]
        if self.mirror is not None:
            with self.meta.read() as txn:
                states = self.mirror.health.states(txn)
        out = []
        for fg in range(len(cfg["groups"])):
            here = self.mirror.copies[fg] is not None if self.mirror else fg in self.files
            state = states[fg] if here or states[fg] == FAILED else "unavailable"
            path = self.path(cfg, fg)
            problem = None if here else self.problems.get(fg)
            out.append({"group": fg, "path": path, "extents": cfg["groups"][fg]["extents"],
                        "state": state, "dirty_extents": dirty[fg], "problem": problem,
                        # there, but not a whole data file of this pool's (a label or a length wrong)
                        "damaged": problem is not None and os.path.exists(path)})
        return out


def check_second_dir(directory: str, pool_path: str) -> None:
    d = os.path.abspath(directory)
    if d == os.path.abspath(pool_path) or d.startswith(os.path.abspath(pool_path) + os.sep + "fg0"):
        raise InvalidArgument("the second failure group must be outside the first")
    if os.path.exists(os.path.join(d, "data")):
        raise AlreadyExists(f"{d} already holds a data file")
    if os.path.exists(d) and not os.path.isdir(d):
        raise InvalidArgument(f"{d} is not a directory")


def holds_pool(path: str, pool_id: str) -> bool:
    """Whether a pool with id ``pool_id`` lives at ``path`` (its first data file says so)."""
    try:
        df = DataFile(os.path.join(path, "fg0", "data"), root=path)
    except BlockstoreError:
        return False
    try:
        label = df.label()
    finally:
        df.close()
    return label is not None and label.get("pool") == pool_id
