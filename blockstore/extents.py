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

#: What ``owns`` says of a mapped entry (the values of the C direct path's direct entries,
#: native/fastpath.h): SHARED may be shared with a snapshot or clone, so a write copies it first;
#: OWNED is referenced by this LU alone, so a write goes in place; HELD and BUSY mark this LU's
#: own extent still being put together (a deferred copy on write, lu.py): never read but by the
#: LU's locked path; HELD takes whole-block writes in C too, BUSY (a copy into it under way) none.
SHARED, OWNED, HELD, BUSY = 0, 1, 2, 3


class _NoGuard:
    """The guard of a map nothing outside Python reads."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None

    def chunk_made(self, c: int) -> None:
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
    """Logical extent -> physical extent of one LU (UNMAPPED for holes), in chunks of CHUNK
    entries, each made on the first write into it: a thin LU's map costs memory in proportion to
    the chunks that map something (4 KiB + 1 KiB each) plus 16 bytes of directory per chunk, so a
    1 PiB LU with a few GiB of data costs what its data costs, not gigabytes. Every whole-map
    operation visits only the chunks that exist.

    Per chunk: ``tabs[c]`` (array("I"): physical extents) and ``owns[c]`` (bytearray: OWNED where
    this LU alone references the extent, so a write may go in place; HELD where the LU is still
    copying it; SHARED for anything else, shared with a snapshot or clone or not known, which
    is copied on write). Entries at or past ``n`` are always
    UNMAPPED. ``made`` holds the numbers of the chunks that exist (what whole-map work visits, so
    it never walks the directory of an LU that is mostly holes). ``dirty`` holds the chunk numbers
    changed since the last save, and ``resized`` whether the size did: either makes the map
    ``unsaved``, which is what tells the pool to save it with its LU's record. ``guard`` is held
    (``with``) around every change of an entry and is told of every chunk made (``chunk_made``);
    whoever resizes the map republishes it. The LU sets it to the table the C direct path reads this map through,
    so no direct I/O uses an entry while it changes.
    """

    __slots__ = ("n", "tabs", "owns", "made", "dirty", "resized", "guard")

    def __init__(self, n_extents: int) -> None:
        self.n = n_extents
        self.resized = True
        k = extents_for(n_extents, CHUNK)
        self.tabs: list[array[int] | None] = [None] * k
        self.owns: list[bytearray | None] = [None] * k
        self.made: set[int] = set()
        self.dirty: set[int] = set()
        self.resized = False
        self.guard: Any = NO_GUARD

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
            if no < len(m.tabs):
                tab = array("I", raw)
                np.frombuffer(tab, np.uint32)[max(0, n_extents - no * CHUNK):] = UNMAPPED
                m.tabs[no], m.owns[no] = tab, bytearray(CHUNK)
                m.made.add(no)
        return m

    def __len__(self) -> int:
        return self.n

    # -- one entry (the per-request path: no numpy scalars) --------------------------------------

    def get(self, ext: int) -> int:
        tab = self.tabs[ext // CHUNK]
        return UNMAPPED if tab is None else tab[ext % CHUNK]

    def owned(self, ext: int) -> bool:
        """Whether a write may go in place (OWNED)."""
        own = self.owns[ext // CHUNK]
        return own is not None and own[ext % CHUNK] == OWNED


    def set(self, ext: int, phys: int, exclusive: bool | int) -> None:
        """Map ``ext`` to ``phys``; ``exclusive``: OWNED (True), SHARED (False) or HELD."""
        c, i = divmod(ext, CHUNK)
        with self.guard:
            if self.tabs[c] is None:
                if phys == UNMAPPED:
                    return
                self.tabs[c], self.owns[c] = array("I", _HOLES), bytearray(CHUNK)
                self.made.add(c)
                self.guard.chunk_made(c)
            # The owner byte first: a lock-free reader reads the entry, then the byte (lu.py),
            # so one that finds a newly HELD extent's entry also finds it HELD.
            self.owns[c][i] = exclusive  # type: ignore[index]
            self.tabs[c][i] = phys  # type: ignore[index]
        self.dirty.add(c)

    # -- the whole map (numpy over the chunks that exist) ----------------------------------------

    def _present(self, first: int = 0, last: int | None = None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """The chunks that exist and hold any of logical extents ``first`` to ``last`` inclusive
        (default: all), ascending, as numpy views."""
        lo, hi = first // CHUNK, len(self.tabs) if last is None else last // CHUNK + 1
        for c in sorted(c for c in self.made if lo <= c < hi):
            yield c, np.frombuffer(self.tabs[c], np.uint32), np.frombuffer(self.owns[c], np.uint8)  # type: ignore[arg-type]

    def items(self, first: int = 0, last: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(logical extents, physical extents) of every mapped entry from logical ``first`` to
        ``last`` inclusive (default: the whole map), ascending by logical."""
        logical, phys = [np.zeros(0, np.int64)], [np.zeros(0, np.uint32)]
        for c, tab, _ in self._present(first, last):
            at = np.flatnonzero(tab != UNMAPPED) + c * CHUNK
            at = at[(at >= first) & (at <= (self.n if last is None else last))]
            logical.append(at)
            phys.append(tab[at - c * CHUNK])
        return np.concatenate(logical), np.concatenate(phys)

    def mapped(self) -> np.ndarray:
        """The physical extents this map references (uint32 array)."""
        return self.items()[1]

    def mapped_logical(self, first: int = 0, last: int | None = None) -> np.ndarray:
        """The logical extents that hold data, from ``first`` to ``last`` inclusive (default: all;
        int64, ascending)."""
        return self.items(first, last)[0]

    def shared_logical(self) -> np.ndarray:
        """The logical extents mapped to an extent this LU does not own alone (int64, ascending)."""
        out = [np.zeros(0, np.int64)]
        for c, tab, own in self._present():
            out.append(np.flatnonzero((tab != UNMAPPED) & (own != OWNED)) + c * CHUNK)
        return np.concatenate(out)

    def allocated(self) -> int:
        return sum(int(np.count_nonzero(tab != UNMAPPED)) for _, tab, _ in self._present())

    def phys_range(self, first: int, last: int) -> np.ndarray:
        """The physical extents of logical ``first`` to ``last`` inclusive (uint32, UNMAPPED for holes)."""
        out = np.full(last - first + 1, UNMAPPED, np.uint32)
        for c in range(first // CHUNK, last // CHUNK + 1):
            tab = self.tabs[c]
            if tab is not None:
                lo, hi = max(first, c * CHUNK), min(last + 1, (c + 1) * CHUNK)
                out[lo - first:hi - first] = np.frombuffer(tab, np.uint32)[lo - c * CHUNK:hi - c * CHUNK]
        return out

    def writable_in_place(self, exts: np.ndarray) -> np.ndarray:
        """For each logical extent of ``exts``: mapped and owned alone (a write goes in place)."""
        return np.array([self.owned(int(e)) and self.get(int(e)) != UNMAPPED for e in exts], bool)

    def share_all(self) -> None:
        """Every extent is now shared (a snapshot or clone was taken): none is written in place.
        (HELD entries are the LU's to finish; it finishes them before anything is shared.)"""
        with self.guard:
            for _, _, own in self._present():
                own[own == OWNED] = SHARED

    def own_where(self, refcounts: np.ndarray) -> None:
        """Mark owned exactly the mapped extents whose reference count is 1 (HELD and BUSY ones
        stay)."""
        with self.guard:
            for _, tab, own in self._present():
                settled = (tab != UNMAPPED) & (own < HELD)
                own[settled] = np.where(refcounts[tab[settled]] == 1, OWNED, SHARED)

    def chunk(self, no: int) -> bytes | None:
        """Chunk ``no`` as stored, or None when every entry in it is a hole."""
        tab = self.tabs[no] if no < len(self.tabs) else None
        if tab is None or not (np.frombuffer(tab, np.uint32) != UNMAPPED).any():
            return None
        return tab.tobytes()

    @property
    def unsaved(self) -> bool:
        """Whether anything changed since the last save (chunks or size)."""
        return bool(self.dirty) or self.resized

    def take_dirty(self) -> Iterator[tuple[int, bytes | None]]:
        """Yield and forget the changed chunks (the map counts as saved from now on)."""
        dirty, self.dirty, self.resized = sorted(self.dirty), set(), False
        for no in dirty:
            yield no, self.chunk(no)

    def tail(self, n_extents: int) -> np.ndarray:
        """The physical extents mapped at logical ``n_extents`` and beyond (what a shrink frees)."""
        return self.items(n_extents)[1]

    def resize(self, n_extents: int) -> None:
        """Grow with holes or cut the tail (the caller has released what the tail referenced,
        holds the guard, and republishes the map to it)."""
        old_k, k = len(self.tabs), extents_for(n_extents, CHUNK)
        # What changes in storage: the existing chunks from the new end's on (cut or gone); a
        # grown map only gains holes, which are stored as nothing.
        self.dirty.update(c for c in self.made if c >= n_extents // CHUNK)
        if k < old_k:
            del self.tabs[k:], self.owns[k:]
            self.made = {c for c in self.made if c < k}
        else:
            self.tabs.extend([None] * (k - old_k))
            self.owns.extend([None] * (k - old_k))
        if n_extents % CHUNK and self.tabs[-1] is not None:
            np.frombuffer(self.tabs[-1], np.uint32)[n_extents % CHUNK:] = UNMAPPED
            self.owns[-1][n_extents % CHUNK:] = bytes(CHUNK - n_extents % CHUNK)  # type: ignore[index]
        self.n = n_extents
        self.resized = True


_HOLES = bytes([0xFF]) * (4 * CHUNK)


def runs(extents: np.ndarray) -> list[tuple[int, int]]:
    """Sorted unique extents -> (first, count) runs of consecutive numbers."""
    e = np.sort(np.asarray(extents, np.int64))
    breaks = np.flatnonzero(np.diff(e) != 1) + 1
    return [(int(r[0]), len(r)) for r in np.split(e, breaks) if len(r)]
