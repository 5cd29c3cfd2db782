"""The FUSE adapter: every LU is a regular file ``/NAME``, every snapshot a read-only file
``/.snapshots/NAME/SNAP``. It translates file operations into Pool and LU calls and holds no
storage policy of its own (as s3backer's fuse_ops.c over its block store)."""
from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from blockstore import BlockstoreError, Busy
from blockstore.lu import LU
from blockstore.native import STAT_LUS, fuse_open_flags_sent, fuse_stat, fuse_stat_add
from blockstore.pool import Pool
from blockstore.names import check_name

from .binding import FuseOSError, Operations, caller_uid

if TYPE_CHECKING:
    from blockstore.cluster.serving import Gate, NodeServing

log = logging.getLogger("blockstore.fuse")
SNAPDIR = ".snapshots"
# fallocate(2) modes (linux/falloc.h)
KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE = 0x01, 0x02, 0x10
F = TypeVar("F", bound=Callable[..., Any])


def errors(fn: F) -> F:
    """Engine errors become their errno; anything unexpected is logged and becomes EIO."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FuseOSError:
            raise
        except BlockstoreError as e:
            raise FuseOSError(e.errno) from None
        except OSError as e:
            raise FuseOSError(e.errno or errno.EIO) from None
        except Exception:
            log.exception("%s failed", fn.__name__)
            raise FuseOSError(errno.EIO) from None
    return wrapper  # type: ignore[return-value]


@dataclass(frozen=True)
class Access:
    """Who may use the mount's files: their owner, group and permission bits, which the kernel
    checks (the mount uses ``default_permissions``). Directories get x wherever files have r.
    Read-only files (snapshots, a read-only mount) lose their w bits."""
    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)
    mode: int = 0o600

    def file_mode(self, read_only: bool) -> int:
        return self.mode & ~0o222 if read_only else self.mode

    def dir_mode(self) -> int:
        return self.mode | (self.mode & 0o444) >> 2


class LUFilesystem(Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(self, pool: Pool, *, read_only: bool = False, direct: Any = None,
                 access: Access | None = None, gate: "Gate | None" = None) -> None:
        """``direct``: a DirectPath (direct.py) told of every handle opened and released.
        ``gate``: a cluster node's mount (cluster/serving.py): it writes only the LUs its node
        owns, each under its ownership epoch, and reads the others through their redundant copy."""
        self.pool = pool
        self.serving: NodeServing | None = None
        if gate is not None:
            from blockstore.cluster.serving import NodeServing
            self.serving = NodeServing(pool, gate, self._writers)
        self.read_only = read_only
        self.direct = direct
        self.handles: dict[int, LU] = {}
        # LUs this mount created that are still empty -> whether sizing or filling them failed:
        # the last release of a failed one removes it (a failed `truncate -s 1001` or `cp` onto
        # the mount leaves nothing behind, as on a file system).
        self.fresh: dict[str, bool] = {}
        self._fh = itertools.count(1)
        self._lock = threading.Lock()
        self.access = access or Access()
        self.server_uid = os.getuid()
        self.started = time.time_ns()
        self.on_ready: Callable[[], None] | None = None
        # LU name -> its index in the mount's request counters (native.fuse_stat), given at first open
        self.stat_index: dict[str, int] = {}

    # -- paths -------------------------------------------------------------------------------

    @staticmethod
    def _parse(path: str) -> tuple[str, str | None]:
        """('root'|'snapdir'|'lusnaps'|'lu'|'snap', name) for a path, or ENOENT."""
        parts = [p for p in path.split("/") if p]
        try:
            if not parts:
                return "root", None
            if parts[0] == SNAPDIR:
                if len(parts) == 1:
                    return "snapdir", None
                if len(parts) == 2:
                    return "lusnaps", check_name(parts[1])
                if len(parts) == 3:
                    return "snap", f"{check_name(parts[1])}@{check_name(parts[2])}"
            elif len(parts) == 1:
                return "lu", check_name(parts[0])
        except BlockstoreError:
            pass
        raise FuseOSError(errno.ENOENT)

    def _lu_name(self, path: str, *, creating: bool = False) -> str:
        """The LU a path names; EINVAL for a name that is no valid LU name, EROFS in snapshots."""
        parts = [p for p in path.split("/") if p]
        if len(parts) != 1 or parts[0] == SNAPDIR:
            raise FuseOSError(errno.EROFS if parts and parts[0] == SNAPDIR else errno.EINVAL)
        if creating:
            try:
                check_name(parts[0])
            except BlockstoreError:
                raise FuseOSError(errno.EINVAL) from None
        return parts[0]

    def _writable(self) -> None:
        if self.read_only:
            raise FuseOSError(errno.EROFS)

    # -- metadata ----------------------------------------------------------------------------

    def init(self, path: str) -> None:
        if self.on_ready:
            self.on_ready()

    def destroy(self, path: str) -> None:
        if self.direct is not None:
            log.info("requests: %s", ", ".join(f"{n} {what}" for what, n in self.direct.counts().items()))
        log.info("opens answered with the engine's flags: %d", fuse_open_flags_sent())
        for fh in list(self.handles):
            self.handles.pop(fh).close()
        self.pool.close()

    @errors
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        kind, name = self._parse(path)
        t = self.started
        base = {"st_uid": self.access.uid, "st_gid": self.access.gid, "st_atime": t, "st_mtime": t, "st_ctime": t}
        if kind in ("root", "snapdir", "lusnaps"):
            if kind == "lusnaps":
                self.pool.lu_info(name)  # ENOENT for no such LU
            return {**base, "st_mode": stat.S_IFDIR | self.access.dir_mode(), "st_nlink": 2}
        info = self._info(name)
        ro = kind == "snap" or self.read_only
        mtime = int(info["created"] * 1e9)
        return {**base, "st_mode": stat.S_IFREG | self.access.file_mode(ro), "st_nlink": 1,
                "st_size": info["size"], "st_blocks": info["allocated"] // 512, "st_blksize": 1 << 20,
                "st_mtime": mtime, "st_ctime": mtime}

    def describe(self, name: str) -> dict[str, Any]:
        """How this mount uses LU ``name`` (the control channel's status, control.py)."""
        with self._lock:
            mine = [lu for lu in self.handles.values() if lu.name == name]
        writer = next((lu for lu in mine if not lu.readonly), None)
        return {"open_handles": len(mine), "writable": writer is not None,
                "bytes_written": writer.bytes_written if writer else 0,
                "pending_copies": writer.pending_copies if writer else 0}

    def _info(self, name: str) -> dict[str, Any]:
        with self._lock:
            for lu in self.handles.values():
                if lu.name == name:
                    return {"size": lu.size, "allocated": lu.allocated_bytes, "created": self.started / 1e9}
        return self.pool.lu_info(name)

    @errors
    def readdir(self, path: str, fh: int) -> list[str]:
        kind, name = self._parse(path)
        rows = self.pool.list_lus()
        if kind == "root":
            names = [SNAPDIR] + [r["name"] for r in rows if r["kind"] != "snapshot"]
        elif kind == "snapdir":
            names = sorted({r["parent"] for r in rows if r["kind"] == "snapshot"})
        elif kind == "lusnaps":
            names = [r["name"].split("@", 1)[1] for r in rows if r["kind"] == "snapshot" and r["parent"] == name]
        else:
            raise FuseOSError(errno.ENOTDIR)
        return [".", ".."] + names

    @errors
    def statfs(self, path: str) -> dict[str, int]:
        st = self.pool.status()
        bs = 4096
        return {"f_bsize": bs, "f_frsize": bs, "f_blocks": st["capacity"] // bs,
                "f_bfree": st["free"] // bs, "f_bavail": st["free"] // bs,
                "f_files": st["lus"] + st["snapshots"], "f_ffree": 1 << 20, "f_namemax": 64}

    # -- files -------------------------------------------------------------------------------

    def _add(self, lu: LU) -> int:
        with self._lock:
            fh = next(self._fh)
            self.handles[fh] = lu
            stat = self.stat_index.get(lu.name)
            if stat is None and len(self.stat_index) < STAT_LUS:
                stat = self.stat_index[lu.name] = len(self.stat_index)
        if self.direct is not None:
            self.direct.attach(fh, lu, -1 if stat is None else stat)
        return fh

    def request_stats(self) -> dict[str, dict[str, Any]]:
        """Per LU opened through this mount: its requests (native.fuse_stat), for metrics.py."""
        with self._lock:
            index = dict(self.stat_index)
        return {name: fuse_stat(i) for name, i in index.items()}

    def _counted(self, fh: int, write: bool, started: int, result: int) -> None:
        """Count a request the C callbacks did not see (a mount without the direct path)."""
        if self.direct is None:
            stat = self.stat_index.get(self.handles[fh].name)
            if stat is not None:
                fuse_stat_add(stat, write, result, time.monotonic_ns() - started)

    @errors
    def open(self, path: str, flags: int) -> int:
        kind, name = self._parse(path)
        if kind not in ("lu", "snap"):
            raise FuseOSError(errno.EISDIR)
        wants_write = (flags & os.O_ACCMODE) != os.O_RDONLY
        if wants_write and (kind == "snap" or self.read_only):
            raise FuseOSError(errno.EROFS)
        if kind == "snap" or self.read_only:
            return self._add(self.pool.open_lu(name, writable=False))
        if self.serving is not None:
            return self._add(self.serving.open(name, wants_write))
        if not wants_write and caller_uid() != self.server_uid:
            # Another user's reader never takes the LU's writer lock (it would keep the pool's
            # owner from writing or snapshotting the LU); it shares the mount's writer handle
            # when there is one, else reads through a read-only handle.
            return self._add(self.pool.held_lu(name) or self.pool.open_lu(name, writable=False))
        try:
            # The owner's O_RDONLY takes a writer handle too: its reads take the direct path,
            # and every open of the LU in this mount then shares one handle, so reads see the
            # mount's own writes.
            lu = self.pool.open_lu(name, writable=True)
        except Busy:
            if wants_write:
                raise
            lu = self.pool.open_lu(name, writable=False)
        return self._add(lu)

    def _writers(self) -> list[LU]:
        """The LU handles this mount has open (a node's serving moves their fence words)."""
        with self._lock:
            return list(self.handles.values())

    def _writing(self, lu: LU, op: Callable[[], None]) -> None:
        """A write or fsync of ``lu``: a node's serving decides whether it waits for a lease."""
        if self.serving is None:
            op()
        else:
            self.serving.writing(lu, op)

    def _handle(self, fh: int) -> LU:
        lu = self.handles[fh]
        if lu.closed:
            raise FuseOSError(errno.ESTALE)  # let go of (its node no longer owns it): reopen
        return lu

    @errors
    def create(self, path: str, mode: int, fi: Any = None) -> int:
        self._writable()
        name = self._lu_name(path, creating=True)
        if self.serving is not None:
            return self._add(self.serving.create(name))
        fh = self._add(self.pool.create_lu(name, 0, allow_empty=True))
        self.fresh[name] = False
        return fh

    @errors
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        started = time.monotonic_ns() if self.direct is None else 0  # else C counts it
        lu = self.handles[fh]
        end = min(offset + size, lu.size)
        data = lu.read(offset, end - offset) if end > offset else b""
        self._counted(fh, False, started, len(data))
        return data

    @errors
    def read_into(self, buf: memoryview, offset: int, fh: int) -> int:
        """Fill libfuse's buffer in place; returns the bytes read (short at the end of the LU)."""
        started = time.monotonic_ns() if self.direct is None else 0  # else C counts it
        lu = self._handle(fh)
        n = max(0, min(len(buf), lu.size - offset))
        if n:
            lu.readinto(offset, buf[:n])
        self._counted(fh, False, started, n)
        return n

    @errors
    def write(self, path: str | None, data: bytes | memoryview, offset: int, fh: int) -> int:
        lu = self._handle(fh)  # the data path's fence is the LU's store's (storage/fenced.py)
        room = lu.size - offset
        if room <= 0:
            self._failed(lu.name)
            raise FuseOSError(errno.ENOSPC)  # an LU does not grow by writing past its end
        if len(data) > room:
            data = data[:room]
        started = time.monotonic_ns() if self.direct is None else 0  # else C counts it
        self._writing(lu, lambda: lu.write(offset, data))
        self._counted(fh, True, started, len(data))
        return len(data)

    @errors
    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        self._writable()
        name = self._lu_name(path)
        if self.serving is not None:
            self.serving.check_change(name)
        try:
            if length % 512:
                raise FuseOSError(errno.EINVAL)  # LUs are whole sectors
            self.pool.resize(name, length, force=True, allow_empty=True)
        except BaseException:
            self._failed(name)
            raise
        if length:
            self.fresh.pop(name, None)

    def _failed(self, name: str) -> None:
        if name in self.fresh:
            self.fresh[name] = True

    @errors
    def fallocate(self, path: str | None, mode: int, offset: int, length: int, fh: int) -> int:
        """Discard (PUNCH_HOLE with KEEP_SIZE: what fstrim and blkdiscard on a loop device over
        the file send) and ZERO_RANGE map to the LU's discard: whole extents unmapped, partial
        ones zeroed, shared ones never touched. Plain preallocation within the LU does nothing
        (a thin LU takes space on write); an LU does not grow by fallocate (EOPNOTSUPP)."""
        lu = self._handle(fh)
        if mode & ~(KEEP_SIZE | PUNCH_HOLE | ZERO_RANGE) or (mode & PUNCH_HOLE and mode & ZERO_RANGE):
            raise FuseOSError(errno.EOPNOTSUPP)
        if offset < 0 or length <= 0:
            raise FuseOSError(errno.EINVAL)
        end = offset + length
        if end > lu.size:
            if not mode & KEEP_SIZE:
                raise FuseOSError(errno.EOPNOTSUPP)  # its size changes by truncate, never by this
            end = lu.size
        if mode & (PUNCH_HOLE | ZERO_RANGE) and end > offset:
            lu.discard(offset, end - offset)
        return 0

    @errors
    def fsync(self, path: str, datasync: int, fh: int) -> None:
        lu = self._handle(fh)
        self._writing(lu, lu.flush)

    def flush(self, path: str, fh: int) -> None:
        return None  # close(2) does not promise durability; fsync does, and release flushes

    @errors
    def release(self, path: str, fh: int) -> None:
        if self.direct is not None:
            self.direct.detach(fh)
        with self._lock:
            lu = self.handles.pop(fh)
            last = all(h is not lu for h in self.handles.values())
        lu.close()
        if last and self.fresh.get(lu.name) and not self._info(lu.name)["size"]:
            del self.fresh[lu.name]
            self.pool.remove(lu.name)  # created here, never sized or filled: a failed create

    @errors
    def unlink(self, path: str) -> None:
        self._writable()
        name = self._lu_name(path)
        if self.serving is not None:
            self.serving.check_change(name)
        self.pool.remove(name)
        self.fresh.pop(name, None)

    @errors
    def rename(self, old: str, new: str) -> None:
        self._writable()
        src, dst = self._lu_name(old), self._lu_name(new, creating=True)
        if self.serving is not None:
            raise FuseOSError(errno.EXDEV)  # ownership is by name: a node's mount renames nothing
        self.pool.rename(src, dst)
        if src in self.fresh:
            self.fresh[dst] = self.fresh.pop(src)

    def utimens(self, path: str, times: Any = None) -> None:
        return None  # LU files carry no times of their own

    def chmod(self, path: str, mode: int) -> None:
        raise FuseOSError(errno.EPERM)

    def chown(self, path: str, uid: int, gid: int) -> None:
        raise FuseOSError(errno.EPERM)

    @errors
    def lseek(self, path: str, offset: int, whence: int, fh: int) -> int:
        """SEEK_DATA / SEEK_HOLE by the LU's extent map (libfuse 3 only)."""
        lu = self.handles[fh]
        if whence not in (os.SEEK_DATA, os.SEEK_HOLE):
            raise FuseOSError(errno.EINVAL)
        if offset >= lu.size or offset < 0:
            raise FuseOSError(errno.ENXIO)
        E = lu.extent_size
        mapped = lu.mapped_extents()
        first = offset // E
        if whence == os.SEEK_DATA:
            later = mapped[mapped >= first]
            if not len(later):
                raise FuseOSError(errno.ENXIO)
            return max(offset, int(later[0]) * E)
        # the first hole at or after `first`: where the run of mapped extents from it breaks
        # (no array of the LU's size: a thin LU may be a petabyte)
        run = mapped[mapped >= first]
        breaks = np.flatnonzero(run != first + np.arange(len(run)))
        hole = first + (int(breaks[0]) if len(breaks) else len(run))
        return min(lu.size, max(offset, hole * E))
