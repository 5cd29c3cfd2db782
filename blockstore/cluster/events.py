"""The event log: one message payload file per event in ``POOL/payloads``, numbered 1, 2, 3...

Publishing is durable before it is visible: the payload is written to a temporary name and
fsynced, then hard-linked to its sequence number's name (``link`` fails if the name exists, so
two publishers never claim one number), then the directory is fsynced. A number exists only once
its file does, so the log has no gaps: a reader follows it by opening ``seq+1`` until that is
missing. Nothing here depends on the coordination store; the directory is shared storage.

Pruning removes the oldest files beyond ``keep``; the first kept number is written to
``.oldest`` before any file goes, so a reader asking for a pruned number is told "gone" rather
than waiting forever.
"""
from __future__ import annotations

import json
import os
import time
import weakref
from typing import Any

from ..errors import InvalidArgument
from ..pooldir import dir_fd

#: What callers may register for ("*" is every kind).
KINDS = frozenset({
    "node_up", "node_down", "node_joined", "node_left", "node_fenced", "primary_elected", "primary_resigned",
    "lu_created", "lu_removed", "lu_resized", "ownership_changed", "pool_threshold", "ffdc_captured",
    "partition_changed", "paging_changed",
})
MAX_PAYLOAD = 64 << 10


class Gone(Exception):
    """The events asked for were pruned: the caller must resync from the current state."""


#: The kind of the marker that stands in for a damaged payload file (every caller gets it).
DAMAGED = "damaged"


def check_kinds(kinds: list[str] | tuple[str, ...]) -> frozenset[str]:
    if not isinstance(kinds, (list, tuple)) or not kinds or not all(isinstance(k, str) for k in kinds):
        raise InvalidArgument("kinds must be a non-empty list of event kinds (or [\"*\"])")
    unknown = [k for k in kinds if k != "*" and k not in KINDS]
    if unknown:
        raise InvalidArgument(f"unknown event kind {unknown[0]!r}; known: {', '.join(sorted(KINDS))}")
    return KINDS if "*" in kinds else frozenset(kinds)


def _damage(body: bytes) -> str | None:
    """Why a payload file's bytes are not an event (None: they are one)."""
    try:
        ev = json.loads(body)
    except (ValueError, RecursionError):
        return "not a JSON object (damaged)"
    if not isinstance(ev, dict) or not isinstance(ev.get("kind"), str) or not body.startswith(b"{"):
        return "not an event record (damaged)"
    return None


def _name(seq: int) -> str:
    return f"{seq:016d}.json"


class EventLog:
    """The payload files of a pool, in ``POOL/payloads``, worked on through a descriptor of that
    directory held for the log's life (pooldir.py): a link put in its place later leads nowhere."""

    def __init__(self, pool_path: str) -> None:
        self.dir = os.path.join(pool_path, "payloads")
        self.dfd = dir_fd(pool_path, "payloads")
        weakref.finalize(self, os.close, self.dfd)
        self._guess = 0  # a number known to exist (or 0): where probing for the head starts

    def _path(self, seq: int) -> str:
        return os.path.join(self.dir, _name(seq))

    def _exists(self, seq: int) -> bool:
        try:
            os.stat(_name(seq), dir_fd=self.dfd, follow_symlinks=False)
            return True
        except FileNotFoundError:
            return False

    def publish(self, kind: str, data: dict[str, Any] | None = None, *, node: str | None = None) -> int:
        """Write one event durably and return its sequence number."""
        if kind not in KINDS:
            raise InvalidArgument(f"unknown event kind {kind!r}")
        body = json.dumps({"kind": kind, "time": time.time(), "node": node, "data": data or {}},
                          separators=(",", ":")).encode()
        if len(body) > MAX_PAYLOAD:
            raise InvalidArgument(f"event payload of {len(body)} bytes is over {MAX_PAYLOAD}")
        tmp = f".tmp-{os.getpid()}-{time.monotonic_ns()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=self.dfd)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            seq = self.head() + 1
            while True:
                try:
                    os.link(tmp, _name(seq), src_dir_fd=self.dfd, dst_dir_fd=self.dfd)
                    break
                except FileExistsError:
                    seq += 1
        finally:
            os.unlink(tmp, dir_fd=self.dfd)
        os.fsync(self.dfd)
        self._guess = seq
        return seq

    def oldest(self) -> int:
        """The first number still kept (1 until something is pruned)."""
        try:
            fd = os.open(".oldest", os.O_RDONLY | os.O_NOFOLLOW, dir_fd=self.dfd)
        except FileNotFoundError:
            return 1
        try:
            return int(os.read(fd, 64))
        except ValueError:
            return 1
        finally:
            os.close(fd)

    def head(self) -> int:
        """The highest published number (0: none)."""
        seq = max(self._guess, self.oldest() - 1)
        if seq and not self._exists(seq) and seq >= self.oldest():
            seq = self._scan()
        # Numbers are claimed in order, so probing in strides then back finds the end quickly.
        step = 1
        while self._exists(seq + step):
            seq += step
            step *= 2
        while step > 1:
            step //= 2
            if self._exists(seq + step):
                seq += step
        self._guess = seq
        return seq

    def _scan(self) -> int:
        names = [n for n in os.listdir(self.dfd) if n.endswith(".json") and n[:16].isdigit()]
        return max((int(n[:16]) for n in names), default=0)

    def read(self, seq: int) -> bytes | None:
        """Event ``seq`` as one JSON line (with its ``seq``), or None if not published yet.
        Raises Gone if it was pruned."""
        try:
            # os.open: a fifth of open()'s cost (this is the notifier's loop); never through a link
            fd = os.open(_name(seq), os.O_RDONLY | os.O_NOFOLLOW, dir_fd=self.dfd)
        except FileNotFoundError:
            if seq < self.oldest():
                raise Gone(f"event {seq} was pruned (the oldest kept is {self.oldest()}); resync") from None
            return None
        except OSError as e:  # a link (ELOOP) or worse: skipped with a marker, never followed
            return json.dumps({"seq": seq, "kind": DAMAGED, "time": time.time(), "node": None,
                               "data": {"file": self._path(seq), "why": f"not a payload file ({e.strerror})"}},
                              separators=(",", ":")).encode() + b"\n"
        try:
            body = os.read(fd, MAX_PAYLOAD)  # a payload file is whole and at most MAX_PAYLOAD bytes
        finally:
            os.close(fd)
        why = _damage(body)
        if why is not None:  # skipped with a marker: one damaged file must not stop delivery
            return json.dumps({"seq": seq, "kind": DAMAGED, "time": time.time(), "node": None,
                               "data": {"file": self._path(seq), "why": why}}, separators=(",", ":")).encode() + b"\n"
        return b'{"seq":%d,%s\n' % (seq, body[1:])

    def events(self, since: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Published events after ``since``, oldest first (a damaged payload file as a marker of
        kind DAMAGED)."""
        return self._events(since, limit)

    def _events(self, since: int, limit: int | None) -> list[dict[str, Any]]:
        if since + 1 < self.oldest():
            raise Gone(f"events after {since} were pruned (the oldest kept is {self.oldest()}); resync")
        out: list[dict[str, Any]] = []
        seq = since + 1
        while limit is None or len(out) < limit:
            line = self.read(seq)
            if line is None:
                break
            out.append(json.loads(line))
            seq += 1
        return out

    def prune(self, keep: int) -> int:
        """Remove all but the newest ``keep`` events; returns how many went."""
        head, first = self.head(), self.oldest()
        new_first = max(first, head - keep + 1)
        if new_first <= first:
            return 0
        fd = os.open(".oldest.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600, dir_fd=self.dfd)
        with os.fdopen(fd, "w") as f:
            f.write(str(new_first))
            f.flush()
            os.fsync(f.fileno())
        os.replace(".oldest.tmp", ".oldest", src_dir_fd=self.dfd, dst_dir_fd=self.dfd)
        for seq in range(first, new_first):
            try:
                os.unlink(_name(seq), dir_fd=self.dfd)
            except FileNotFoundError:
                pass
        return new_first - first
