"""A FUSE passthrough whose fsync fails with EIO while a control file exists, and whose writes
fail with EIO while that name with ".write" added exists: a fault injector for the tests (the
engine runs unchanged on top of it). ``python faultfs.py BACKING MOUNT CTL [volatile]`` serves
BACKING at MOUNT in the foreground until unmounted.

``volatile``: a disk with a write cache and no battery. Writes are held in this process's memory
(reads see them) and reach BACKING only when their file is fsynced; killing the process (SIGKILL)
is a power cut: every write not fsynced since is gone, as from a disk that lost power."""
from __future__ import annotations

import errno
import os
import sys

from blockstore_fuse.binding import FUSE, FuseOSError, Operations


class Passthrough(Operations):
    def __init__(self, root: str, ctl: str, volatile: bool = False) -> None:
        self.root, self.ctl = root, ctl
        #: path -> the writes not yet fsynced, oldest first (volatile only)
        self.cache: dict[str, list[tuple[int, bytes]]] | None = {} if volatile else None

    def _p(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def _call(self, fn, *args):  # type: ignore[no-untyped-def]
        try:
            return fn(*args)
        except OSError as e:
            raise FuseOSError(e.errno or errno.EIO) from None

    def getattr(self, path, fh=None):  # type: ignore[no-untyped-def]
        st = self._call(os.lstat, self._p(path))
        return {k: getattr(st, k) for k in ("st_mode", "st_nlink", "st_size", "st_uid", "st_gid",
                                            "st_atime", "st_mtime", "st_ctime", "st_ino", "st_blocks")}

    def readdir(self, path, fh):  # type: ignore[no-untyped-def]
        return [".", ".."] + self._call(os.listdir, self._p(path))

    def create(self, path, mode, fi=None):  # type: ignore[no-untyped-def]
        return self._call(os.open, self._p(path), os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)

    def open(self, path, flags):  # type: ignore[no-untyped-def]
        return self._call(os.open, self._p(path), flags & ~(os.O_CREAT | os.O_EXCL))

    def read(self, path, size, offset, fh):  # type: ignore[no-untyped-def]
        data = self._call(os.pread, fh, size, offset)
        if not self.cache or not self.cache.get(path):
            return data
        buf = bytearray(data.ljust(size, b"\0"))
        end = len(data)
        for at, piece in self.cache[path]:  # in order: a later write wins
            lo, hi = max(at, offset), min(at + len(piece), offset + size)
            if lo < hi:
                buf[lo - offset:hi - offset] = piece[lo - at:hi - at]
                end = max(end, hi - offset)
        return bytes(buf[:end])

    def write(self, path, data, offset, fh):  # type: ignore[no-untyped-def]
        if os.path.exists(self.ctl + ".write"):
            raise FuseOSError(errno.EIO)
        if self.cache is not None:
            self.cache.setdefault(path, []).append((offset, bytes(data)))
            return len(data)
        return self._call(os.pwrite, fh, data, offset)

    def truncate(self, path, length, fh=None):  # type: ignore[no-untyped-def]
        self._call(os.truncate, self._p(path), length)

    def fsync(self, path, datasync, fh):  # type: ignore[no-untyped-def]
        if os.path.exists(self.ctl):
            raise FuseOSError(errno.EIO)
        for at, piece in (self.cache or {}).pop(path, []):
            self._call(os.pwrite, fh, piece, at)
        self._call(os.fsync, fh)
        return 0

    def flush(self, path, fh):  # type: ignore[no-untyped-def]
        return 0

    def release(self, path, fh):  # type: ignore[no-untyped-def]
        os.close(fh)
        return 0

    def unlink(self, path):  # type: ignore[no-untyped-def]
        self._call(os.unlink, self._p(path))

    def mkdir(self, path, mode):  # type: ignore[no-untyped-def]
        self._call(os.mkdir, self._p(path), mode)

    def rmdir(self, path):  # type: ignore[no-untyped-def]
        self._call(os.rmdir, self._p(path))

    def rename(self, old, new):  # type: ignore[no-untyped-def]
        self._call(os.rename, self._p(old), self._p(new))

    def chmod(self, path, mode):  # type: ignore[no-untyped-def]
        self._call(os.chmod, self._p(path), mode)

    def utimens(self, path, times=None):  # type: ignore[no-untyped-def]
        self._call(os.utime, self._p(path), times)

    def statfs(self, path):  # type: ignore[no-untyped-def]
        st = os.statvfs(self._p(path))
        return {k: getattr(st, k) for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                                            "f_files", "f_ffree", "f_favail", "f_flag", "f_namemax")}


if __name__ == "__main__":
    backing, mount, ctl = sys.argv[1:4]
    FUSE(Passthrough(backing, ctl, volatile=sys.argv[4:5] == ["volatile"]), mount, foreground=True,
         nothreads=True, use_ino=True)
