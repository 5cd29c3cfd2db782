"""Changed extents between two points of an LU, and incremental streams of them.

``diff`` compares two extent maps (a snapshot against a later snapshot, or against the LU
now): an extent changed where the two map it differently, since a write after a snapshot
always lands in another physical extent (copy on write) and a discard unmaps. So a diff costs
the maps' stored chunks, never a read of data; like any map-based diff (``rbd diff``,
``thin_delta``) it may list an extent rewritten with the bytes it held.

An incremental stream (``export_diff``) is self-describing::

    b"BSDIFF1\\n"  u32 n  n bytes of JSON header: lu, from, to, size, from_size, extent_size
    then records:  b"D" u64 offset u64 length, then the bytes  (data)
                   b"Z" u64 offset u64 length                  (reads as zeros)
    then:          b"E" u64 xxh3-64 of every byte before it

``import_diff`` applies one to an LU that is still exactly at the stream's ``from`` snapshot
(the snapshot exists and the LU has not changed since), and takes the ``to`` snapshot after it.
A stream for another base, a truncated or a corrupted one is refused, and whatever part of it was
written is rolled back to ``from``: nothing of it stays.
"""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import xxhash

from .errors import BlockstoreError, InvalidArgument, NotFound
from .extents import CHUNK, UNMAPPED, ExtentMap, runs
from .names import snapshot_name, split_snapshot

if TYPE_CHECKING:
    from .pool import Pool

MAGIC = b"BSDIFF1\n"
STEP = 1 << 20
_REC = struct.Struct("<cQQ")


def changed_extents(a: ExtentMap, b: ExtentMap) -> tuple[np.ndarray, np.ndarray]:
    """(logical extents, whether ``b`` maps each) where maps ``a`` and ``b`` differ, within
    ``b``'s length (what lies past it is gone, and what a grown ``b`` adds past ``a`` is holes
    of both: the sizes say so); only chunks that exist in either are visited."""
    n = len(b)
    exts, data = [np.zeros(0, np.int64)], [np.zeros(0, bool)]
    holes = np.full(CHUNK, UNMAPPED, np.uint32)
    for c in sorted(a.made | b.made):
        ta, tb = _chunk(a, c, holes), _chunk(b, c, holes)
        at = np.flatnonzero(ta != tb)
        at = at[at + c * CHUNK < n]
        exts.append(at + c * CHUNK)
        data.append(tb[at] != UNMAPPED)
    return np.concatenate(exts), np.concatenate(data)



def _chunk(m: ExtentMap, c: int, holes: np.ndarray) -> np.ndarray:
    """Chunk ``c`` of ``m``'s table as uint32 entries (``holes`` where it has none)."""
    tab = m.tabs[c] if c < len(m.tabs) else None
    return holes if tab is None else np.frombuffer(tab, np.uint32)

def diff(pool: "Pool", older: str, newer: str) -> dict[str, Any]:
    """The byte ranges in which ``newer`` (NAME@SNAP or NAME) differs from ``older``
    (NAME@SNAP of the same LU), within ``newer``'s size: ``{"from", "to", "size", "from_size",
    "extent_size", "ranges": [{"offset", "length", "data"}], "changed"}``, ``data`` False where
    ``newer`` reads as zeros (unmapped: discarded). A size change is the two sizes."""
    base, snap = split_snapshot(older)
    nbase, _ = split_snapshot(newer)
    if snap is None:
        raise InvalidArgument(f"{older!r}: the older side of a diff is a snapshot, NAME@SNAP")
    if nbase != base:
        raise InvalidArgument(f"{older} and {newer} are not of the same LU")
    (ma, sa), (mb, sb) = pool.map_of(older), pool.map_of(newer)
    E = pool.extent_size
    exts, data = changed_extents(ma, mb)
    ranges = []
    for first, count in runs(exts):
        flags = data[np.searchsorted(exts, first):np.searchsorted(exts, first + count)]
        # split a run where it turns from data to zeros
        cuts = np.flatnonzero(np.diff(flags.astype(np.int8))) + 1
        for part, f in zip(np.split(np.arange(first, first + count), cuts), np.split(flags, cuts)):
            start, end = int(part[0]) * E, min((int(part[-1]) + 1) * E, sb)
            if start < end:
                ranges.append({"offset": start, "length": end - start, "data": bool(f[0])})
    return {"from": older, "to": newer, "size": sb, "from_size": sa, "extent_size": E, "ranges": ranges,
            "changed": sum(r["length"] for r in ranges)}


def export_diff(pool: "Pool", newer: str, since: str, out: IO[bytes],
                progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Write the stream of what ``newer`` (NAME@SNAP or NAME) changed since snapshot ``since``
    (a snapshot name of the same LU) to ``out``. Returns the diff it wrote."""
    base, _ = split_snapshot(newer)
    d = diff(pool, snapshot_name(base, since), newer)
    h = xxhash.xxh3_64()

    def put(b: bytes | bytearray | memoryview) -> None:
        h.update(b)
        out.write(b)
    header = json.dumps({"lu": base, "from": since, "to": split_snapshot(newer)[1], "size": d["size"],
                         "from_size": d["from_size"], "extent_size": d["extent_size"]}).encode()
    put(MAGIC + struct.pack("<I", len(header)) + header)
    total, done = sum(r["length"] for r in d["ranges"] if r["data"]), 0
    with pool.lu(newer, writable=False) as lu:
        for r in d["ranges"]:
            if not r["data"]:
                put(_REC.pack(b"Z", r["offset"], r["length"]))
                continue
            end = min(r["offset"] + r["length"], lu.size)
            for pos in range(r["offset"], end, STEP):
                chunk = lu.read(pos, min(STEP, end - pos))
                put(_REC.pack(b"D", pos, len(chunk)))
                put(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
    out.write(b"E" + struct.pack("<Q", h.intdigest()))
    out.flush()
    return d


def _records(src: IO[bytes], h: Any) -> Iterator[tuple[bytes, int, int, bytes]]:
    while True:
        kind = _exactly(src, 1, None, final=True)
        if kind == b"E":
            want = struct.unpack("<Q", _exactly(src, 8, None))[0]
            if want != h.intdigest():
                raise InvalidArgument("the diff stream is corrupted (checksum mismatch)")
            if src.read(1):
                raise InvalidArgument("the diff stream has bytes after its end")
            return
        if kind not in (b"D", b"Z"):
            raise InvalidArgument("the diff stream is corrupted (unknown record)")
        h.update(kind)
        off, length = struct.unpack("<QQ", _exactly(src, 16, h))
        yield kind, off, length, _exactly(src, length, h) if kind == b"D" else b""


def _exactly(src: IO[bytes], n: int, h: Any, final: bool = False) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = src.read(n - len(buf))
        if not chunk:
            raise InvalidArgument("the diff stream is truncated" + (" (no end record)" if final else ""))
        buf += chunk
    if h is not None:
        h.update(buf)
    return bytes(buf)


def import_diff(pool: "Pool", name: str, src: IO[bytes]) -> dict[str, Any]:
    """Apply a stream from ``export_diff`` to LU ``name``, which must have the stream's ``from``
    snapshot and no change since it; take the ``to`` snapshot after (if the stream names one).
    Refused, with nothing of it left applied, for another base or a damaged stream."""
    h = xxhash.xxh3_64()
    magic = src.read(len(MAGIC))
    if magic != MAGIC:
        raise InvalidArgument("not a blockstore diff stream")
    h.update(magic)
    n = struct.unpack("<I", _exactly(src, 4, h))[0]
    if n > 1 << 16:
        raise InvalidArgument("the diff stream is corrupted (header length)")
    try:
        head = json.loads(_exactly(src, n, h))
        since, to, size, from_size = head["from"], head.get("to"), int(head["size"]), int(head["from_size"])
    except (ValueError, KeyError, TypeError):
        raise InvalidArgument("the diff stream is corrupted (header)") from None
    base = snapshot_name(name, since)
    try:
        at_base = pool.map_of(base)
    except NotFound:
        raise InvalidArgument(f"the stream applies to {head.get('lu')}@{since}: {name!r} has no snapshot {since!r}") from None
    if at_base[1] != from_size:
        raise InvalidArgument(f"the stream's base is {from_size} bytes, {base} is {at_base[1]}")
    if len(changed_extents(at_base[0], pool.map_of(name)[0])[0]) or pool.lu_info(name)["size"] != from_size:
        raise InvalidArgument(f"{name!r} has changed since {since}: the stream applies to the LU as it was at "
                              f"{since} (lu rollback {name} {since} first)")
    if to is not None and pool.lu_info(name)["snapshots"].count(snapshot_name(name, to)):
        raise InvalidArgument(f"{name!r} already has a snapshot {to!r}")
    applied = 0
    try:
        with pool.lu(name) as lu:
            if size > lu.size:
                pool.resize(name, size)
            for kind, off, length, data in _records(src, h):
                if off + length > size:
                    raise InvalidArgument("the diff stream is corrupted (a range past its size)")
                if kind == b"D":
                    lu.write(off, data)
                else:
                    lu.discard(off, length)
                applied += length
            lu.flush()
        if size < from_size:
            pool.resize(name, size, force=True)
    except BaseException:
        pool.rollback(name, since)  # the LU as it was at the base: nothing of the stream stays
        raise
    if to is not None:
        pool.snapshot(name, to)
    return {"lu": name, "from": since, "to": to, "size": size, "applied": applied}


def open_stream(path: str, mode: str) -> IO[bytes]:
    """``path`` as a binary stream, ``-`` for stdin/stdout."""
    import sys
    if path == "-":
        return os.fdopen(os.dup((sys.stdin if "r" in mode else sys.stdout).fileno()), mode + "b")
    try:
        return open(path, mode + "b")
    except OSError as e:
        raise BlockstoreError(f"cannot open {path}: {e.strerror}") from None
