"""The coordination store: the cluster's shared database behind a small interface.

The operations are the ones etcd offers, so an etcd backend can replace the embedded one without
anything above this module changing: reads with a per-key modification revision, compare-and-set
on that revision, leases that expire unless kept alive (keys put under a lease vanish with it), a
store-wide revision that only grows, and a change log to poll (a watch). Nothing above may use
LMDB directly.

``LmdbStore`` is the embedded default: an LMDB environment of its own under ``POOL/cluster`` (so
cluster traffic never waits on the data path's metadata writer), shared by every node process on
the machine. Lease deadlines use CLOCK_MONOTONIC, which all processes of one machine share; a
renewal writes the deadline into a mapped file beside the environment, never a commit
(deadlines.py says why).
"""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import lmdb

from ..errors import InvalidArgument, NotFound
from ..pooldir import for_library, subdir
from .deadlines import Deadlines

MAX_KEY = 256
MAX_VALUE = 1 << 20


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


_BOOT_ID = _boot_id()


def _this_boot(lease_rec: dict) -> bool:  # type: ignore[type-arg]
    """Whether a lease was granted since this machine's last boot (its deadline is on a
    monotonic clock that restarts with it: an older lease is dead whatever it says)."""
    return bool(lease_rec.get("boot") == _BOOT_ID)


@dataclass(frozen=True)
class Entry:
    value: bytes
    revision: int          # the store revision that last wrote this key
    lease: int | None


@dataclass(frozen=True)
class Change:
    revision: int
    key: str
    value: bytes | None    # None: deleted (or expired with its lease)


class CoordinationStore(Protocol):
    def revision(self) -> int: ...
    def get(self, key: str) -> Entry | None: ...
    def range(self, prefix: str) -> list[tuple[str, Entry]]: ...
    def put(self, key: str, value: bytes, *, lease: int | None = None) -> int: ...
    def compare_and_set(self, key: str, expected: int, value: bytes, *, lease: int | None = None) -> int | None: ...
    def delete(self, key: str, *, expected: int | None = None) -> bool: ...
    def commit(self, compares: dict[str, int], puts: dict[str, bytes | None]) -> int | None: ...
    def grant_lease(self, ttl: float) -> int: ...
    def keep_alive(self, lease: int) -> None: ...
    def time_to_live(self, lease: int) -> float | None: ...
    def revoke(self, lease: int) -> None: ...
    def changes(self, since: int, prefix: str = "") -> list[Change]: ...
    def where(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


def _check_key(key: str) -> bytes:
    raw = key.encode()
    if not key or len(raw) > MAX_KEY or "\0" in key:
        raise InvalidArgument(f"bad store key {key!r}")
    return raw


class LmdbStore:
    """The embedded coordination store. Every operation is one LMDB transaction: atomic, and
    serialised against every other process's writes."""

    LOG_KEEP = 100_000  # changes kept for watchers; older ones are pruned
    # LMDB allows one environment handle per file per process: opens of one path share it (and
    # its database handles), and the last close closes it.
    _open: dict[str, tuple[lmdb.Environment, tuple[Any, ...], Deadlines, int]] = {}
    _open_lock = threading.Lock()
    DBS = (b"kv", b"leases", b"log", b"meta")

    def __init__(self, path: str) -> None:
        subdir(*os.path.split(os.path.abspath(path)))
        self.path = os.path.realpath(path)
        with self._open_lock:
            if self.path in self._open:
                env, dbs, deadlines, users = self._open[self.path]
            else:
                users = 0
                # LMDB opens its files by name: refuse links there, open with the owner's rights
                with for_library(os.path.dirname(self.path), self.path, ("data.mdb", "lock.mdb")) as where:
                    env = lmdb.open(where, map_size=1 << 34, max_dbs=len(self.DBS), subdir=True, mode=0o600)
                # An explicit transaction: open_db's own one waits for the writer lock holding
                # the GIL, which deadlocks against a writer thread of this process.
                with env.begin(write=True) as txn:
                    dbs = tuple(env.open_db(name, txn=txn) for name in self.DBS)
                try:
                    deadlines = Deadlines(os.path.dirname(self.path), os.path.join(self.path, "leases.mem"))
                except BaseException:
                    env.close()
                    raise
            self._open[self.path] = (env, dbs, deadlines, users + 1)
        self.env = env
        self.deadlines = deadlines
        self.closed = False
        self.kv, self.leases, self.log, self.meta = dbs

    # -- helpers ---------------------------------------------------------------------------------

    @staticmethod
    def _decode(raw: bytes) -> Entry:
        rev = int.from_bytes(raw[:8], "big")
        lease = int.from_bytes(raw[8:16], "big") or None
        return Entry(raw[16:], rev, lease)

    def _rev(self, txn: lmdb.Transaction) -> int:
        raw = txn.get(b"revision", db=self.meta)
        return int(raw) if raw else 0

    def _bump(self, txn: lmdb.Transaction, key: bytes, value: bytes | None) -> int:
        rev = self._rev(txn) + 1
        txn.put(b"revision", str(rev).encode(), db=self.meta)
        txn.put(rev.to_bytes(8, "big"), json.dumps([key.decode(), None if value is None else value.hex()]).encode(),
                db=self.log)
        if rev > self.LOG_KEEP and rev % 1000 == 0:
            cur = txn.cursor(db=self.log)
            while cur.first() and int.from_bytes(cur.key(), "big") <= rev - self.LOG_KEEP:
                cur.delete()
        return rev

    def _left(self, lease: int, rec: dict) -> float | None:  # type: ignore[type-arg]
        """Seconds before a lease (its id, its record) expires; None when it is dead: past its
        deadline (the later of its grant's, in ``rec``, and its last renewal's), or granted
        before this machine's last boot."""
        return self.deadlines.left(lease, rec["deadline"]) if _this_boot(rec) else None

    def _live(self, txn: lmdb.Transaction, raw: bytes) -> Entry | None:
        """The entry, or None when its lease is dead (not yet removed: reads do not write)."""
        e = self._decode(raw)
        if e.lease is not None:
            rec = txn.get(e.lease.to_bytes(8, "big"), db=self.leases)
            if rec is None or self._left(e.lease, json.loads(bytes(rec))) is None:
                return None
        return e

    def _expire(self, txn: lmdb.Transaction) -> None:
        """Drop dead leases, and every key put under them (writes do this; reads only skip them)."""
        dead = [bytes(k) for k, v in txn.cursor(db=self.leases)
                if self._left(int.from_bytes(k, "big"), json.loads(bytes(v))) is None]
        for k in dead:
            lease = int.from_bytes(k, "big")
            keys = json.loads(bytes(txn.get(k, db=self.leases) or b"{}"))["keys"]
            txn.delete(k, db=self.leases)
            for key in keys:
                raw = txn.get(key.encode(), db=self.kv)
                if raw is not None and self._decode(bytes(raw)).lease == lease:
                    txn.delete(key.encode(), db=self.kv)
                    self._bump(txn, key.encode(), None)

    def _write(self, txn: lmdb.Transaction, key: bytes, value: bytes, lease: int | None) -> int:
        if len(value) > MAX_VALUE:
            raise InvalidArgument(f"store value of {len(value)} bytes is over {MAX_VALUE}")
        if lease is not None:
            raw = txn.get(lease.to_bytes(8, "big"), db=self.leases)
            if raw is None:
                raise NotFound(f"lease {lease} has expired or does not exist")
            rec = json.loads(bytes(raw))
            if key.decode() not in rec["keys"]:
                rec["keys"].append(key.decode())
                txn.put(lease.to_bytes(8, "big"), json.dumps(rec).encode(), db=self.leases)
        rev = self._bump(txn, key, value)
        txn.put(key, rev.to_bytes(8, "big") + (lease or 0).to_bytes(8, "big") + value, db=self.kv)
        return rev

    # -- the interface ---------------------------------------------------------------------------

    def revision(self) -> int:
        with self.env.begin() as txn:
            return self._rev(txn)

    # Reads are read-only transactions: they never wait for the writer lock nor cost a commit
    # (an fsync), which matters when every node polls the store several times an interval.

    def get(self, key: str) -> Entry | None:
        k = _check_key(key)
        with self.env.begin() as txn:
            raw = txn.get(k, db=self.kv)
            return None if raw is None else self._live(txn, raw)

    def range(self, prefix: str) -> list[tuple[str, Entry]]:
        p = prefix.encode()
        out = []
        with self.env.begin() as txn:
            cur = txn.cursor(db=self.kv)
            if cur.set_range(p):
                for k, v in cur:
                    if not k.startswith(p):
                        break
                    e = self._live(txn, v)
                    if e is not None:
                        out.append((k.decode(), e))
        return out

    def put(self, key: str, value: bytes, *, lease: int | None = None) -> int:
        k = _check_key(key)
        with self.env.begin(write=True) as txn:
            self._expire(txn)
            return self._write(txn, k, value, lease)

    def compare_and_set(self, key: str, expected: int, value: bytes, *, lease: int | None = None) -> int | None:
        """Write ``value`` only if the key's revision is ``expected`` (0: the key must not exist).
        Returns the new revision, or None when another writer came first."""
        k = _check_key(key)
        with self.env.begin(write=True) as txn:
            self._expire(txn)
            raw = txn.get(k, db=self.kv)
            current = 0 if raw is None else self._decode(raw).revision
            if current != expected:
                return None
            return self._write(txn, k, value, lease)

    def delete(self, key: str, *, expected: int | None = None) -> bool:
        k = _check_key(key)
        with self.env.begin(write=True) as txn:
            self._expire(txn)
            raw = txn.get(k, db=self.kv)
            if raw is None or (expected is not None and self._decode(raw).revision != expected):
                return False
            txn.delete(k, db=self.kv)
            self._bump(txn, k, None)
            return True

    def commit(self, compares: dict[str, int], puts: dict[str, bytes | None]) -> int | None:
        """etcd's transaction in the one shape the cluster needs: if every key in ``compares`` still
        has the given revision (0: absent), apply ``puts`` (None deletes) together. Returns the
        revision of the last change, or None (nothing written) when a compare failed. A primary
        fences its writes this way: it compares the primary record it was elected under."""
        keys = {k: _check_key(k) for k in [*compares, *puts]}
        with self.env.begin(write=True) as txn:
            self._expire(txn)
            for key, expected in compares.items():
                raw = txn.get(keys[key], db=self.kv)
                if (0 if raw is None else self._decode(raw).revision) != expected:
                    return None
            rev = self._rev(txn)
            for key, value in puts.items():
                if value is not None:
                    rev = self._write(txn, keys[key], value, None)
                elif txn.get(keys[key], db=self.kv) is not None:
                    txn.delete(keys[key], db=self.kv)
                    rev = self._bump(txn, keys[key], None)
            return rev

    def grant_lease(self, ttl: float) -> int:
        if not 0 < ttl <= 3600:
            raise InvalidArgument("a lease lasts from 0 to 3600 seconds")
        with self.env.begin(write=True) as txn:
            raw = txn.get(b"next_lease", db=self.meta)
            lease = int(raw) if raw else 1
            txn.put(b"next_lease", str(lease + 1).encode(), db=self.meta)
            deadline = time.monotonic() + ttl
            txn.put(lease.to_bytes(8, "big"), json.dumps(
                {"ttl": ttl, "deadline": deadline, "boot": _BOOT_ID, "keys": []}).encode(), db=self.leases)
            self.deadlines.set(lease, deadline)  # a grant that does not commit leaves its id to the next
        return lease

    def keep_alive(self, lease: int) -> None:
        """Renew ``lease`` for its ttl from now: a read and a write into the deadlines file, no
        commit. NotFound when it has expired (it stays expired)."""
        with self.env.begin() as txn:
            raw = txn.get(lease.to_bytes(8, "big"), db=self.leases)
            rec = None if raw is None else json.loads(bytes(raw))
        if rec is None or not _this_boot(rec) or not self.deadlines.extend(lease, rec["deadline"], rec["ttl"]):
            raise NotFound(f"lease {lease} has expired")

    def time_to_live(self, lease: int) -> float | None:
        """Seconds left before ``lease`` expires unless kept alive (etcd's LeaseTimeToLive); None
        when it has expired or never existed."""
        with self.env.begin() as txn:
            raw = txn.get(lease.to_bytes(8, "big"), db=self.leases)
            if raw is None:
                return None
            return self._left(lease, json.loads(bytes(raw)))

    def revoke(self, lease: int) -> None:
        with self.env.begin(write=True) as txn:
            raw = txn.get(lease.to_bytes(8, "big"), db=self.leases)
            if raw is None:
                return
            rec = json.loads(raw)
            rec["deadline"] = -1.0
            txn.put(lease.to_bytes(8, "big"), json.dumps(rec).encode(), db=self.leases)
            self.deadlines.set(lease, -1.0)
            self._expire(txn)

    def changes(self, since: int, prefix: str = "") -> list[Change]:
        """Every change after revision ``since`` to keys under ``prefix``, oldest first (poll to watch).
        Raises NotFound when changes after ``since`` were already pruned (the watcher must resync)."""
        with self.env.begin() as txn:
            cur = txn.cursor(db=self.log)
            if cur.first() and since + 1 < int.from_bytes(cur.key(), "big"):
                raise NotFound(f"changes after revision {since} are gone; resync")
            out = []
            if cur.set_range((since + 1).to_bytes(8, "big")):
                for k, v in cur:
                    key, val = json.loads(v)
                    if key.startswith(prefix):
                        out.append(Change(int.from_bytes(k, "big"), key, None if val is None else bytes.fromhex(val)))
        return out

    def where(self) -> dict[str, Any]:
        """Where the store is: {"backend": "embedded", "path"}."""
        return {"backend": "embedded", "path": self.path}

    def close(self) -> None:
        with self._open_lock:
            if self.closed:
                return
            self.closed = True
            env, dbs, deadlines, users = self._open[self.path]
            if users == 1:
                del self._open[self.path]
                env.close()
                deadlines.close()
            else:
                self._open[self.path] = (env, dbs, deadlines, users - 1)
