"""Extent arithmetic and the per-LU extent map.

An LU's bytes are cut into extents of the pool's ``extent_size``; its map says, for each logical
extent, which physical extent of the data file holds it (or UNMAPPED: a thin hole that reads as
zeros). Maps live in numpy arrays in memory and in LMDB as chunks of CHUNK entries, so a save
writes only the chunks that changed and a sparse LU stores only the chunks it uses.
"""
from __future__ import annotations

from array import array
from typing import Any, Iterable, Iterator

import numpy as np

UNMAPPED = 0xFFFFFFFF
assert array("I").itemsize == 4
#: Entries per stored chunk: 1020 uint32 fill one 4 KiB LMDB overflow page exactly (4 KiB less
#: its 16-byte page header), so a chunk costs one page, not two.
CHUNK = 1020

Piece = tuple[int, int, int, int]


class _NoGuard:
    """The guard of a map nothing outside Python reads."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


NO_GUARD = _NoGuard()


def split(offset: int, length: int, extent_size: int) -> list[Piece]:
    """Cut the byte range ``[offset, offset + length)`` at extent boundaries.

    Returns ``(extent, start_in_extent, nbytes, pos_in_buffer)`` for the unaligned head, each
    whole extent of the body, and the unaligned tail: the one shape every layer splits I/O by.
    """
    pieces: list[Piece] = []
    pos = 0
    while pos < length:
        ext, start = divmod(offset + pos, extent_size)
        n = min(extent_size - start, length - pos)
        pieces.append((ext, start, n, pos))
        pos += n
    return pieces


def extents_for(size: int, extent_size: int) -> int:
    """How many extents cover ``size`` bytes."""
    return -(-size // extent_size)


class ExtentMap:
    """Logical extent -> physical extent of one LU (uint32, UNMAPPED for holes).

    ``exclusive[i]`` is True when this LU alone references ``phys[i]``, so a write may go in
    place; anything else (shared with a snapshot or clone, or not known) is copied on write.
    ``dirty`` holds the chunk numbers changed since the last save. ``guard`` is held (``with``)
    around every change of an entry: the LU sets it to the table the C direct path reads this map
    through, so no direct I/O uses an entry while it changes.

    Each array has two views of the same memory: ``table``/``owned`` (array.array, bytearray)
    for the per-request path, where indexing them costs a third of a numpy scalar lookup, and
    ``phys``/``exclusive`` (numpy) for whole-map work.
    """

    __slots__ = ("table", "owned", "phys", "exclusive", "dirty", "guard")

    def __init__(self, n_extents: int) -> None:
        table = array("I", bytes(4 * n_extents))
        self._bind(table, bytearray(n_extents))
        self.phys[:] = UNMAPPED
        self.dirty: set[int] = set()
        self.guard: Any = NO_GUARD

    def _bind(self, table: array, owned: bytearray) -> None:
        self.table, self.owned = table, owned
        self.phys = np.frombuffer(table, dtype=np.uint32) if len(table) else np.zeros(0, np.uint32)
        self.exclusive = np.frombuffer(owned, dtype=np.bool_) if len(owned) else np.zeros(0, np.bool_)

    @classmethod
    def from_chunks(cls, n_extents: int, chunks: Iterable[tuple[int, bytes]], limit: int) -> "ExtentMap":
        """The map from its stored chunks; ValueError when a chunk is not CHUNK entries or an
        entry is neither UNMAPPED nor below ``limit`` (the pool's physical extents): a damaged map
        must not read as holes or reach outside the data file."""
        m = cls(n_extents)
        for no, raw in chunks:
            if len(raw) != 4 * CHUNK:
                raise ValueError(f"chunk {no} holds {len(raw)} bytes, not {4 * CHUNK}")
            arr = np.frombuffer(raw, dtype=np.uint32)
            bad = (arr >= limit) & (arr != UNMAPPED)
            if bad.any():
                raise ValueError(f"{int(bad.sum())} entries of chunk {no} are outside the pool")
            lo = no * CHUNK
            hi = min(lo + len(arr), n_extents)
            if hi > lo:
                m.phys[lo:hi] = arr[: hi - lo]
        return m

    def __len__(self) -> int:
        return len(self.phys)

    def set(self, ext: int, phys: int, exclusive: bool) -> None:
        with self.guard:
            self.table[ext] = phys
            self.owned[ext] = exclusive
        self.dirty.add(ext // CHUNK)

    def share_all(self) -> None:
        """Every extent is now shared (a snapshot or clone was taken): none is written in place."""
        with self.guard:
            self.exclusive[:] = False

    def mapped(self) -> np.ndarray:
        """The physical extents this map references (uint32 array)."""
        return self.phys[self.phys != UNMAPPED]

    def allocated(self) -> int:
        return int(np.count_nonzero(self.phys != UNMAPPED))

    def chunk(self, no: int) -> bytes | None:
        """Chunk ``no`` as stored, or None when every entry in it is a hole."""
        part = self.phys[no * CHUNK : (no + 1) * CHUNK]
        if not (part != UNMAPPED).any():
            return None
        if len(part) < CHUNK:
            part = np.concatenate([part, np.full(CHUNK - len(part), UNMAPPED, np.uint32)])
        return part.tobytes()

    def take_dirty(self) -> Iterator[tuple[int, bytes | None]]:
        """Yield and forget the changed chunks."""
        dirty, self.dirty = sorted(self.dirty), set()
        for no in dirty:
            yield no, self.chunk(no)

    def resize(self, n_extents: int) -> None:
        """Grow with holes or cut the tail (the caller has released what the tail referenced)."""
        old = len(self.phys)
        keep = min(old, n_extents)
        table = array("I", self.phys[:keep].tobytes() + np.full(n_extents - keep, UNMAPPED, np.uint32).tobytes())
        self._bind(table, bytearray(self.exclusive[:keep].tobytes()) + bytearray(n_extents - keep))
        # Every chunk from the old end's chunk onwards may have changed or vanished.
        first = min(old, n_extents) // CHUNK
        self.dirty.update(range(first, extents_for(max(old, n_extents), CHUNK) + 1))
