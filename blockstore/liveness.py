"""Who is alive and who holds what in a pool: the one place the engine asks.

Two questions, each with a claim to take and a look to take:
- **an LU's writer**: one process at a time writes an LU (``hold_lu``: Busy naming the holder;
  ``lu_holder`` / ``lu_held`` to look without taking it);
- **a session**: each process that opens a pool for writing holds its session for as long as it
  has the pool open; what a dead session left (reserved extents, an activity log) is reclaimed
  by whoever finds it dead (``session_alive``).

``Flocks`` answers on one machine, with flock(2) on files under ``POOL/locks`` (locks.py): the
kernel drops a dead process's locks, so a SIGKILLed holder never leaves a claim behind. Processes
on several machines that share a pool's storage cannot see each other's flocks: there the answer
has to come from leases in the coordination store (a claim is a key under the holder's lease,
alive while the lease is renewed), which is what a second implementation of this interface will
do over the etcd store; until then a pool's writers must share one kernel, and a cluster relies
on its fences (fence.py) where that is not so.
"""
from __future__ import annotations

import os
from typing import Protocol

from .errors import BlockstoreError
from .locks import HolderLock, holder, is_held
from .pooldir import remove_file
from .records import Holder


class Claim(Protocol):
    """A claim taken; released once."""

    def release(self) -> None: ...


class Liveness(Protocol):
    def hold_lu(self, lu_id: int, what: str) -> Claim: ...

    def lu_holder(self, lu_id: int) -> Holder | None: ...

    def lu_held(self, lu_id: int) -> bool: ...

    def hold_session(self, session: str) -> Claim: ...

    def end(self, claim: Claim) -> None: ...

    def session_alive(self, session: str) -> bool: ...

    def forget_session(self, session: str) -> None: ...


class Flocks:
    """Liveness on one machine: flock(2) on ``locks/lu-ID`` (by id, so a rename keeps it) and
    ``locks/session-ID`` in the pool at ``root``."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.dir = os.path.join(root, "locks")

    def _lu(self, lu_id: int) -> str:
        return os.path.join(self.dir, f"lu-{lu_id}")

    def _session(self, session: str) -> str:
        return os.path.join(self.dir, f"session-{session}")

    def hold_lu(self, lu_id: int, what: str) -> HolderLock:
        """Take LU ``lu_id``'s writer claim; Busy (naming the holder, as ``what``) if taken."""
        return HolderLock(self._lu(lu_id), self.root).acquire(what)

    def lu_holder(self, lu_id: int) -> Holder | None:
        return holder(self._lu(lu_id), self.root)

    def lu_held(self, lu_id: int) -> bool:
        return is_held(self._lu(lu_id), self.root)

    def hold_session(self, session: str) -> HolderLock:
        return HolderLock(self._session(session), self.root).acquire("session")

    def end(self, claim: Claim) -> None:
        """Release a claim whose subject is gone for good (a session closed, an LU removed)
        and remove what it was: nothing is left behind."""
        if isinstance(claim, HolderLock):
            self._remove(claim.path)  # while still held: nobody takes a file about to go
        claim.release()

    def session_alive(self, session: str) -> bool:
        return is_held(self._session(session), self.root)

    def forget_session(self, session: str) -> None:
        """Remove what a dead session left (once what it had reserved was reclaimed)."""
        self._remove(self._session(session))

    def _remove(self, path: str) -> None:
        try:
            remove_file(self.root, path)
        except (OSError, BlockstoreError):
            pass  # a leftover file holds no claim: the next look finds it dead
