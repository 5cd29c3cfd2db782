"""The library's public surface: ``blockstore.Pool`` and the ``LU`` handles it gives out.

A thin adapter over the engine (``pool.py``, ``lifecycle.py``, ``transfer.py``, ``diff.py``,
``services/``), as the CLI and the mount are: what a program that embeds the engine needs, and
nothing that takes a metadata transaction or reaches into the storage stack. ``docs/api.md``
documents exactly these methods (a test holds the two together).

Sizes are bytes, or strings with a unit (``"10G"``, ``"512M"``); offsets and lengths are bytes.
Errors are ``BlockstoreError`` subclasses (``blockstore.errors``), each carrying an errno.
"""
from __future__ import annotations

import os
import threading
from typing import IO, Any, BinaryIO, Callable

from . import check as _check
from . import diff as _diff
from . import transfer as _transfer
from .errors import InvalidArgument, NotAPool
from .lu import LU as _LU
from .meta import meta_dir
from .pool import Pool as _Engine
from .records import DuReport, LUInfo, LUStatus, PoolStatus
from .services import images as _images
from .services import paging as _paging

Progress = Callable[[int, int], None] | None


class LU:
    """A handle on one LU, or on a snapshot (``NAME@SNAP``, read-only).

    A plain object, and a context manager: it opens the LU when first used (a writable handle
    takes the LU's writer lock then: one process writes an LU at a time, another gets ``Busy``
    naming it) and lets go at ``close()`` or at the end of a ``with`` block. Closing flushes.
    Handles of one LU in one process share its writer.
    """

    def __init__(self, engine: _Engine, name: str, *, writable: bool) -> None:
        self._engine, self._name, self._writable = engine, name, writable
        self._open: _LU | None = None
        self._opening = threading.Lock()

    def __repr__(self) -> str:
        state = "open" if self._open is not None else "not open"
        return f"<blockstore.LU {self._name!r} {'read-write' if self._writable else 'read-only'}, {state}>"

    def __enter__(self) -> "LU":
        self._lu()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _lu(self) -> _LU:
        lu = self._open
        if lu is None or lu.closed:
            with self._opening:
                if self._engine.meta is None:
                    raise InvalidArgument(f"the pool is closed: LU {self._name!r} cannot be used")
                if self._open is None or self._open.closed:  # closed with its pool: opened anew
                    self._open = self._engine.open_lu(self._name, writable=self._writable)
                lu = self._open
        return lu

    @property
    def name(self) -> str:
        return self._name

    @property
    def size(self) -> int:
        """Size in bytes."""
        return self._lu().size

    @property
    def readonly(self) -> bool:
        return self._lu().readonly

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset``; unwritten ranges read as zeros."""
        return self._lu().read(offset, length)

    def readinto(self, offset: int, buf: bytearray | memoryview) -> None:
        """Fill ``buf`` with the bytes from ``offset``."""
        self._lu().readinto(offset, buf)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at ``offset``; durable after ``flush`` (or ``close``)."""
        if isinstance(data, str):
            raise TypeError("LU.write takes bytes, not str: pass text.encode()")
        self._lu().write(offset, data)

    def discard(self, offset: int, length: int) -> None:
        """Let go of the range: it reads as zeros, whole extents go back to the pool."""
        self._lu().discard(offset, length)

    def flush(self) -> None:
        """Make every write so far durable (it survives a crash of this process or the machine)."""
        if self._open is not None:
            self._open.flush()

    def close(self) -> None:
        """Flush and let go of the LU (its writer lock, for a writable handle). Idempotent."""
        with self._opening:
            lu, self._open = self._open, None
        if lu is not None:
            lu.close()

    @property
    def closed(self) -> bool:
        """True while the handle does not hold the LU open (before its first use, after close;
        it opens again when used)."""
        return self._open is None or self._open.closed


class Pool:
    """A storage pool: thin-provisioned LUs with snapshots and copy-on-write clones, in a
    directory. Get one with ``Pool.create``, ``Pool.open`` or ``Pool.open(path, create=True,
    size=...)``; close it (or use ``with``) when done."""

    def __init__(self, path: str, *, readonly: bool = False) -> None:
        """Open the pool at ``path`` (as ``Pool.open``)."""
        self._engine = _Engine.open(path, readonly=readonly)

    @classmethod
    def _wrap(cls, engine: _Engine) -> "Pool":
        made = cls.__new__(cls)
        made._engine = engine
        return made

    @classmethod
    def create(cls, path: str, size: int | str, *, extent_size: int | str = "1M",
               mirror_dir: str | None = None) -> "Pool":
        """Make a new pool of ``size`` at ``path`` (a new or empty directory), with extents of
        ``extent_size``, and a second failure group in ``mirror_dir`` for mirrored LUs."""
        return cls._wrap(_Engine.create(path, size, extent_size=extent_size, mirror_dir=mirror_dir))

    @classmethod
    def open(cls, path: str, *, create: bool = False, size: int | str | None = None,
             extent_size: int | str = "1M", readonly: bool = False) -> "Pool":
        """Open the pool at ``path``; with ``create``, make it first (of ``size``) when ``path``
        holds no pool. ``readonly``: nothing is changed, no LU can be written."""
        if create and not readonly and not _holds_pool(path):
            if size is None:
                raise InvalidArgument(f"no pool at {path}: give a size to create one")
            return cls.create(path, size, extent_size=extent_size)
        return cls._wrap(_Engine.open(path, readonly=readonly))

    def __repr__(self) -> str:
        return f"<blockstore.Pool {self.path!r}>"

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Flush and close every LU this pool opened. Idempotent."""
        self._engine.close()

    def flush(self) -> None:
        """Make every write to this pool's open LUs durable."""
        self._engine.flush()

    @property
    def path(self) -> str:
        return self._engine.path

    @property
    def extent_size(self) -> int:
        """Bytes per extent: the unit of allocation and of copy-on-write."""
        return self._engine.extent_size

    # -- LUs -------------------------------------------------------------------------------

    def create_lu(self, name: str, size: int | str, *, thick: bool = False, mirrored: bool = False) -> LU:
        """Make LU ``name`` of ``size`` (0 too: grown later; thin; ``thick``: every extent allocated now;
        ``mirrored``: with a copy in the second failure group). Returns a writable handle, which
        opens the LU when first used."""
        self._engine.create_lu(name, size, thick=thick, mirrored=mirrored, allow_empty=True).close()
        return LU(self._engine, name, writable=True)

    def lu(self, name: str, *, writable: bool = True) -> LU:
        """A handle on LU ``name`` (or snapshot ``NAME@SNAP``, always read-only)."""
        self._engine.lu_info(name)  # NotFound now, not at first use
        return LU(self._engine, name, writable=writable and "@" not in name)

    def list_lus(self) -> list[LUInfo]:
        """Every LU, snapshot and clone, as ``lu_info`` describes them."""
        return self._engine.list_lus()

    def lu_info(self, name: str) -> LUInfo:
        """An LU's record: size, allocated bytes, parent, snapshots, clones, mirroring, holder."""
        return self._engine.lu_info(name)

    def lu_status(self, name: str) -> LUStatus:
        """``lu_info`` as the process holding the LU sees it (open handles, bytes written)."""
        return self._engine.lu_status(name)

    def snapshot(self, name: str, snap: str) -> LUInfo:
        """A read-only point-in-time copy ``name@snap``, in O(1) (also of an LU in use)."""
        return self._engine.snapshot(name, snap)

    def clone(self, source: str, new: str) -> LUInfo:
        """A writable copy-on-write LU ``new`` of the LU or snapshot ``source``."""
        return self._engine.clone(source, new)

    def rollback(self, name: str, snap: str) -> None:
        """Make ``name`` again what it was at snapshot ``snap`` (a name, or ``NAME@SNAP``)."""
        self._engine.rollback(name, snap)

    def flatten(self, name: str) -> int:
        """Give clone ``name`` its own copy of every extent it shares; returns extents copied."""
        return self._engine.flatten(name)

    def resize(self, name: str, size: int | str, *, force: bool = False) -> None:
        """Grow ``name`` (also in use); shrinking it needs ``force``."""
        self._engine.resize(name, size, force=force)

    def remove(self, name: str, *, recursive: bool = False) -> list[str]:
        """Remove an LU (with its snapshots if ``recursive``) or a snapshot; the names removed."""
        return self._engine.remove(name, recursive=recursive)

    def rename(self, old: str, new: str) -> None:
        """Rename an LU; its snapshots follow."""
        self._engine.rename(old, new)

    def mirror(self, name: str, progress: Progress = None) -> int:
        """Give ``name`` and its snapshots a copy in the second failure group; extents copied."""
        return self._engine.set_mirrored(name, True, progress)

    def unmirror(self, name: str) -> None:
        """Drop ``name``'s redundant copy (bad blocks of the kept copy repaired from it first)."""
        self._engine.set_mirrored(name, False)

    def resync(self, name: str | None = None, progress: Progress = None) -> int:
        """Bring the copies of ``name`` (or of the pool) level again; extents copied."""
        return self._engine.resync(name, progress)

    # -- moving bytes in and out --------------------------------------------------------------

    def import_file(self, name: str, src: str | BinaryIO, progress: Progress = None) -> LUInfo:
        """Make LU ``name`` from a raw image: a path (its holes stay holes) or a binary stream."""
        if isinstance(src, (str, os.PathLike)):
            _transfer.import_file(self._engine, name, os.fspath(src), progress).close()
        else:
            _transfer.import_stream(self._engine, name, src, progress).close()
        return self._engine.lu_info(name)

    def export_file(self, name: str, dst: str | BinaryIO, progress: Progress = None) -> None:
        """Write LU (or snapshot) ``name`` as a raw image: to a path (sparse) or a binary stream."""
        with self._engine.lu(name, writable=False) as lu:
            if isinstance(dst, (str, os.PathLike)):
                _transfer.export_file(lu, os.fspath(dst), progress)
            else:
                _transfer.export_stream(lu, dst, progress)

    def diff(self, older: str, newer: str) -> dict[str, Any]:
        """The byte ranges in which ``newer`` differs from snapshot ``older`` (``NAME@SNAP``)."""
        return _diff.diff(self._engine, older, newer)

    def export_diff(self, newer: str, since: str, out: IO[bytes], progress: Progress = None) -> dict[str, Any]:
        """Write what ``newer`` changed since its snapshot ``since`` to ``out`` (a stream)."""
        return _diff.export_diff(self._engine, newer, since, out, progress)

    def import_diff(self, name: str, src: IO[bytes]) -> dict[str, Any]:
        """Apply a stream from ``export_diff`` to ``name`` (all of it, or none)."""
        return _diff.import_diff(self._engine, name, src)

    # -- the pool ------------------------------------------------------------------------------

    def status(self) -> PoolStatus:
        """Size, allocated and provisioned bytes, extents, failure groups."""
        return self._engine.status()

    def du(self, name: str | None = None) -> DuReport:
        """Space per LU: exclusive and shared bytes."""
        return self._engine.du(name)

    def grow(self, size: int | str) -> None:
        """Make the pool ``size`` large (never smaller)."""
        self._engine.grow(size)

    def check(self, *, repair: bool = False) -> dict[str, Any]:
        """Check every invariant of the metadata (and repair what can be proven, if asked)."""
        return _check.check(self._engine, repair=repair)

    def add_failure_group(self, directory: str) -> None:
        """A second failure group in ``directory`` (another disk), for mirrored LUs."""
        self._engine.add_failure_group(directory)

    def failure_groups(self) -> list[dict[str, Any]]:
        """Each failure group: path, extents, state, extents its copy lacks."""
        return self._engine.failure_groups()

    # -- services ------------------------------------------------------------------------------

    def import_image(self, src: str, name: str, progress: Progress = None) -> dict[str, Any]:
        """Capture a directory tree or a tar archive as OS image ``name``."""
        each = None if progress is None else (lambda path, done, size, total_done, total: progress(total_done, total))
        return _images.import_image(self._engine, src, name, each)

    def images(self) -> list[dict[str, Any]]:
        return _images.list_images(self._engine)

    def create_partition(self, name: str, image: str, cec: str | None = None) -> dict[str, Any]:
        """Deploy image ``image`` as partition ``name``: its LUs cloned, in O(1) each."""
        return _images.create_partition(self._engine, name, image, cec)

    def partitions(self) -> list[dict[str, Any]]:
        return _images.list_partitions(self._engine)

    def request_paging(self, lpar: str, min_size: int | str, node: str | None = None) -> dict[str, Any]:
        """A paging LU of at least ``min_size`` for client partition ``lpar`` (made or reused)."""
        return _paging.request(self._engine, lpar, min_size, node)

    def release_paging(self, lpar: str) -> None:
        """Let go of ``lpar``'s paging LU (kept for reuse)."""
        _paging.release(self._engine, lpar)

    def paging(self) -> list[dict[str, Any]]:
        return _paging.list_paging(self._engine)


def _holds_pool(path: str) -> bool:
    try:
        meta_dir(path)
    except NotAPool:
        return False
    return True
