"""The pool's directory and the directories the engine keeps in it (locks, control, mounts,
payloads, ffdc...), made and opened so that nobody else's link is followed.

Root and another user's pool: whoever owns a pool's directory can put anything in it, a
symbolic link named ``control`` pointing at ``/etc`` included. A process running as root works
on a pool whose directory root does not own only when asked to, by naming the pool (or ``*``)
in ``BLOCKSTORE_SAFE_POOLS`` (colon-separated), as git asks for ``safe.directory``.

In every case each directory of the engine's is made and opened one step at a time from the
pool's directory, without following a link, and must be a directory owned by the pool's owner;
its mode is set through the opened descriptor, never by path. Files are opened the same way
(``open_file``: from the pool's directory by descriptor, the file itself with ``O_NOFOLLOW``,
refused unless a regular file of the pool's owner), the control socket is named through its
directory's descriptor, and the two files LMDB opens by name are checked first and opened with
the owner's file permissions (``as_owner``), so a link swapped in between reaches nothing the
owner could not.
"""
from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Iterator
import contextlib
from contextlib import contextmanager

from .errors import Unsafe

SAFE_ENV = "BLOCKSTORE_SAFE_POOLS"
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def check_owner(pool_path: str) -> None:
    """Refuse, as root, a pool whose directory root does not own, unless ``SAFE_ENV`` trusts it."""
    if os.geteuid() != 0:
        return
    try:
        st = os.stat(pool_path)
    except OSError:
        return  # nothing there yet: whoever makes it owns it
    if st.st_uid == 0:
        return
    trusted = [p for p in os.environ.get(SAFE_ENV, "").split(":") if p]
    if "*" in trusted or os.path.realpath(pool_path) in {os.path.realpath(p) for p in trusted}:
        return
    raise Unsafe(f"the pool at {pool_path} belongs to user {st.st_uid}, not root: refusing to work on it as root "
                 f"(its owner could point its directories anywhere); run as that user, or trust it with "
                 f"{SAFE_ENV}={os.path.realpath(pool_path)}")


def _walk(root: str, names: tuple[str, ...], *, make: bool, mode: int = 0o700) -> tuple[int, int, int]:
    """A descriptor of ``root/names...`` (the caller closes it), and the uid and gid of ``root``.
    ``root`` is opened as given (the path its user named); each step below it is opened without
    following a link and must be a directory owned by that uid; ``make``: made (``mode``) when missing."""
    fd = os.open(root, _DIR & ~os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        owner, group = st.st_uid, st.st_gid
        where = root
        for name in names:
            where = os.path.join(where, name)
            made = False
            if make:
                try:
                    os.mkdir(name, mode, dir_fd=fd)
                    made = True
                except FileExistsError:
                    pass
            try:
                nxt = os.open(name, _DIR, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise Unsafe(f"{where} is not a directory (a link, or a file): refusing to use it") from None
                raise
            os.close(fd)
            fd = nxt
            st = os.fstat(fd)
            if made and st.st_uid != owner:  # root, in a pool it was trusted with: the owner's
                os.fchown(fd, owner, group)
                st = os.fstat(fd)
            if st.st_uid != owner:
                raise Unsafe(f"{where} belongs to user {st.st_uid}, not to the pool's owner ({owner}): refusing to use it")
        return fd, owner, group
    except BaseException:
        os.close(fd)
        raise


def _split(root: str, path: str) -> tuple[str, tuple[str, ...], str]:
    """``path`` as (the directory walked from, the directories below it, the file's name): from
    ``root`` when ``path`` lies inside it, else from ``path``'s own directory (a failure group a
    user placed elsewhere, whose directory is theirs to name)."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    if rel.startswith(".."):
        root, rel = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    *dirs, name = rel.split(os.sep)
    return root, tuple(dirs), name


def subdir(pool_path: str, *names: str, mode: int = 0o700) -> str:
    """``pool_path/names...``, each step made if missing (``mode``) and opened without following
    a link; each must be a directory owned by the pool's owner, and the last gets ``mode``.
    Returns its path. Unsafe (one line naming it) otherwise."""
    os.close(dir_fd(pool_path, *names, mode=mode))
    return os.path.join(pool_path, *names)


def dir_fd(pool_path: str, *names: str, mode: int = 0o700) -> int:
    """A descriptor of ``pool_path/names...``, made and checked as ``subdir`` says (the caller
    closes it): a holder of it works in that directory whatever its name points to later."""
    check_owner(pool_path)
    fd, _, _ = _walk(pool_path, names, make=True, mode=mode)
    try:
        if names and os.fstat(fd).st_mode & 0o777 != mode:
            os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def opened_dir(root: str, path: str) -> Iterator[int]:
    """A descriptor of the directory ``path`` (inside ``root``), reached as ``subdir`` reaches it
    but never made; for the calls that take a ``dir_fd`` (unlink, listing, a socket's name)."""
    base, dirs, name = _split(root, os.path.join(path, "x"))
    fd, _, _ = _walk(base, dirs, make=False)
    try:
        yield fd
    finally:
        os.close(fd)


def open_file(root: str, path: str, flags: int, mode: int = 0o600) -> int:
    """``os.open(path, flags, mode)`` for a file inside the pool at ``root``, reached from
    ``root`` one directory at a time without following a link, the file itself opened with
    ``O_NOFOLLOW``; it must be a regular file owned by the pool's owner (Unsafe otherwise, the
    descriptor closed). Other failures are the OSError of the open.

    A file root makes in a pool it was trusted with is given to the pool's owner, so the owner
    can go on using the pool; so is a file of root's that only its one name links to (made by
    root there before files were given away). Root never opens a hard link to another of its
    files that the owner put there (more than one name): refused, and checked before ``O_TRUNC``
    applies."""
    base, dirs, name = _split(root, path)
    dfd, owner, group = _walk(base, dirs, make=False)
    truncate = flags & os.O_TRUNC
    flags = (flags & ~os.O_TRUNC) | os.O_NOFOLLOW | os.O_CLOEXEC
    made = False
    try:
        try:
            if flags & os.O_CREAT and not flags & os.O_EXCL:
                try:  # made here, or opened as it is
                    fd = os.open(name, flags | os.O_EXCL, mode, dir_fd=dfd)
                    made = True
                except FileExistsError:
                    fd = os.open(name, flags & ~os.O_CREAT, mode, dir_fd=dfd)
            else:
                fd = os.open(name, flags, mode, dir_fd=dfd)
                made = bool(flags & os.O_CREAT)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise Unsafe(f"{path} is a symbolic link: refusing to follow it") from None
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise Unsafe(f"{path} is not a regular file: refusing to use it")
            if st.st_uid != owner and os.geteuid() == 0 and (made or (st.st_uid == 0 and st.st_nlink == 1)):
                os.fchown(fd, owner, group)  # root's, in a pool it was trusted with: the owner's
            elif st.st_uid != owner:
                raise Unsafe(f"{path} is owned by user {st.st_uid}, not {owner}: refusing to use it"
                             + (" (as root: chown -R it to the pool's owner)" if st.st_uid == 0 else ""))
            if truncate:
                os.ftruncate(fd, 0)
        except BaseException:
            os.close(fd)
            if made:
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=dfd)
            raise
    finally:
        os.close(dfd)
    return fd


def remove_file(root: str, path: str) -> None:
    """Unlink the file ``path`` inside ``root``, from its directory reached as ``open_file``
    reaches it (FileNotFoundError when it is gone)."""
    base, dirs, name = _split(root, path)
    dfd, _, _ = _walk(base, dirs, make=False)
    try:
        os.unlink(name, dir_fd=dfd)
    finally:
        os.close(dfd)


def read_file(root: str, path: str, limit: int | None = None) -> bytes:
    """The file ``path`` inside ``root`` (its first ``limit`` bytes), opened as ``open_file`` opens."""
    fd = open_file(root, path, os.O_RDONLY)
    try:
        if limit is not None:
            return os.read(fd, limit)
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def check_files(root: str, path: str, names: tuple[str, ...]) -> None:
    """Refuse (Unsafe) when one of ``names`` in the directory ``path`` is there but is not a
    regular file of the pool's owner: checked before a library opens them by name (LMDB)."""
    for name in names:
        try:
            os.close(open_file(root, os.path.join(path, name), os.O_PATH))
        except FileNotFoundError:
            pass


_libc = ctypes.CDLL(None, use_errno=True)


@contextmanager
def for_library(root: str, path: str, names: tuple[str, ...]) -> Iterator[str]:
    """A path for a library that opens the files ``names`` of directory ``path`` (in the pool at
    ``root``) by name (LMDB): the directory reached as ``opened_dir`` reaches it and named by its
    descriptor, the files checked first (``check_files``), the block run ``as_owner``."""
    check_files(root, path, names)
    with opened_dir(root, path) as dfd, as_owner(root):
        yield f"/proc/self/fd/{dfd}"


@contextmanager
def as_owner(root: str) -> Iterator[None]:
    """Run the block's opens by path with the file permissions of ``root``'s owner (setfsuid, in
    this thread only), when this process is root and the owner is not. For the opens a library
    makes by name (LMDB's two files): a link planted among them reaches only what its planter
    could reach anyway, but for one thing: the process keeps root's supplementary groups (glibc
    offers no per-thread setgroups), so a file that only group root may write is still within
    reach; the check before the open (``check_files``) is what refuses a link there."""
    if os.geteuid() != 0:
        yield
        return
    st = os.stat(root)
    if st.st_uid == 0:
        yield
        return
    old_gid = _libc.setfsgid(st.st_gid)
    old_uid = _libc.setfsuid(st.st_uid)
    try:
        yield
    finally:
        _libc.setfsuid(old_uid)
        _libc.setfsgid(old_gid)
