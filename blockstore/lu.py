"""A logical unit: a thin, extent-mapped block device over a failure group's data file.

Write path (all under the pool lock, so the engine is thread-safe):
- an extent this LU alone references is written in place;
- a hole is filled by taking a clean extent from the allocator (punched first when the write
  covers only part of it, so the rest reads as zeros); an all-zero write to a hole is dropped;
- an extent shared with a snapshot or clone is copied on write: the old extent is read, the new
  bytes are overlaid, the whole is written to a new extent, and the old one is unreferenced.
  The shared extent itself is never written.
- a write of whole 4 KiB blocks into a shared extent defers the copy: the new extent takes just
  those blocks and is HELD (extents.py); the blocks it lacks are copied from the old extent later,
  a step at a time by a filler thread, and all at once by anything that needs the extent whole
  (a partial-block write, every commit). Until then the LU keeps its reference to the old
  extent; the extent is read only here, under the lock (the written blocks from the new extent,
  the rest from the old), and written here or, in whole blocks, by the C direct path, which
  marks the blocks it wrote. Blocks written before the filler reaches them are never copied.
Map and reference-count changes stay in memory until ``flush``, which syncs the data file and
then commits them in one LMDB transaction (journal.py); a commit completes every held extent
first, so a committed map never points at a partial copy, and a crash before it loses the new
extent as it loses any write not flushed.
"""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .catalog import LURecord
from .errors import OutOfRange, ReadOnly
from .extents import BUSY, CHUNK, HELD, NO_GUARD, OWNED, UNMAPPED, ExtentMap, extents_for, runs, split
from .native import DirectTable
from .storage import ALLOCATED, DATA, ZERO, Buffer, Reader, Store
from .zero import is_zero

if TYPE_CHECKING:
    from .allocator import Allocator
    from .liveness import Claim
    from .native import SharedWord
    from .storage.redirect import RedirectedCopy



#: Bytes of a deferred copy's block: what a write must cover whole to defer the copy.
COPY_BLOCK = 4096
#: Blocks the filler copies per hold of the lock (64 KiB): a writer waits at most that long.
FILL_STEP = 16
#: Held extents an LU may have at once; past it the oldest is completed on the write path, so
#: what a flush has left to copy stays bounded (256 MiB at 1 MiB extents).
MAX_HELD = 256
#: Whether a filler thread completes held extents in the background (otherwise they wait for a
#: read-modify-write, a commit or MAX_HELD: the model-based test keeps them held this way).
FILLER = True


class _Copy:
    """A deferred copy on write: logical extent -> new extent ``dst``, which holds the blocks
    ``have`` marks; the rest are still ``src``'s (which this LU keeps referenced meanwhile)."""

    __slots__ = ("src", "dst", "have", "filling")

    def __init__(self, src: int, dst: int, blocks: int) -> None:
        self.src, self.dst = src, dst
        self.have = np.zeros(blocks, bool)
        #: Whether the filler is copying blocks into ``dst`` without the lock right now: until it
        #: is done, nothing else writes this extent or completes it (``LU._wait_fill``).
        self.filling = False


class Host(Protocol):
    """What an LU needs of whoever opened it (the pool): the lock that guards every map and
    count, a fresh map for a read-only handle, the commit that makes its writes durable, and the
    last close of a handle."""

    @property
    def lock(self) -> threading.RLock: ...

    def flush(self, *, checkpoint: bool = True) -> None: ...

    def refresh_lu(self, lu: "LU") -> None: ...

    def lu_gen(self, lu: "LU") -> int: ...

    def close_lu(self, lu: "LU") -> None: ...


class LU:
    """An open LU. Get one from ``Pool.open_lu``; close it (or use ``with``) when done.

    A writable handle holds the LU's holder lock: one process at a time. Read-only handles of an
    LU another process writes see each committed state of it (they re-read the map when the
    LU's generation changes).

    The LU reads and writes ``store`` (storage/: a data file, or the mirror over two) at
    physical extent offsets, and takes extents from ``allocator``; the pool re-points it
    (``restack``) when the LU becomes mirrored or stops being so.
    """

    def __init__(self, host: Host, record: LURecord, emap: ExtentMap, store: "Store",
                 allocator: "Allocator", *, writable: bool, holder: "Claim | None" = None,
                 settled: bool = False) -> None:
        """``settled``: no other process writes the LU (its checksums are known here as they are)."""
        self._host = host
        self._lock = host.lock
        self.name: str = record["name"]
        self.id: int = record["id"]
        self.kind: str = record["kind"]
        self.thick: bool = record.get("thick", False)
        self._size: int = record["size"]
        self._gen: int = record["gen"]
        #: the ownership epoch this handle writes under (fence.py); None: not fenced
        self.epoch: int | None = None
        self._write_until: int | None = None  # the direct path's fence word (fence_writes)
        self._map = emap
        self._E = allocator.E
        self.mirrored: bool = record.get("mirrored", False)
        self._df = store
        self._alloc = allocator
        self._writable = writable
        # Reads may skip the lock when nothing else changes the map under them: this process
        # writes it, or it is a snapshot (read-only handles of live LUs re-read the map).
        self._fast = writable or self.kind == "snapshot"
        # Reads verify against the checksums (a mirror's) only where this process knows them as
        # they are now: it writes the LU, or nothing does (mirror.py); the others read unverified.
        self._knows = self._fast or settled
        self._rd = self._reader(store)
        self._holder = holder
        self._opens = 1
        self._closed = False
        self._direct: DirectTable | None = None
        # A redirected reader's watch (read_from): the commit word, and its value read before the
        # map this handle holds was (None: not known, and the direct table serves nothing)
        self._watch: "SharedWord | None" = None
        self._seen: int | None = None
        self._map_writes = True
        self._written = 0  # bytes written by ``write`` (the direct table counts its own)
        # Deferred copies (logical extent -> _Copy), oldest first, and the thread finishing them.
        self._held: dict[int, _Copy] = {}
        self._filler: threading.Thread | None = None
        # A copy of the filler's ended. Its own lock, not the pool's: a waiter keeps the pool lock
        # (what it does stays one step), and the filler needs none to say it is done.
        self._filled = threading.Condition()
        self._defer = self._E % COPY_BLOCK == 0 and self._E > COPY_BLOCK

    def _reader(self, store: "Store") -> "Reader":
        """What reads come from: ``store``, verified where this handle knows the truth; set with
        ``_df`` (the lock-free paths read a data file's descriptor, so not a verifying store's)."""
        self._lockfree = self._fast and not (self._knows and store.verifies)
        return store if self._knows else store.unverified

    # -- BlockDevice -------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Size in bytes."""
        return self._size

    @property
    def readonly(self) -> bool:
        return not self._writable

    @property
    def allocated_bytes(self) -> int:
        """Bytes of extents this LU maps (shared ones included)."""
        return self._map.allocated() * self._E

    @property
    def extent_size(self) -> int:
        return self._E

    @property
    def bytes_written(self) -> int:
        """Bytes written through this handle (by the engine and by its direct table)."""
        return self._written + (self._direct.written if self._direct is not None else 0)

    @property
    def pending_copies(self) -> int:
        """Extents whose copy on write is deferred and not yet complete (HELD)."""
        return len(self._held)

    def mapped_extents(self) -> np.ndarray:
        """Logical extent numbers that hold data (everything else reads as zeros)."""
        with self._lock:
            if not self._writable:
                self._host.refresh_lu(self)
            return self._map.mapped_logical()

    def block_status(self, offset: int, length: int) -> tuple[int, int]:
        """(flags, n): the first ``n`` bytes (1 <= n <= length) of ``[offset, offset + length)``
        share ``flags`` (storage/__init__.py: DATA, ZERO, ALLOCATED). A hole of the map reads as
        zeros and is not allocated; a mapped extent is allocated, and its store says where it
        holds data and where it reads as zeros (a partial first write leaves the rest a hole)."""
        self._check(offset, length)
        if length == 0:
            raise ValueError("block_status of an empty range")
        E = self._E
        with self._lock:
            if not self._writable:
                self._host.refresh_lu(self)
            ext, start = divmod(offset, E)
            last = min((offset + length - 1) // E, ext + CHUNK - 1)  # n may stop short: bound the work
            if ext in self._held:  # part of it is still the source's: data, all of it
                return DATA | ALLOCATED, min(length, E - start)
            p = self._map.get(ext)
            if p == UNMAPPED:
                phys = self._map.phys_range(ext, last)
                run = int(np.argmax(phys != UNMAPPED)) if (phys != UNMAPPED).any() else len(phys)
                return ZERO, min(offset + length, (ext + run) * E) - offset
            flags, n = self._df.block_status(p * E + start, min(length, E - start))
            return flags | ALLOCATED, n

    def read(self, offset: int, length: int) -> bytes:
        E = self._E
        ext, start = divmod(offset, E)
        if self._lockfree and offset >= 0 and length >= 0 and start + length <= E and offset + length <= self._size:
            # Lock-free within one extent (the lock costs a third of a 4 KiB read). An extent read
            # here can change owner only after the allocator recycles it, which bumps `recycled`;
            # if that happened meanwhile, read again under the lock.
            # A HELD extent (a copy still under way) is read under the lock. Read after the
            # entry: ``_held`` (filled before the entry is set) and the owner byte (set before
            # the entry too, extents.py), so a reader that finds the new entry knows it is HELD.
            alloc = self._alloc
            seen = alloc.recycled
            c, i = divmod(ext, CHUNK)
            tab = self._map.tabs[c]
            p = UNMAPPED if tab is None else tab[i]
            if p == UNMAPPED:
                return bytes(length)
            data = b""
            if not self._held or self._map.owns[c][i] < HELD:  # type: ignore[index]
                try:
                    data = self._df.pread(p * E + start, length)
                except OSError:
                    pass  # a failing copy: the locked path below fails over to the mirror
            if alloc.recycled == seen and len(data) == length:
                return data
        self._check(offset, length)
        with self._lock:
            if not self._writable:
                buf = bytearray(length)
                self._read_committed(memoryview(buf), offset)
                return bytes(buf)
            ext, start = divmod(offset, E)
            if start + length <= E and ext not in self._held:
                p = self._map.get(ext)
                return bytes(length) if p == UNMAPPED else self._rd.pread(p * E + start, length)
            buf = bytearray(length)
            self._readinto(memoryview(buf), offset)
            return bytes(buf)

    def readinto(self, offset: int, buf: memoryview | bytearray) -> None:
        """Fill ``buf`` from ``offset`` without an extra copy (lock-free within one extent, as read)."""
        mv = memoryview(buf).cast("B")
        n, E = len(mv), self._E
        ext, start = divmod(offset, E)
        if self._lockfree and offset >= 0 and start + n <= E and offset + n <= self._size:
            seen = self._alloc.recycled
            c, i = divmod(ext, CHUNK)
            tab = self._map.tabs[c]
            p = UNMAPPED if tab is None else tab[i]
            if p == UNMAPPED:
                mv[:] = bytes(n)
                return
            try:
                if ((not self._held or self._map.owns[c][i] < HELD)  # type: ignore[index]
                        and self._df.readinto(mv, p * E + start) == n and self._alloc.recycled == seen):
                    return
            except OSError:
                pass  # a failing copy: the locked path below fails over to the mirror
        self._check(offset, n)
        with self._lock:
            if not self._writable:
                self._read_committed(mv, offset)
            else:
                self._readinto(mv, offset)

    def _read_committed(self, mv: memoryview, offset: int) -> None:
        """A read-only handle's read of an LU another process may write: by the map of its last
        commit, and read again when a commit landed meanwhile. The writer frees an extent in a
        commit and hands it out only after it, so a read that finds the generation unchanged
        after it read the extents read them while they were still this LU's: never another LU's
        bytes, never a map older than the last commit before the read began."""
        while True:
            seen = self._watch.value if self._watch is not None else None  # before the map is read
            self._host.refresh_lu(self)
            gen = self._gen
            self._readinto(mv, offset)
            if self.kind == "snapshot" or self._host.lu_gen(self) == gen:
                if seen != self._seen and self._direct is not None:
                    with self._direct:  # C serves this map from now on, until the next commit
                        self._seen = seen
                        self._publish_direct()
                return

    def _readinto(self, mv: memoryview, offset: int) -> None:
        """Gather a range over several extents in one call (holes as zeros)."""
        E, n = self._E, len(mv)
        if n == 0:
            return
        first, last = offset // E, (offset + n - 1) // E
        starts = np.zeros(last - first + 1, np.int64)
        starts[0] = offset - first * E
        ends = np.full(last - first + 1, E, np.int64)
        ends[-1] = offset + n - last * E
        p = self._map.phys_range(first, last).astype(np.int64)
        offsets = np.where(p == UNMAPPED, -1, p * E + starts)
        self._rd.read_multi(mv, offsets, ends - starts)
        if self._held:
            self._read_sources(mv, offset, first, last)

    def _read_sources(self, mv: memoryview, offset: int, first: int, last: int) -> None:
        """Over what ``_readinto`` read from held extents, lay the blocks they still lack, read
        from their sources."""
        E, B, end = self._E, COPY_BLOCK, offset + len(mv)
        for ext in [e for e in self._held if first <= e <= last]:
            c, base = self._held[ext], ext * E
            for b, k in runs(np.flatnonzero(~c.have)):
                lo, hi = max(offset, base + b * B), min(end, base + (b + k) * B)
                if lo < hi:
                    mv[lo - offset:hi - offset] = self._rd.pread(c.src * E + lo - base, hi - lo)

    def write(self, offset: int, data: Buffer) -> None:
        n = len(data)
        if self._closed or not self._writable or offset < 0 or offset + n > self._size:
            self._check(offset, n)  # says which (the two calls cost a small write a tenth)
            self._check_writable()
        E = self._E
        with self._lock:
            self._written += n
            ext, start = divmod(offset, E)
            if start + n <= E:
                # One extent: the common case, kept short.
                c, i = divmod(ext, CHUNK)
                tab, own = self._map.tabs[c], self._map.owns[c]
                p = UNMAPPED if tab is None else tab[i]
                # A whole extent of zeros is worth unmapping, so it goes the long way.
                if p != UNMAPPED and own[i] == OWNED and (n < E or self.thick or not is_zero(data)):  # type: ignore[index]
                    self._df.pwrite(data, p * E + start)
                else:
                    self._write_extent(ext, start, data)
                return
            pieces = split(offset, n, E)
            self._reserve_for(pieces)
            mv = memoryview(data).cast("B")
            for ext, start, cnt, pos in pieces:
                self._write_extent(ext, start, mv[pos:pos + cnt])

    def direct_table(self, *, map_writes: bool = True) -> DirectTable | None:
        """The table through which the C direct path (native/fastpath.h) reads this LU and writes
        its own extents in place, without the GIL; it follows every change of the map and, for a
        mirrored LU, of its copies (mirror.py says which writes it takes). None for a handle the
        table cannot serve: a read-only handle of an LU that another process writes (its map is
        re-read behind its back), unless it reads redirected on this machine: then the table
        serves reads only while no commit has landed since its map was read (``read_from``).
        ``map_writes``: write whole 64 KiB pieces whose pages are in memory by copying into a
        mapping of the data file (the rest is pwritten either way; so is everything in extents
        smaller than a piece); given by the first call."""
        if not (self._fast or self._watch is not None) or self._closed:
            return None
        with self._lock:
            if self._direct is None:
                self._map_writes = map_writes
                self._direct = DirectTable()
                self._map.guard = self._direct
                self._publish_direct()
                if self._write_until is not None:
                    self._direct.fence(self._write_until)
            return self._direct

    def fence_writes(self, until_ns: int) -> None:
        """The C direct path writes this LU only before ``until_ns`` (time.monotonic_ns); later
        writes come to Python, where the node's gate decides (fence.py: the data path's layer).
        The serving process moves it forward while it may write."""
        self._write_until = until_ns
        if self._direct is not None:
            self._direct.fence(until_ns)

    def _publish_direct(self) -> None:
        """Point the direct table at the current map (the caller holds the table, or no I/O can
        use it yet). A whole extent of zeros is left to ``write``, which unmaps it."""
        if self._direct is not None:
            m = self._map
            # A read-only handle (a snapshot) is never written through the table.
            self._df.publish_table(self._direct, unit=self._E, size=self._size, chunk=CHUNK, phys=m.tabs,
                                   direct=m.owns if self._writable else None, zero_slow=not self.thick,
                                   map_writes=self._map_writes, serve=not self._closed,
                                   republish=self._publish_direct, verify=self._knows)
            self._direct.held(CHUNK, len(m.tabs), {e: c.have for e, c in self._held.items()})
            if self._watch is not None:  # a seen never read matches no value of the word
                self._direct.watch(self._watch, self._watch.value - 1 if self._seen is None else self._seen)

    def _retire_direct(self) -> None:
        """The handle is closing: the table serves nothing from now on."""
        if self._direct is not None:
            with self._direct:
                self._publish_direct()

    def discard(self, offset: int, length: int) -> None:
        """Zero ``[offset, offset+length)``: whole extents are unmapped (thin LUs) and freed once
        nothing references them; partial ones are zeroed."""
        self._check(offset, length)
        self._check_writable()
        E, end = self._E, offset + length
        lo = min(end, -(-offset // E) * E)  # the whole extents in between: only mapped ones matter,
        hi = max(lo, end // E * E)          # so a discard costs what the range holds, not its size
        with self._lock:
            self._settle_range(offset // E, (end - 1) // E if length else offset // E)
            whole = self._map.mapped_logical(lo // E, hi // E - 1)
            pieces = split(offset, lo - offset, E) + [(int(e), 0, E, 0) for e in whole] + split(hi, end - hi, E)
            for ext, start, n, _ in pieces:
                p = self._map.get(ext)
                if p == UNMAPPED:
                    continue
                if n == E and not self.thick:
                    self._unmap(ext)
                elif self._map.owned(ext):
                    self._df.punch(p * E + start, n)
                else:
                    self._write_extent(ext, start, bytes(n), zero_ok=True)

    def flush(self) -> None:
        """Make every write acknowledged so far durable (pool-wide: every LU this process
        writes). Not a checkpoint (journal.py): a mirrored LU's new checksums may stay in memory,
        their regions in the activity log, until the next commit or close."""
        self._host.flush(checkpoint=False)

    def close(self) -> None:
        self._host.close_lu(self)

    def __enter__(self) -> "LU":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<LU {self.name} {self._size} bytes {'rw' if self._writable else 'ro'}>"

    # -- for the pool that opened it ----------------------------------------------------------

    @property
    def extent_map(self) -> ExtentMap:
        """The LU's map as this handle has it (ahead of the stored one until the pool saves it),
        every extent in it whole: a deferred copy still under way is completed first."""
        self.settle()
        return self._map

    @property
    def gen(self) -> int:
        """The generation of the LU's record this handle's map matches."""
        return self._gen

    @property
    def holder(self) -> "Claim | None":
        return self._holder

    @property
    def closed(self) -> bool:
        return self._closed

    def saved(self, gen: int) -> None:
        """The pool stored this handle's map as generation ``gen``."""
        self._gen = gen

    def flush_begins(self) -> int | None:
        """Where the direct table's count of changes stood as a flush began (None: no table);
        give it to ``flush_covered`` once the flush committed everything pending."""
        return self._direct.changes if self._direct is not None else None

    def flush_covered(self, mark: int | None, commits: "SharedWord | None" = None, seen: int = 0) -> None:
        """A flush that began at ``mark`` (and at ``seen`` of the pool's commit word ``commits``)
        left nothing of this LU it must commit: until either moves, an fsync of its file needs
        only the data files' syncs, which C serves (native/fastpath.h, bs_table_fsync)."""
        if mark is not None and self._direct is not None:
            self._direct.clean(mark, commits, seen)

    def reload(self, emap: ExtentMap, size: int, gen: int) -> None:
        """A read-only handle takes the map and size another writer committed."""
        self._map, self._size, self._gen = emap, size, gen

    def add_open(self) -> None:
        """One more user shares this handle (each closes it once)."""
        self._opens += 1

    def drop_open(self) -> bool:
        """One user closed it: whether that was the last (the pool then retires it)."""
        self._opens -= 1
        return self._opens <= 0

    def retire(self) -> None:
        """The handle serves nothing from now on (its writer lock is the pool's to release)."""
        self._closed = True
        self._fast = self._lockfree = False
        self._retire_direct()

    def restack(self, store: "Store", mirrored: bool) -> None:
        """Read and write ``store`` from now on (the LU became mirrored, or stopped being so);
        the direct table follows before any I/O can use the old store."""
        self.settle()
        with self._map.guard:
            self._df, self._rd = store, self._reader(store)
            self.mirrored = mirrored
            self._publish_direct()

    def read_from(self, store: "RedirectedCopy", watch: "SharedWord | None") -> None:
        """A read-only handle reads ``store`` (one copy of a mirror: read redirection), under the
        lock, or in C while ``watch`` (the pool's commit word, meta.py; None: not on this
        machine) shows no commit since the map was read: the C table never reads an extent the
        map may have given up since."""
        self._df = self._rd = store
        self._fast = self._lockfree = False
        self._watch = watch

    def replace_map(self, emap: ExtentMap, size: int) -> None:
        """Take another map (rollback) and size, in step with the direct table."""
        self.settle()
        with self._map.guard:
            self._map, self._size = emap, size
            emap.guard = self._direct or NO_GUARD
            self._publish_direct()

    def copy_shared(self) -> int:
        """Give this LU its own copy of every extent it shares (flatten). Returns extents copied."""
        self.settle()
        E, m = self._E, self._map
        shared = m.shared_logical()
        for ext in shared.tolist():
            p = m.get(ext)
            q = self._alloc.take()
            self._df.cow(p * E, q * E, E, None, 0)
            self._alloc.unref(p, self.mirrored)
            self._alloc.ref(q, self.mirrored)
            m.set(ext, q, True)
        return len(shared)

    def resize_map(self, size: int) -> None:
        """Set the size in bytes; the caller has already discarded what a shrink cuts off."""
        self.settle()
        n = extents_for(size, self._E)
        if n < len(self._map):
            self._alloc.unref_many(self._map.tail(n), self.mirrored)
        with self._map.guard:  # resize gives the map new arrays: publish them before any I/O
            self._map.resize(n)
            self._size = size
            self._publish_direct()

    def fill_holes(self, first: int) -> None:
        """Map every hole from logical extent ``first`` on to a zeroed extent (thick LUs)."""
        a, E = self._alloc, self._E
        is_hole = np.ones(len(self._map), bool)  # a thick LU maps everything: its size in memory is due
        is_hole[self._map.mapped_logical()] = False
        holes = np.flatnonzero(is_hole[first:]) + first
        a.ensure(len(holes))
        for ext in holes.tolist():
            q = a.take()
            self._df.punch(q * E, E)
            a.ref(q, self.mirrored)
            self._map.set(ext, q, True)

    # -- internals ---------------------------------------------------------------------------

    def _check(self, offset: int, length: int) -> None:
        if self._closed:
            raise ValueError(f"LU {self.name} is closed")
        if offset < 0 or length < 0 or offset + length > self._size:
            raise OutOfRange(
                f"I/O at offset {offset} length {length} is outside LU {self.name!r} of {self._size} bytes"
            )

    def _check_writable(self) -> None:
        if not self._writable:
            what = "a snapshot" if self.kind == "snapshot" else "open read-only"
            raise ReadOnly(f"LU {self.name!r} is {what}")

    def reserve(self, offset: int, length: int) -> None:
        """Take up front every extent a write of bytes ``[offset, offset + length)`` may need, so
        that one arriving in pieces is refused whole (PoolFull, nothing written) rather than half
        applied. The extents stay this session's until used or the next commit returns them."""
        self._check(offset, length)
        self._check_writable()
        if length == 0:
            return
        with self._lock:
            self._reserve_extents(np.arange(offset // self._E, (offset + length - 1) // self._E + 1, dtype=np.int64))

    def _reserve_for(self, pieces: list[tuple[int, int, int, int]]) -> None:
        """Take every extent a multi-extent write may need up front, so ENOSPC leaves it unapplied."""
        self._reserve_extents(np.array([p[0] for p in pieces], np.int64))

    def _reserve_extents(self, exts: np.ndarray) -> None:
        """Have in hand a new extent for each of the logical extents ``exts`` not written in place."""
        need = int(np.count_nonzero(~self._map.writable_in_place(exts)))
        if need:
            self._alloc.ensure(need)

    def _write_extent(self, ext: int, start: int, data: Buffer, zero_ok: bool = False) -> None:
        """Write within one extent: drop or unmap zeros, write in place, fill a hole, or copy on write."""
        E, m, df, alloc = self._E, self._map, self._df, self._alloc
        n = len(data)
        whole = n == E
        if ext in self._held:
            self._wait_fill(ext)
        if ext in self._held:
            if start % COPY_BLOCK or n % COPY_BLOCK or (whole and not self.thick and (zero_ok or is_zero(data))):
                self._settle(ext)  # a partial block, or a whole extent of zeros to unmap
            else:
                self._write_held(ext, start, data)
                return
        p = m.get(ext)
        if (zero_ok or is_zero(data)) and not self.thick:
            if p == UNMAPPED:
                return  # zeros on a hole: already zeros, allocate nothing
            if whole:
                self._unmap(ext)
                return
        if p != UNMAPPED and m.owned(ext):
            df.pwrite(data, p * E + start)
            return
        q = alloc.take()
        if p == UNMAPPED:
            if not whole:
                df.punch(q * E, E)
            df.pwrite(data, q * E + start)
        else:
            if whole:
                df.pwrite(data, q * E)
            elif self._defer and not start % COPY_BLOCK and not n % COPY_BLOCK:
                self._hold(ext, p, q, start, data)
                return
            else:
                df.cow(p * E, q * E, E, data, start)
            alloc.unref(p, self.mirrored)
        alloc.ref(q, self.mirrored)
        m.set(ext, q, True)

    def share_extent(self, ext: int, phys: int) -> None:
        """Map logical extent ``ext`` to the existing physical extent ``phys`` (content-addressed
        sharing: the caller has confirmed the bytes match). Both sides then copy on write."""
        self._check_writable()
        with self._lock:
            self._settle_range(ext, ext)
            old = self._map.get(ext)
            if old != UNMAPPED:
                self._alloc.unref(old, self.mirrored)
            self._alloc.ref(phys, self.mirrored)
            self._map.set(ext, phys, False)

    def physical_extent(self, ext: int) -> int | None:
        """The physical extent behind logical extent ``ext``, or None for a hole."""
        p = self._map.get(ext)
        return None if p == UNMAPPED else p

    # -- deferred copies on write ----------------------------------------------------------------

    def _hold(self, ext: int, src: int, dst: int, start: int, data: Buffer) -> None:
        """The first write into shared extent ``src``: ``data`` (whole blocks) goes to ``dst``,
        which becomes the LU's HELD extent; the copy of the rest waits (the module's docstring)."""
        if len(self._held) >= MAX_HELD:
            self._settle(next(iter(self._held)))
        c = _Copy(src, dst, self._E // COPY_BLOCK)
        self._put(c, start, data)
        self._alloc.ref(dst, self.mirrored)
        self._held[ext] = c
        if self._direct is not None:
            self._direct.set_held(ext, c.have)  # before the entry says HELD: C then finds it
        self._map.set(ext, dst, HELD)
        if self._filler is None and FILLER:
            self._filler = threading.Thread(target=self._fill, name=f"fill {self.name}", daemon=True)
            self._filler.start()

    def _write_held(self, ext: int, start: int, data: Buffer) -> None:
        c = self._held[ext]
        self._put(c, start, data)
        if c.have.all():
            self._finish(ext)

    def _put(self, c: _Copy, start: int, data: Buffer) -> None:
        """Whole blocks of the LU's data into held extent ``c`` at byte ``start``, marked had."""
        self._df.pwrite(data, c.dst * self._E + start)
        c.have[start // COPY_BLOCK:(start + len(data)) // COPY_BLOCK] = True

    def _wait_fill(self, ext: int) -> None:
        """Wait until the filler's copy into held extent ``ext`` (if any) is over (the caller
        holds the pool lock, and keeps it)."""
        c = self._held.get(ext)
        if c is not None and c.filling:
            with self._filled:
                while c.filling:
                    self._filled.wait()

    def _settle(self, ext: int) -> None:
        """Copy every block held extent ``ext`` lacks from its source; it becomes the LU's own."""
        self._wait_fill(ext)
        c = self._held.get(ext)
        if c is None:
            return
        self._map.set(ext, c.dst, BUSY)  # no C write from here on: what it lacks stays lacking
        for first, k in runs(np.flatnonzero(~c.have)):
            self._copy_blocks(self._df, c, first, k)
            c.have[first:first + k] = True
        self._finish(ext)

    def _copy_blocks(self, df: "Store", c: _Copy, first: int, k: int) -> None:
        """Blocks ``first`` to ``first + k`` of held extent ``c`` from its source (not marked)."""
        E, B = self._E, COPY_BLOCK
        df.copy(c.src * E + first * B, c.dst * E + first * B, k * B)

    def _finish(self, ext: int) -> None:
        c = self._held.pop(ext)
        self._map.set(ext, c.dst, OWNED)  # from here on the direct path may serve it
        if self._direct is not None:
            self._direct.set_held(ext, None)
        self._alloc.unref(c.src, self.mirrored)

    def _settle_range(self, first: int, last: int) -> None:
        """Complete the held extents among logical ``first`` to ``last`` (the caller holds the lock)."""
        if self._held:
            for ext in [e for e in self._held if first <= e <= last]:
                self._settle(ext)

    def settle(self) -> None:
        """Complete every deferred copy: afterwards no extent of the map is HELD (the lock is
        held throughout, so none is added before the caller's next step)."""
        if self._held:
            with self._lock:
                for ext in list(self._held):
                    self._settle(ext)
                assert not self._held

    def _fill(self) -> None:
        """The filler thread: completes held extents, oldest first, a step of at most
        FILL_STEP blocks at a time, the extent BUSY meanwhile. Where the store allows
        (``concurrent_copy``) a step copies without the pool lock, beside other I/O, the extent
        marked ``filling`` (whoever else would write or complete it waits for the copy); the
        step's result is then taken only if the extent is still the same held one. Gone when
        none is left or the handle closes. An error leaves the rest to ``settle``, whose caller
        (a read, a commit) then meets it."""
        while True:
            with self._lock:
                if not self._held or self._closed:
                    self._filler = None
                    return
                ext = next(iter(self._held))
                c, df = self._held[ext], self._df
                self._map.set(ext, c.dst, BUSY)  # no C write into it while blocks are copied in
                todo = runs(np.flatnonzero(~c.have))
                if not todo:  # the direct path wrote what it lacked
                    self._finish(ext)
                    continue
                first, k = todo[0][0], min(todo[0][1], FILL_STEP)
                unlocked = df.concurrent_copy
                if unlocked:
                    c.filling = True
                else:
                    ok = self._try_copy(df, c, first, k)
            if unlocked:
                ok = self._try_copy(df, c, first, k)
                with self._filled:
                    c.filling = False
                    self._filled.notify_all()
            with self._lock:
                if self._held.get(ext) is not c:
                    continue  # completed (or dropped) by someone who waited for the copy
                if ok:
                    c.have[first:first + k] = True
                if c.have.all():
                    self._finish(ext)
                else:
                    self._map.set(ext, c.dst, HELD)
                if not ok:
                    self._filler = None
                    return
            time.sleep(0)  # let a writer waiting for the lock have it between steps

    def _try_copy(self, df: "Store", c: _Copy, first: int, k: int) -> bool:
        """The filler's ``_copy_blocks``: an error stops the filler, not the process."""
        try:
            self._copy_blocks(df, c, first, k)
            return True
        except Exception:
            return False

    def _unmap(self, ext: int) -> None:
        self._alloc.unref(self._map.get(ext), self.mirrored)
        self._map.set(ext, UNMAPPED, False)
