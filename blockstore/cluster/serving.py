"""The node's side of ownership: what a node's serving process (its mount) may do with each LU.

A node writes the LUs it owns (ownership.py), each under the epoch it was given, and only while
its lease in the coordination store is live with a margin: the serving process reads the lease's
time to live, and stops writing ``margin`` seconds (one keep-alive interval) before it would
expire. The primary moves a node's LUs only after the node is down, which takes at least the
same timeout, so a node that cannot renew stops writing before its LUs can be given to another
(the data path's fence, fence.py). It reads every other LU read-only, through the LU's redundant
copy (read redirection), never through the owner's writer lock.

The ``Gate`` watches the store (a poll every ``poll`` seconds; etcd's watch later) and tells its
user two things: the LUs the node lost (to flush and let go of, the old owner's half of a
graceful move) and how long writes may go on without asking again (the deadline written into
the C direct path's fence word, so even a serving process whose Python threads are starved stops
writing in C at that instant).
"""
from __future__ import annotations

import errno
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from .. import fence
from ..errors import BlockstoreError, Busy, Fenced, InDoubt, ReadOnly
from ..names import check_name
from . import ownership
from .config import load_config, open_store
from .ownership import Ownership

if TYPE_CHECKING:
    from ..lu import LU
    from ..pool import Pool

log = logging.getLogger("blockstore.cluster.serving")
T = TypeVar("T")


class Gate:
    """Ownership as node ``node`` of the pool at ``pool_path`` sees it. ``hold``: a write the
    node may not make now waits (up to the cluster's timeout) for the lease to be renewed,
    instead of failing at once, unless the LU says otherwise (``set_hold``); a write to an LU
    the node no longer owns always fails."""

    def __init__(self, pool_path: str, node: str, *, hold: bool = False, poll: float | None = None) -> None:
        self.node = check_name(node, "node name")
        self.store = open_store(pool_path)
        try:
            self.cfg = load_config(self.store, pool_path)
        except BaseException:
            self.store.close()
            raise
        self.hold = hold
        self._holds: dict[str, bool] = {}   # LU -> its own choice (set_hold), over ``hold``
        self.margin = self.cfg.interval
        self.poll = poll if poll is not None else min(0.1, self.cfg.interval / 4)
        self._cond = threading.Condition()
        self._owners: dict[str, Ownership] = {}
        self._until_ns = 0          # writes may go on before this (time.monotonic_ns)
        self._leaving: dict[str, int] = {}  # LU -> the epoch the node is letting go of (a graceful move)
        self._stopping = threading.Event()
        self.on_lost: Callable[[list[str]], None] = lambda lus: None
        self.on_gained: Callable[[list[str]], None] = lambda lus: None
        self.on_deadline: Callable[[int], None] = lambda until_ns: None
        self._thread: threading.Thread | None = None
        self.refresh()

    def start(self) -> "Gate":
        self._thread = threading.Thread(target=self._watch, name="gate", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        self.store.close()

    def _watch(self) -> None:
        while not self._stopping.wait(self.poll):
            try:
                self.refresh()
            except Exception as e:  # noqa: BLE001  (a failed poll ends no serving: the deadline runs out)
                log.error("cannot read ownership: %s", e)

    def refresh(self) -> None:
        """Read the ownership records and this node's lease once; tell the user what changed.
        The deadline counts from before the reads: a process stopped after them (SIGSTOP, a
        stall) and continued later must not date the lease it read from when it woke up; its
        deadline has then passed and its stale view allows no write."""
        asked = time.monotonic_ns()
        owners = ownership.every(self.store)
        alive = self.store.get(f"alive/{self.node}")
        ttl = self.store.time_to_live(alive.lease) if alive is not None and alive.lease else None
        until = asked + int((ttl - self.margin) * 1e9) if ttl is not None and ttl > self.margin else 0
        with self._cond:
            before = self.mine()
            self._owners, self._until_ns = owners, until
            now = self.mine()
            self._leaving = {lu: e for lu, e in self._leaving.items() if now.get(lu) == e}
            self._cond.notify_all()
        lost = sorted(lu for lu, epoch in before.items() if now.get(lu) != epoch)
        if lost:
            self.on_lost(lost)  # first: its handles' writes are fenced there before anything else
            log.warning("node %s no longer owns %s", self.node, ", ".join(lost))
        gained = sorted(lu for lu, epoch in now.items() if before.get(lu) != epoch)
        if gained:
            self.on_gained(gained)
        self.on_deadline(until)

    def mine(self) -> dict[str, int]:
        """The LUs this node owns, with their epochs."""
        return {lu: o.epoch for lu, o in self._owners.items() if o.node == self.node}

    def epoch(self, lu: str) -> int | None:
        """The epoch under which this node owns ``lu``; None when it does not own it."""
        o = self._owners.get(lu)
        return o.epoch if o is not None and o.node == self.node else None

    def owner(self, lu: str) -> str | None:
        o = self._owners.get(lu)
        return None if o is None else o.node

    @property
    def until_ns(self) -> int:
        return self._until_ns

    def leave(self, lu: str) -> None:
        """Stop writing ``lu`` (the old owner's half of a graceful move): from now on writes to
        it are refused and opens are redirected, until its ownership moves on."""
        with self._cond:
            e = self.epoch(lu)
            if e is not None:
                self._leaving[lu] = e

    def writable(self, lu: str) -> int | None:
        """The epoch under which this node may write ``lu`` now; None when it does not own it
        or is letting go of it."""
        e = self.epoch(lu)
        return None if e is None or self._leaving.get(lu) == e else e

    def holds(self, lu: str) -> bool:
        """Whether a write to ``lu`` the node may not make now is held rather than failed."""
        return self._holds.get(lu, self.hold)

    def set_hold(self, lu: str, hold: bool | None) -> None:
        """``lu``'s own choice between holding and failing a write the node may not make now
        (its record's ``on_fence``); None: the gate's ``hold``."""
        if hold is None:
            self._holds.pop(lu, None)
        else:
            self._holds[lu] = hold

    def check_write(self, lu: str, epoch: int | None) -> None:
        """Refuse (Fenced) a write to ``lu`` by a handle opened under ``epoch`` when this node
        no longer owns it under that epoch (or is letting go of it), or cannot show a lease live
        beyond the margin. Never waits: it is asked where the write lands, under the pool's lock
        (``wait_writable`` is where a write is held)."""
        self._check(lu, epoch, self.writable, hold=False)

    def check_commit(self, lu: str, epoch: int) -> None:
        """Refuse (Fenced) to commit what was written to ``lu`` under ``epoch`` on the same
        terms, except that an LU being let go of still commits (that is how it is let go of)."""
        self._check(lu, epoch, self.epoch, hold=False)

    def wait_writable(self, lu: str, epoch: int | None) -> None:
        """Before a write or an fsync of ``lu``, holding no lock: an LU that holds writes (its own
        choice, else the gate's ``hold``) waits here, up to the cluster's timeout, for the lease
        to be renewed; then, or at once, Fenced as ``check_write`` says."""
        self._check(lu, epoch, self.writable, hold=self.holds(lu))

    def _check(self, lu: str, epoch: int | None, owned: Callable[[str], int | None], *, hold: bool) -> None:
        if not fence.enabled("data"):
            return
        give_up = time.monotonic() + (self.cfg.timeout if hold else 0.0)
        with self._cond:
            while True:
                if epoch is None or owned(lu) != epoch:
                    raise Fenced(f"node {self.node} no longer owns LU {lu!r} (owner now: "
                                 f"{self.owner(lu) or 'none'}); the write was refused")
                if time.monotonic_ns() < self._until_ns:
                    return
                if time.monotonic() >= give_up:
                    raise InDoubt(f"node {self.node} could not renew its lease within {self.margin:g}s of its "
                                  f"expiry; writes to LU {lu!r} are refused until it does")
                self._cond.wait(self.poll)


class Elsewhere(BlockstoreError):
    """An unmirrored LU another node owns: it has no copy but the owner's to read here."""

    errno = errno.EREMOTE


class Unplaced(BlockstoreError):
    """A new LU no primary could give to this node (none is live): made, then removed again."""

    errno = errno.EAGAIN


class NodeServing:
    """The LU handles of a node's serving process (its mount), opened by ownership: a writer
    under the node's epoch for an LU it owns, a reader of the redundant copy for the others. It
    lets go of what the node lost and keeps the open writers' fence words moving. ``writers()``:
    the handles the serving process has open. The FUSE adapter asks it (fuse/ops.py) and turns
    its errors into errnos (EROFS, EREMOTE, ESTALE, EAGAIN).

    The owner's duties are here too, never side effects of opening the pool (which the serving
    process opens with ``recover=False``): before the node first writes an LU under an epoch, it
    recovers what dead sessions left (Pool.recover: activity logs settled, reservations
    reclaimed), and, in the background, an LU it took whose redundant copy lacks extents while
    that copy is in service is resynced. A failover hands both over with the LU: the failed
    owner may have died in the middle of either, and the new one does them again."""

    def __init__(self, pool: "Pool", gate: Gate, writers: Callable[[], "list[LU]"]) -> None:
        self.pool, self.gate, self.writers = pool, gate, writers
        self._recovered: set[tuple[str, int]] = set()   # (LU, epoch) recovered for
        self._duties: queue.SimpleQueue[list[str]] = queue.SimpleQueue()
        gate.on_lost = self._lost
        gate.on_gained = self._duties.put
        gate.on_deadline = self._deadline
        pool.set_gates(writes=gate.check_write, commits=gate.check_commit)
        self._duties.put(sorted(gate.mine()))  # a serving process (re)started takes over what its node owns
        threading.Thread(target=self._do_duties, name="owner-duties", daemon=True).start()

    def open(self, name: str, wants_write: bool) -> "LU":
        """``name`` opened as this node may: its writer (waiting, up to twice the cluster's
        timeout, for the previous owner to let go) or a reader of the redundant copy."""
        epoch = self.gate.writable(name)
        if epoch is None:
            self.gate.refresh()  # the LU may have come to this node since the last poll
            epoch = self.gate.writable(name)
        if epoch is None:
            owner = self.gate.owner(name) or "no node"
            self.pool.lu_info(name)  # NotFound first
            if wants_write:
                raise ReadOnly(f"LU {name!r} is owned by {owner}: this node reads it only")
            try:
                return self.pool.open_redundant(name)
            except BlockstoreError as e:
                raise Elsewhere(f"LU {name!r} ({e}) is read on its owner, {owner}") from None
        policy = self.pool.lu_info(name).get("on_fence")
        self.gate.set_hold(name, None if policy is None else policy == "hold")
        self._recover(name, epoch)  # the owner serves nothing a dead session left unsettled
        give_up = time.monotonic() + 2 * self.gate.cfg.timeout
        while True:
            try:
                lu = self.pool.open_lu(name, writable=True, epoch=epoch)
                break
            except Busy:
                if time.monotonic() >= give_up:
                    raise
                time.sleep(0.02)  # the previous owner flushes and lets go (a graceful move)
        if fence.enabled("data"):
            lu.fence_writes(self.gate.until_ns)
        return lu

    def create(self, name: str) -> "LU":
        """A new LU made on this node is its own: made, assigned to the node by the primary,
        opened under that epoch. Without a primary to assign it, it is removed again."""
        from . import admin
        self.pool.create_lu(name, 0, allow_empty=True).close()
        try:
            admin.assign(self.pool.path, name, self.gate.node, wait=self.gate.cfg.timeout)
        except BlockstoreError as e:
            self.pool.remove(name)
            raise Unplaced(f"new LU {name!r} could not be given to node {self.gate.node} ({e}); removed") from None
        self.gate.refresh()
        return self.open(name, True)

    def writing(self, lu: "LU", op: Callable[[], T]) -> T:
        """``op()``, a write or fsync of ``lu``, called holding no lock. It is asked first
        (Gate.wait_writable): a write the node may not make is refused before it touches the LU
        (no extent is taken for it), or, for an LU that holds writes while the lease is in doubt
        (its own choice, else the mount's), waits; and waits once more if the lease lapsed
        between that wait and the write (the refusal, InDoubt, stored and changed nothing: doing
        it again is doing it once)."""
        if lu.epoch is None:
            return op()
        self.gate.wait_writable(lu.name, lu.epoch)
        try:
            return op()
        except InDoubt:
            if not self.gate.holds(lu.name):
                raise
            self.gate.wait_writable(lu.name, lu.epoch)
        return op()

    def check_change(self, name: str) -> None:
        """A change of ``name`` itself (its size, its removal) is its owner's alone."""
        if self.gate.writable(name) is None:
            raise ReadOnly(f"LU {name!r} is owned by {self.gate.owner(name) or 'no node'}: this node changes it not")

    def let_go(self, name: str) -> None:
        """The old owner's half of a graceful move (asked by the primary through the node): stop
        writing ``name``, flush what was written, release it. Its files' next I/O is ESTALE;
        reopened, they read redirected."""
        self.gate.leave(name)
        self._fence_now([name])
        self.pool.let_go(name)

    def _lost(self, names: list[str]) -> None:
        """The node no longer owns ``names`` and was not asked to let go (it was failed over):
        what was written to them and not committed is not committed now (the commit gate refuses
        it), and a serving process left holding such writes restarts (SIGTERM: an unmount; the
        node starts it again), so that nothing of them is ever stored and its session's space is
        reclaimed."""
        self._fence_now(names)
        for name in names:
            try:
                self.pool.let_go(name)
            except Fenced as e:
                log.error("deposed with unflushed writes to LU %s (%s): restarting", name, e)
                os.kill(os.getpid(), signal.SIGTERM)
            except BlockstoreError as e:
                log.error("letting go of LU %s: %s", name, e)

    def _fence_now(self, names: list[str]) -> None:
        """Close the C direct path of ``names``' handles before letting go of them: it checks no
        ownership, only its fence word, and until ``let_go`` has flushed the pool and retired the
        handle (an fsync or more away) it would go on writing in place, into extents the new
        owner writes too."""
        if fence.enabled("data"):
            for lu in self.writers():
                if lu.name in names and lu.epoch is not None:
                    lu.fence_writes(0)

    def _do_duties(self) -> None:
        while True:
            for name in self._duties.get():
                try:
                    self.take_over(name)
                except BlockstoreError as e:
                    log.error("taking over LU %s: %s", name, e)

    def take_over(self, name: str) -> int:
        """The owner's duties for ``name``, which this node now owns: recovery (as ``open``
        does it), then a resync of what the LU's redundant copy lacks, if the copy is in service
        (a failed one waits for ``pool resync``, which the owner is asked to do). Returns the
        extents copied."""
        epoch = self.gate.writable(name)
        if epoch is None:
            return 0  # moved on meanwhile
        self._recover(name, epoch)
        info = self.pool.lu_info(name)
        if not info.get("mirrored") or not sum(self.pool.dirty_extents(name).values()):
            return 0
        if any(g["state"] == "failed" for g in self.pool.failure_groups()):
            log.warning("LU %s lacks extents in a copy out of service: it is resynced when the copy is back", name)
            return 0
        lu = self.open(name, True)  # the writer, under the epoch: the resync is fenced as its writes are
        try:
            copied = self.pool.resync(name)
        finally:
            self.pool.close_lu(lu)
        log.warning("LU %s taken over: %d extent(s) resynced to its redundant copy", name, copied)
        return copied

    def _recover(self, name: str, epoch: int) -> None:
        """Pool.recover once before ``name`` is first written under ``epoch``. One recovery
        covers every LU the node owns as it starts (it recovers every dead session), so the
        LUs of one failover share it."""
        if (name, epoch) in self._recovered:
            return
        owned = set(self.gate.mine().items())
        got = self.pool.recover()
        self._recovered |= owned | {(name, epoch)}
        if any(got.values()):
            log.warning("took over LU %s: %d extent(s) settled, %d reclaimed", name, got["settled"], got["reclaimed"])

    def _deadline(self, until_ns: int) -> None:
        if not fence.enabled("data"):
            return
        for lu in {id(h): h for h in self.writers() if h.epoch is not None and not h.closed}.values():
            # a handle of an LU lost meanwhile keeps the fence ``_lost`` gave it
            lu.fence_writes(until_ns if self.gate.writable(lu.name) == lu.epoch else 0)
