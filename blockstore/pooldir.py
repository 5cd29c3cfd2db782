"""The pool's directory and the directories the engine keeps in it (locks, control, mounts,
payloads, ffdc...), made and opened so that nobody else's link is followed.

Root and another user's pool: whoever owns a pool's directory can put anything in it, a
symbolic link named ``control`` pointing at ``/etc`` included. A process running as root works
on a pool whose directory root does not own only when asked to, by naming the pool (or ``*``)
in ``BLOCKSTORE_SAFE_POOLS`` (colon-separated), as git asks for ``safe.directory``.

In every case each directory of the engine's is made and opened one step at a time from the
pool's directory, without following a link, and must be a directory owned by the pool's owner;
its mode is set through the opened descriptor, never by path.
"""
from __future__ import annotations

import errno
import os

from .errors import BlockstoreError

SAFE_ENV = "BLOCKSTORE_SAFE_POOLS"
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Unsafe(BlockstoreError):
    errno = errno.EPERM


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


def subdir(pool_path: str, *names: str, mode: int = 0o700) -> str:
    """``pool_path/names...``, each step made if missing (``mode``) and opened without following
    a link; each must be a directory owned by the pool's owner, and the last gets ``mode``.
    Returns its path. Unsafe (one line naming it) otherwise."""
    check_owner(pool_path)
    fd = os.open(pool_path, _DIR & ~os.O_NOFOLLOW)  # the pool itself: the path its user gave
    try:
        owner = os.fstat(fd).st_uid
        where = pool_path
        for name in names:
            where = os.path.join(where, name)
            try:
                os.mkdir(name, mode, dir_fd=fd)
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
            if st.st_uid != owner:
                raise Unsafe(f"{where} belongs to user {st.st_uid}, not to the pool's owner ({owner}): refusing to use it")
        if names and os.fstat(fd).st_mode & 0o777 != mode:
            os.fchmod(fd, mode)
        return where
    finally:
        os.close(fd)
