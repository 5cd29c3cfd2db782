"""The mirror layer: a data file over two failure groups' data files (the same interface as
DataFile, stacked as s3backer stacks its stores). A mirrored LU's physical extent ``p`` lives at
the same offset in both files, so snapshots, clones and copy-on-write need nothing new: a write
goes to both copies in one C call (acknowledged only when both are written, like DRBD's protocol
C), a read comes from the primary copy and falls back to the redundant one (the failing primary is
then taken out of service).

Which copy is in service, and what each lacks, is the pool's (health.py), not this process's:
a copy this process fails is failed for every process, and one another process failed or
brought back is followed here at the next commit (``follow``). Reads come only from a copy that
lacks nothing (``readable``); a copy being resynced is written but not read.

The mirror owns three records of what it wrote (checksums.py, activity.py):
- ``pending``: the checksums of the blocks written since the last commit, taken from the client's
  buffers by the C write; a commit stores them with the maps (``commit_sums``). An LU's own flush
  (an fsync) that changed no map syncs the copies and leaves them pending: their regions are in
  the activity log, so a crash loses nothing a recovery cannot rebuild from the copies, and every
  commit (a checkpoint flush, a close, any change of the pool) stores them;
- the activity log: regions with writes in flight, logged before the write, settled at the next
  open after a crash;
- the dirty bitmap of a degraded copy: every extent it missed, made durable before the write it
  covers is acknowledged, and copied by ``resync`` later.

A copy fails on an I/O error, on a short read, and at a flush that finds its file deleted,
replaced or truncated (``DataFile.problem``); the mirror then carries on degraded on the survivor.

Every read is verified: each 4 KiB block against the checksum that describes it now (its
*truth*: the committed record with what this process wrote since over it). A block that does not
match is read from the other copy; where that one matches, the client gets its bytes and the bad
copy is rewritten from it (the repair scrub would make, under the stripe lock that orders the
block's writers), reported as ``checksum_mismatch``; where no copy matches, the read is EIO. The
truths of the extents read are kept in memory (``known``, bounded), where the C direct path
verifies its reads too. Only readers that know the truth verify: a handle that writes the LU,
or one of a snapshot or a sealed LU; a read-only handle of an LU another process writes reads
``unverified`` (that process's newer checksums are not on record yet).

The C direct path (native/fastpath.h) reads a mirrored LU from its first live copy and writes
both copies in place, storing the checksums into ``pending`` itself, but only into extents that
are *armed*: the first write into an extent after each commit comes here, does the write-ahead
work (activity log, ``touched``) and arms it. A commit disarms every extent before it syncs (so a
write it did not see is never dropped with the pending checksums; a flush that commits nothing
leaves them armed, and the direct path goes on writing them), and so does a change of the
copies (a failure, a copy back in service): a degraded mirror arms nothing, its writes mark the
dirty bitmap here.
"""
from __future__ import annotations

import errno
import logging
import os
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import native
from ..native import Buffer
from .activity import AHEAD, HOT_LIMIT, REGION, ActivityLog
from .checksums import BLOCK, SumStore
from .datafile import LABEL, DataFile
from .health import FAILED, OK, CopyHealth

log = logging.getLogger("blockstore")

if TYPE_CHECKING:
    import lmdb



class MirrorFile:
    """Two copies of one extent space. ``copies[i]`` is None while copy ``i`` is missing or failed.

    Before a write to an extent that copy ``i`` lacks is acknowledged, the extent is recorded in
    ``health``, so the dirty bitmap names every such extent even after a crash. ``need`` is
    the bytes of extents each file must hold (checked at every sync). ``readable[i]``: copy
    ``i`` lacks nothing, so reads may come from it.
    """

    def __init__(self, primary: DataFile | None, secondary: DataFile | None, paths: list[str], extent_size: int,
                 health: CopyHealth, sums: SumStore, activity: ActivityLog,
                 need: int, on_event: Callable[[str, dict[str, Any]], None] | None = None,
                 readable: list[bool] | None = None, readonly: bool = False) -> None:
        """``readonly``: the pool is open read-only: nothing is written (a failed copy is left
        out here, not recorded; a bad block is not repaired)."""
        self.readonly = readonly
        self.copies: list[DataFile | None] = [primary, secondary]
        self.readable = readable or [True, True]
        #: ``health``'s clear count when ``dirty`` was last known to be on record
        self._cleared = 0
        self.paths = paths
        self.E = extent_size
        self.B = extent_size // BLOCK
        self.need = need
        self.dirty: dict[int, set[int]] = {0: set(), 1: set()}
        self.touched: set[int] = set()
        #: extent -> checksum per block written since the last flush (0: not written).
        self.pending: dict[int, np.ndarray] = {}
        #: the same arrays as C pointers: the C write puts the checksums straight into them
        self._pending_c: dict[int, object] = {}
        self.sums = sums
        self.activity = activity
        self.health = health
        self.on_event = on_event
        #: False only to measure what checksums cost (the bench): writes then record none, and
        #: the pool's records no longer describe its data.
        self.checksums = True
        #: extents the direct path may write (see the module's docstring)
        self.armed = native.UnitArrays(need // extent_size)
        #: extent -> the checksums of its blocks as they are now (verified reads), and as C sees them
        self._truth: dict[int, np.ndarray] = {}
        self.known = native.UnitArrays(need // extent_size)
        self._syncer: ThreadPoolExecutor | None = None  # syncs the second copy beside the first (sync)
        #: False only to measure what verified reads cost (the bench)
        self.verify_reads = True
        #: blocks repaired by reads since the pool opened
        self.healed = 0
        self.unverified = _Unverified(self)
        #: the direct tables that read and write this mirror -> how to republish each
        self._tables: "weakref.WeakKeyDictionary[native.DirectTable, weakref.WeakMethod[Callable[[], None]]]" = weakref.WeakKeyDictionary()

    @property
    def degraded(self) -> list[int]:
        """Indexes of the copies that are missing or failed."""
        return [i for i, c in enumerate(self.copies) if c is None]

    @property
    def fd(self) -> int:
        """A readable copy's descriptor, for the LU's lock-free read path."""
        c = self.copies[0] or self.copies[1]
        return c.fd if c else -1

    def fail(self, i: int, why: str) -> None:
        """Stop using copy ``i``, for every process of the pool: recorded failed, with what it may
        have missed since the last flush, in one commit; I/O carries on with the other copy.
        EIO when the other copy is out of service too, or (as far as the pool's record says)
        lacks what this one has."""
        if self.copies[i] is None:
            return
        other = 1 - i
        if self.copies[other] is None or not self.readable[other]:
            raise OSError(errno.EIO, f"both copies of the mirror failed: {why}")
        if not self.readonly:  # a read-only open records nothing
            with self.health.meta.write() as txn:
                if self.health.states(txn)[other] == FAILED:
                    raise OSError(errno.EIO, f"both copies of the mirror failed: {why} (another process "
                                             f"failed failure group {other})")
                self.health.set_state(txn, i, FAILED, why)
                self.health.add(i, sorted(self.touched), txn)
        self.copies[i] = None
        self.readable[i] = False
        log.warning("failure group %d (%s) failed: %s; continuing degraded", i, self.paths[i], why)
        if self.on_event:
            self.on_event("mirror_degraded", {"copy": i, "path": self.paths[i], "why": why})
        self.dirty[i].update(self.touched)
        self._repoint()

    def attach(self, i: int, df: DataFile, *, readable: bool = True) -> None:
        """Put copy ``i`` back in service (``readable``: it lacks nothing)."""
        self.copies[i] = df
        self.readable[i] = readable
        self._repoint()

    def resynced(self, cleared: int, whole: list[int]) -> None:
        """This process cleared bits (a resync, ``cleared`` the count after it): what it remembers
        setting is still on record; the copies ``whole`` lack nothing now and are read again."""
        self._cleared = cleared
        for i in whole:
            self.readable[i] = True
        if whole:
            self._repoint()

    def follow(self, txn: "lmdb.Transaction", reopen: Callable[[int], DataFile | None]) -> None:
        """Take the pool's record of the copies (inside ``txn``, a commit of this process): a copy
        another process failed leaves service here too, what this process wrote since its last
        flush marked as missed in ``txn``; one brought back (``reopen`` opens its file, None if it
        cannot) is written again, and read once it lacks nothing."""
        rec = self.health.record(txn)
        if rec.get("cleared", 0) != self._cleared:  # another process cleared bits: ours may be gone
            self.dirty = {0: set(), 1: set()}
            self._cleared = rec.get("cleared", 0)
        for i, state in enumerate(rec["states"]):
            c = self.copies[i]
            if state == FAILED:
                if c is not None:
                    log.warning("failure group %d (%s) was failed by another process: %s; continuing degraded",
                                i, self.paths[i], rec["why"][i])
                    self.copies[i], self.readable[i] = None, False
                    self.health.add(i, sorted(self.touched), txn)
                    self.dirty[i].update(self.touched)
                    self._repoint()
                continue
            if c is None:
                df = reopen(i)
                if df is None:
                    continue
                self.copies[i] = df
                self._repoint()
            if self.readable[i] != (state == OK):
                self.readable[i] = state == OK
                self._repoint()

    # -- the direct path -------------------------------------------------------------------------

    def publish_table(self, table: "native.DirectTable", *, unit: int, size: int, chunk: int, phys: list[Any],
                      direct: list[Any] | None, zero_slow: bool, map_writes: bool, serve: bool,
                      republish: Callable[[], None], verify: bool = True) -> None:
        """Point ``table`` at these copies (the caller holds it): reads from the first live copy,
        verified against ``known`` if ``verify``, writes to both (each through its mapping if
        ``map_writes``), of armed extents only; ``republish`` (a bound method) is called, with
        the table held, whenever the copies change."""
        i, first = self._one() if serve else (0, None)
        other = self.copies[1] if i == 0 else None
        writes = direct if self.checksums and not self.degraded else None
        mapped = serve and map_writes and writes is not None
        table.publish(first.fd if first is not None else -1, first.mapping() if mapped and first is not None else native.NO_MAP,
                      unit, size, chunk, phys, writes, zero_slow,
                      first.dirty_flag if first is not None else np.zeros(1, np.int32),
                      first.sync_failed if first is not None else None)
        table.mirror(other.fd if other is not None else -1, other.mapping() if mapped and other is not None else native.NO_MAP,
                     other.dirty_flag if other is not None else None, self.armed,
                     self.known if verify and self.verifies else None,
                     other.sync_failed if other is not None else None)
        self._tables[table] = weakref.WeakMethod(republish)

    @contextmanager
    def _tables_held(self) -> Iterator[list[Any]]:
        """Every direct table of this mirror held: no direct I/O is in flight until the end."""
        with ExitStack() as stack:
            held = list(self._tables.items())
            for table, _ in held:
                stack.enter_context(table)
            yield held

    def _disarm_all(self) -> None:
        with self._tables_held():
            self.armed.disarm()

    def _repoint(self) -> None:
        """The copies changed: nothing stays armed, every table follows."""
        with self._tables_held() as held:
            self.armed.disarm()
            for _, method in held:
                fn = method()
                if fn is not None:
                    fn()

    def _arm(self, exts: range) -> None:
        """Let the direct path write ``exts`` until the next flush (their write-ahead records,
        their regions logged whole, are durable: the caller's ``_before_write``), and with them every extent after them whose
        regions are logged already, up to AHEAD regions on: a writer going through its extents
        in order then comes here once per AHEAD regions, not once per extent."""
        if not self.checksums or self.degraded or not self._tables or exts[-1] in self.armed:
            return
        E = self.E
        end = min(self.need // E, max(exts[-1] + 1, (exts[0] * E + AHEAD * REGION) // E))
        for e in range(exts[0], end):
            if e not in self.armed:
                if not self.activity.covers(e * E, E):
                    break
                self.touched.add(e)  # what a copy failing later may have missed
                self._pending_of(e)
                self.armed.arm(e, self._pending_c[e])

    def _dirty_for(self, i: int, extents: set[int] | range) -> None:
        new = [e for e in extents if e not in self.dirty[i]]
        if new:
            self.health.add(i, new)
            self.dirty[i].update(new)

    def _extents(self, offset: int, length: int) -> range:
        return range(offset // self.E, (offset + max(length, 1) - 1) // self.E + 1)

    def _before_write(self, offset: int, length: int) -> None:
        """The write-ahead records: the activity log (of the whole extents written, which
        ``_arm`` needs), and the dirty bits of a missing copy."""
        exts = self._extents(offset, length)
        self.activity.cover(exts[0] * self.E, len(exts) * self.E)
        for i in self.degraded:
            self._dirty_for(i, exts)
        self.touched.update(exts)
        self._arm(exts)

    def _one(self) -> tuple[int, DataFile]:
        """The first copy reads may come from."""
        for i, c in enumerate(self.copies):
            if c is not None and self.readable[i]:
                return i, c
        raise OSError(errno.EIO, "no copy of the mirror holds every extent (both missing, or one missing "
                                 "and the other being resynced)")

    def _sources(self) -> list[tuple[int, DataFile]]:
        return [(i, c) for i, c in enumerate(self.copies) if c is not None and self.readable[i]]

    # -- checksums -----------------------------------------------------------------------------

    def current_sums(self, ext: int) -> np.ndarray:
        """The checksums that describe extent ``ext`` now: pending over committed (0: none)."""
        rec = self.sums.load(ext)
        out = np.zeros(self.B, np.uint64) if rec is None else rec
        p = self.pending.get(ext)
        if p is not None:
            out = np.where(p != 0, p, out)
        return out

    def _pending_of(self, ext: int) -> np.ndarray:
        p = self.pending.get(ext)
        if p is None:
            p = self.pending[ext] = np.zeros(self.B, np.uint64)
            self._pending_c[ext] = native.sums_pointer(p)
        return p

    def note_sums(self, offset: int, sums: np.ndarray) -> None:
        """Record the checksums of whole blocks written from ``offset`` (block-aligned)."""
        first = offset // BLOCK
        pos = 0
        while pos < len(sums):
            ext, b = divmod(first + pos, self.B)
            k = min(self.B - b, len(sums) - pos)
            self._pending_of(ext)[b:b + k] = sums[pos:pos + k]
            t = self._truth.get(ext)
            if t is not None:
                t[b:b + k] = sums[pos:pos + k]
            pos += k

    def good_block(self, block: int) -> bytes:
        """Block number ``block`` from a copy that matches its checksum (any copy when it has
        none). EIO when every copy is damaged: a write must not build on bad bytes."""
        ext, b = divmod(block, self.B)
        want = int(self.current_sums(ext)[b])
        for i, c in self._sources():
            try:
                data = c.pread(block * BLOCK, BLOCK)
            except OSError as e:
                self.fail(i, f"read at offset {block * BLOCK}: {e.strerror}")
                continue
            if not want or int(native.sum_blocks(data)[0]) == want:
                return data
        raise OSError(errno.EIO, f"block {block} (extent {ext}) is damaged in every copy")

    def _good_range(self, offset: int, buf: bytearray | memoryview) -> None:
        """Fill ``buf`` with the whole blocks at ``offset`` (within one extent) as their
        checksums say they are, block by block from whichever copy holds each good (what a copy
        on write reads)."""
        _, c = self._one()
        mv = memoryview(buf)
        native.pread_all(c.fd, mv, offset, c.path)
        ext, b0 = divmod(offset // BLOCK, self.B)
        want = self.current_sums(ext)[b0:b0 + len(mv) // BLOCK]
        have = native.sum_blocks(mv)
        for b in np.flatnonzero((want != 0) & (have != want)).tolist():
            mv[b * BLOCK:(b + 1) * BLOCK] = self.good_block(offset // BLOCK + b)

    def commit_sums(self, txn: "lmdb.Transaction", gone: np.ndarray, mirrored: Callable[[np.ndarray], np.ndarray]) -> None:
        """Inside the flush's commit: delete the records of the extents in ``gone`` (no mirrored
        LU references them any more: freed, unmirrored, unmapped) and store the pending checksums
        of extents a mirrored LU still references (``mirrored``: bool per extent, after this
        commit's count changes) over their committed records. ``flushed`` clears pending."""
        self.sums.delete(txn, gone)
        self.forget_truth(gone)
        if not self.pending:
            return
        exts = np.fromiter(self.pending, np.int64, len(self.pending))
        for ext in exts[mirrored(exts)].tolist():
            p = self.pending[ext]
            if not p.any():
                continue  # armed for the direct path, never written
            rec = self.sums.get(txn, ext)
            if rec is None:
                rec = np.zeros(self.B, np.uint64)
            np.copyto(rec, p, where=p != 0)
            self.sums.put(txn, ext, rec)

    def flushed(self) -> None:
        """The commit holding the pending checksums is durable."""
        self.pending, self._pending_c = {}, {}
        self.touched = set()
        self.activity.flushed()

    # -- the DataFile interface ----------------------------------------------------------------

    @property
    def dirty_data(self) -> bool:
        return any(c is not None and c.dirty for c in self.copies)

    def pwrite(self, data: Buffer, offset: int) -> None:
        """Write ``data`` at physical byte ``offset`` to every live copy, recording the checksums
        of the blocks it covers; a partial block is completed from a copy proven good."""
        n = len(data)
        self._before_write(offset, n)
        lo, hi = offset - offset % BLOCK, -(-(offset + n) // BLOCK) * BLOCK
        if not self.checksums:
            lo = hi = offset
        elif lo != offset or hi != offset + n:
            buf = bytearray(hi - lo)
            if lo != offset:
                buf[:BLOCK] = self.good_block(lo // BLOCK)
            if hi != offset + n and (hi - BLOCK > lo or lo == offset):
                buf[-BLOCK:] = self.good_block(hi // BLOCK - 1)
            buf[offset - lo:offset - lo + n] = data
            data = buf
        self._write_blocks(data, lo)

    def _write_blocks(self, data: Buffer, offset: int) -> None:
        """Whole blocks at a block-aligned ``offset``, to every live copy, checksummed in C."""
        nb = len(data) // BLOCK
        ext, b = divmod(offset // BLOCK, self.B)
        sums = None
        one = b + nb <= self.B  # within one extent (every write): C fills the pending record
        if not self.checksums:
            sums_c = None
        elif one:
            self._pending_of(ext)
            sums_c = self._pending_c[ext] + b  # type: ignore[operator]
        else:
            sums = np.empty(nb, np.uint64)
            sums_c = native.sums_pointer(sums)
        c0, c1 = self.copies
        if c0 is None and c1 is None:
            raise OSError(errno.EIO, "both copies of the mirror are missing")
        for c in (c0, c1):
            if c is not None:
                c.dirty = True
        r, failed = native.pwrite2(c0.fd if c0 else -1, c1.fd if c1 else -1, data, offset, sums_c=sums_c,
                                   stripe=ext if one else -1)
        t = self._truth.get(ext) if one and self.checksums else None
        if t is not None:  # after the bytes: a reader between them goes slow, to the LU's lock
            t[b:b + nb] = self.pending[ext][b:b + nb]
        for i in (0, 1):
            if failed & (1 << i):
                self.fail(i, f"write at offset {offset}: {os.strerror(-r)}")
        if sums is not None:
            self.note_sums(offset, sums)

    def cow(self, src_off: int, dst_off: int, length: int, data: Buffer | None, start: int) -> None:
        """Copy-on-write of whole blocks within one extent into both copies: the source as its
        checksums say it is (a block bad in one copy is taken from the other), ``data`` laid over
        it at ``start``."""
        from .datafile import _scratch

        buf = _scratch(length)
        self._good_range(src_off, buf)
        if data:
            buf[start:start + len(data)] = data
        self._before_write(dst_off, length)
        self._write_blocks(buf, dst_off)

    #: ``copy`` changes the mirror's records: callers hold the pool lock (storage/).
    concurrent_copy = False

    def copy(self, src_off: int, dst_off: int, length: int) -> None:
        """As ``cow`` with nothing laid over."""
        self.cow(src_off, dst_off, length, None, 0)

    @property
    def verifies(self) -> bool:
        """Whether its reads are checked against the checksums (``pread``, ``read_multi``)."""
        return self.verify_reads and self.checksums

    def pread_unverified(self, offset: int, length: int) -> bytes:
        """From the primary; if it fails, from the redundant copy (the primary leaves service)."""
        for i, c in self._sources():
            try:
                data = c.pread(offset, length)
            except OSError as e:
                self.fail(i, f"read at offset {offset}: {e.strerror}")
                continue
            return data
        raise OSError(errno.EIO, "no readable copy")

    def read_multi_unverified(self, buf: memoryview, offsets: "np.ndarray", lengths: "np.ndarray") -> None:
        """As DataFile.read_multi, from the primary, failing over to the redundant copy."""
        for i, c in self._sources():
            try:
                c.read_multi(buf, offsets, lengths)
                return
            except OSError as e:
                self.fail(i, f"read: {e.strerror}")
        raise OSError(errno.EIO, "no readable copy")

    def readinto(self, buf: memoryview, offset: int) -> int:
        """Unverified, from the first readable copy (the lock-free path of a mirror whose reads
        are not verified: bench/ only); an error leaves the copy to the caller's locked path."""
        return self._one()[1].readinto(buf, offset)

    def pread(self, offset: int, length: int) -> bytes:
        """As ``pread_unverified``, every block verified and healed (the module's docstring).
        The caller holds the lock that orders the LU's own writes (the LU's)."""
        buf = bytearray(self.pread_unverified(offset, length))
        self._verify(memoryview(buf), offset)
        return bytes(buf)

    def read_multi(self, buf: memoryview, offsets: "np.ndarray", lengths: "np.ndarray") -> None:
        """As ``read_multi_unverified``, every block verified and healed (as ``pread``)."""
        self.read_multi_unverified(buf, offsets, lengths)
        pos = 0
        for off, n in zip(offsets.tolist(), lengths.tolist()):
            if off >= 0:
                self._verify(buf[pos:pos + n], off)
            pos += n

    def _verify(self, mv: memoryview, offset: int) -> None:
        """Check ``mv`` (the bytes at ``offset``, within one extent) block by block against the
        truth, and put the good bytes over any block that does not match."""
        if not self.verifies or not len(mv):
            return
        ext = offset // self.E
        want = self.truth(ext)
        if not want.any():
            return
        first, last = offset // BLOCK, (offset + len(mv) - 1) // BLOCK
        lo, hi = -(-offset // BLOCK), (offset + len(mv)) // BLOCK  # the blocks mv holds whole
        bad: list[int] = []
        if lo < hi:
            inner = mv[lo * BLOCK - offset:hi * BLOCK - offset]
            got = native.sum_blocks(inner)
            w = want[lo % self.B:lo % self.B + hi - lo]
            bad = [lo + int(b) for b in np.flatnonzero((w != 0) & (got != w))]
        for b in {first, last} - set(range(lo, hi)):  # partial blocks: the whole block is read
            k = b % self.B
            if want[k] and int(native.sum_blocks(self.pread_unverified(b * BLOCK, BLOCK))[0]) != int(want[k]):
                bad.append(b)
        for b in bad:
            good = self._heal(b)
            a, z = max(offset, b * BLOCK), min(offset + len(mv), (b + 1) * BLOCK)
            mv[a - offset:z - offset] = good[a - b * BLOCK:z - b * BLOCK]

    def truth(self, ext: int) -> np.ndarray:
        """The checksums extent ``ext``'s blocks must have now (0: none known), kept in memory
        and shown to the C direct path (``known``)."""
        t = self._truth.get(ext)
        if t is None:
            if len(self._truth) >= MAX_TRUTH:
                self.forget_truth(list(self._truth))
            t = self._truth[ext] = np.array(self.current_sums(ext), np.uint64)
            self.known.arm(ext, native.sums_pointer(t))
        return t

    def forget_truth(self, extents: "list[int] | np.ndarray") -> None:
        """Drop what is known of ``extents`` (their records changed under it, or to bound memory)."""
        drop = [int(e) for e in extents if int(e) in self._truth]
        if drop:
            with self._tables_held():
                self.known.disarm(drop)
            for e in drop:
                del self._truth[e]

    def _heal(self, block: int) -> bytes:
        """Block number ``block``, which did not match its checksum as first read: under its
        extent's stripe lock (no write to it is in flight), each readable copy is read again and
        judged; a bad copy is rewritten from a good one and the repair reported. EIO when no copy
        matches."""
        ext, k = divmod(block, self.B)
        truth = self.truth(ext)  # before the lock: loading it may wait for the tables
        found: bytes | None = None
        bad: list[int] = []
        failed: list[tuple[int, str]] = []
        native.stripe_lock(ext)
        try:
            want = int(truth[k])
            for i, c in self._sources():
                try:
                    data = c.pread(block * BLOCK, BLOCK)
                except OSError as e:
                    failed.append((i, f"read at offset {block * BLOCK}: {e.strerror}"))
                    continue
                if not want or int(native.sum_blocks(data)[0]) == want:
                    found = found or data
                else:
                    bad.append(i)
            for i in bad if found is not None and not self.readonly else []:
                dst = self.copies[i]
                assert dst is not None and found is not None
                try:
                    dst.pwrite(found, block * BLOCK)
                except OSError as e:
                    failed.append((i, f"write at offset {block * BLOCK}: {e.strerror}"))
                dst.dirty = True
        finally:
            native.stripe_unlock(ext)
        for i, why in failed:  # outside the stripe lock: failing a copy holds every table
            self.fail(i, why)
        if found is None:
            self._report({"unrecoverable": [ext], "bad": [], "repaired": 0, "by": "read"})
            raise OSError(errno.EIO, f"block {block} (extent {ext}) does not match its checksum in any copy")
        if bad and self.readonly:
            log.warning("block %d (extent %d) is bad in failure group(s) %s; read from the other copy "
                        "(a read-only open repairs nothing: pool scrub --repair does)", block, ext, bad)
        elif bad:
            self.healed += len(bad)
            log.warning("block %d (extent %d) was bad in failure group(s) %s; repaired from the other copy",
                        block, ext, bad)
            self._report({"bad": [{"extent": ext, "copy": i, "blocks": 1} for i in bad], "unrecoverable": [],
                          "repaired": len(bad), "by": "read"})
        return found

    def _report(self, info: dict[str, Any]) -> None:
        if self.on_event:
            self.on_event("checksum_mismatch", info)

    def punch(self, offset: int, length: int) -> None:
        """Make the range read as zeros in every copy: whole blocks are punched (and checksummed
        as zeros), partial ones written as zeros."""
        lo, hi = -(-offset // BLOCK) * BLOCK, (offset + length) // BLOCK * BLOCK
        if hi <= lo:
            self.pwrite(bytes(length), offset)
            return
        if lo > offset:
            self.pwrite(bytes(lo - offset), offset)
        if offset + length > hi:
            self.pwrite(bytes(offset + length - hi), hi)
        self._before_write(lo, hi - lo)
        self._punch_copies(lo, hi - lo)
        self.note_sums(lo, np.full((hi - lo) // BLOCK, _ZERO_SUM, np.uint64))

    def release(self, offset: int, length: int) -> None:
        """Drop the data of extents nothing references any more: punched in every copy, their
        pending checksums forgotten (the commit that freed them deleted their records)."""
        self._punch_copies(offset, length)
        exts = self._extents(offset, length)
        self.armed.disarm(list(exts))  # no table maps them any more: no direct I/O is in flight
        self.known.disarm(list(exts))
        for e in exts:
            self.pending.pop(e, None)
            self._pending_c.pop(e, None)
            self._truth.pop(e, None)

    def _punch_copies(self, offset: int, length: int) -> None:
        for i, c in enumerate(self.copies):
            if c is not None:
                try:
                    c.punch(offset, length)
                except OSError as e:
                    self.fail(i, f"punch at offset {offset}: {e.strerror}")

    def must_commit(self) -> bool:
        """Whether a flush must commit though it need not store the pending checksums yet
        (``Journal.flush``'s checkpoint): the activity log holds more regions than a session
        keeps hot, and only a commit lets it forget them (activity.py); or the pool's record of
        the copies is not the one this process follows, which a commit takes (``follow``)."""
        if len(self.activity.hot) > HOT_LIMIT:
            return True
        with self.health.meta.read() as txn:
            rec = self.health.record(txn)
        return rec.get("cleared", 0) != self._cleared or any(
            (state == FAILED) != (self.copies[i] is None) or (state == OK) != self.readable[i]
            for i, state in enumerate(rec["states"]))

    def sync(self, keep_armed: bool = False) -> None:
        """Check that each copy's file is still the one at its path, whole, then sync both at
        once: the second on the mirror's sync thread (fdatasync releases the GIL), so a flush
        waits for the slower disk, not for the two in turn. ``keep_armed``: for a flush that
        commits nothing; else every extent is disarmed first, so that from here to the commit's
        end every write is one this flush sees (its checksums go to Python, after the commit)."""
        if not keep_armed:
            self._disarm_all()
        for i, c in enumerate(self.copies):
            if c is not None:
                why = c.problem(self.need + LABEL)
                if why:
                    self.fail(i, why)
        errors: dict[int, OSError] = {}

        def one(i: int, c: DataFile) -> None:
            try:
                c.sync()
            except OSError as e:
                errors[i] = e
        live = [(i, c) for i, c in enumerate(self.copies) if c is not None and c.dirty]
        second = None
        if len(live) == 2:
            if self._syncer is None:  # one thread for the mirror's life: a flush starts none
                self._syncer = ThreadPoolExecutor(1, thread_name_prefix="mirror-sync")
            second = self._syncer.submit(one, *live[1])
            live = live[:1]
        for i, c in live:
            one(i, c)
        if second is not None:
            second.result()
        for i, e in errors.items():
            self.fail(i, f"sync: {e.strerror}")

    def block_status(self, offset: int, length: int) -> tuple[int, int]:
        """As the first live copy has it (both hold the same bytes)."""
        return self._one()[1].block_status(offset, length)

    def size(self) -> int:
        return self._one()[1].size()

    def close(self) -> None:
        """End the sync thread (the copies are their group's to close)."""
        if self._syncer is not None:
            self._syncer.shutdown()
            self._syncer = None

    def grow(self, need: int) -> None:
        """The files now hold ``need`` bytes of extents (the pool grew)."""
        self.need = need
        self.armed.grow(need // self.E)
        self.known.grow(need // self.E)
        self._repoint()  # the armed directory may have moved


_ZERO_SUM = int(native.sum_blocks(bytes(BLOCK))[0])
#: extents whose truth is kept in memory at most (8 KiB each with 1 MiB extents): past it, all
#: are forgotten and loaded again as they are read
MAX_TRUTH = 1 << 15


class _Unverified:
    """The reads of a mirror, not verified: for a handle that does not know the truth (a
    read-only handle of an LU another process may be writing)."""

    def __init__(self, m: MirrorFile) -> None:
        self.pread = m.pread_unverified
        self.read_multi = m.read_multi_unverified
