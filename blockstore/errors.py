"""The engine's exceptions. Each carries an errno so front ends (CLI exit codes, FUSE replies)
translate them without knowing the cause."""
from __future__ import annotations

import errno as _errno


class BlockstoreError(Exception):
    """A request the engine refused or could not carry out. The message is one line for a user."""

    errno: int = _errno.EIO


class InvalidArgument(BlockstoreError):
    errno = _errno.EINVAL


class OutOfRange(InvalidArgument):
    """I/O that reaches past the end of an LU."""


class NotFound(BlockstoreError):
    errno = _errno.ENOENT


class NotAPool(NotFound):
    """The directory is missing or holds no pool."""


class AlreadyExists(BlockstoreError):
    errno = _errno.EEXIST


class ReadOnly(BlockstoreError):
    errno = _errno.EROFS


class Busy(BlockstoreError):
    """The object is in use: held open for writing elsewhere, or depended on by clones.
    ``holder``: the pid of the process that holds the LU open for writing, when that is why."""

    errno = _errno.EBUSY

    def __init__(self, message: str, holder: int | None = None) -> None:
        super().__init__(message)
        self.holder = holder


class Fenced(BlockstoreError):
    """This process may no longer write the LU: a newer owner holds it (its ownership epoch is
    past the one this process writes under, fence.py). Nothing of the refused change landed.
    ``final``: for good (a later commit is refused too); False for ``InDoubt``."""

    errno = _errno.ESTALE
    final = True


class InDoubt(Fenced):
    """This process may not write the LU now: its node cannot show a lease renewed beyond the
    margin (cluster/serving.py). Nothing landed; once the lease is renewed, writes go on."""

    final = False


class Unsafe(BlockstoreError):
    """Something in the pool's directory is not what the engine made (a link, another user's
    file): refused rather than followed (pooldir.py)."""

    errno = _errno.EPERM


class PoolFull(BlockstoreError):
    errno = _errno.ENOSPC


class PoolCorrupt(BlockstoreError):
    """The pool's metadata cannot be read or breaks an invariant."""

    errno = _errno.EUCLEAN
