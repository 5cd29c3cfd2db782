"""The control channel of a process that holds LUs open: how another process asks it to act
on an LU in use (take a snapshot or a clone of it, grow it, say how it is used) instead of being
refused with Busy.

The holder (a mount daemon; a cluster node later) serves ``POOL/control/PID.sock``, a Unix
socket of mode 0600 in a 0700 directory, and also checks each peer's credentials: only the pool
owner's user (or root) is served. A request is one JSON object on one line, the reply one line:
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "...", "kind": "Busy"}``. The holder
carries a request out with its own open pool, so it is one more caller of the engine: a
snapshot taken there is a point in time of the LU as its writers see it (every write acknowledged
before it is in it, none issued after it returns).

Requests: ``snapshot`` {lu, snap}, ``clone`` {source, new}, ``grow`` {lu, size}, ``status`` {lu},
``resync`` {lu} (a resync runs where the LU is written: health.py), ``let_go`` {lu} (stop writing it,
flush and release it: the old owner's half of a cluster node's graceful move).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import struct
import threading
from typing import TYPE_CHECKING, Any

from . import errors
from .cluster.doorman import Doorman
from .errors import BlockstoreError, Busy, InvalidArgument
from .pooldir import opened_dir, subdir

if TYPE_CHECKING:
    from .pool import Pool

log = logging.getLogger("blockstore.control")
#: connections waiting for their request line, at most (the oldest is dropped for a newcomer)
DOOR_LIMIT = 256
#: seconds a connection has to send its whole request line
REQUEST_DEADLINE = 5.0
#: requests carried out at once (each on a thread); more are answered Busy at once
BUSY_LIMIT = 8


def socket_path(pool_path: str, pid: int) -> str:
    return os.path.join(pool_path, "control", f"{pid}.sock")


class ControlServer:
    """Serves the control socket of this process for ``pool`` (one request per connection). ``status`` entries come from ``describe(name)``, the holder's view of
    an LU it has open (handles, bytes written), merged over the engine's."""

    def __init__(self, pool: "Pool", describe: Any = None, let_go: Any = None) -> None:
        self.pool = pool
        self.describe: Any = describe or (lambda name: {})
        self.let_go: Any = let_go or pool.let_go
        self.path = socket_path(pool.path, os.getpid())
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._door: Doorman | None = None
        self._busy = threading.BoundedSemaphore(BUSY_LIMIT)

    def start(self) -> "ControlServer":
        where = subdir(self.pool.path, "control")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with opened_dir(self.pool.path, where) as dfd:
            name = os.path.basename(self.path)
            try:
                os.unlink(name, dir_fd=dfd)  # a socket left by a process that died with this pid
            except FileNotFoundError:
                pass
            old = os.umask(0o177)
            try:
                # named through the directory's descriptor: no link on the way is followed
                sock.bind(f"/proc/self/fd/{dfd}/{name}")
            finally:
                os.umask(old)
        # The backlog matches the door: a burst of asks waits in the kernel, not in EAGAIN.
        sock.listen(DOOR_LIMIT)
        self._sock = sock
        # One selector thread holds every connection until its request line is complete (bounded,
        # each with a deadline: idle connections cost no thread); a request then runs on a
        # thread of its own, at most BUSY_LIMIT at a time.
        self._door = Doorman(sock, lambda first: None, self._admit, limit=DOOR_LIMIT, deadline=REQUEST_DEADLINE,
                             refusal=lambda why: {"ok": False, "error": f"bad request: {why}", "kind": "InvalidArgument"})
        self._thread = threading.Thread(target=self._door.serve, name="control", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._sock is not None:
            try:
                with opened_dir(self.pool.path, os.path.dirname(self.path)) as dfd:
                    os.unlink(os.path.basename(self.path), dir_fd=dfd)
            except (FileNotFoundError, BlockstoreError):
                pass
            if self._door is not None:
                self._door.close()
            self._sock.close()
            self._sock = None

    def _admit(self, conn: socket.socket, req: dict[str, Any], reader: Any) -> None:
        with conn:
            _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            if not self._busy.acquire(blocking=False):
                reply = {"ok": False, "error": f"more than {BUSY_LIMIT} requests in progress; try again",
                         "kind": "Busy"}
            else:
                try:
                    if uid not in (0, os.getuid()):
                        raise errors.ReadOnly(f"user {uid} may not control this pool's LUs")
                    reply = {"ok": True, "result": self.handle(req)}
                except BlockstoreError as e:
                    reply = {"ok": False, "error": str(e), "kind": type(e).__name__}
                except Exception as e:  # noqa: BLE001  (a reply, never a dead thread)
                    log.exception("control request failed")
                    reply = {"ok": False, "error": f"{type(e).__name__}: {e}", "kind": "BlockstoreError"}
                finally:
                    self._busy.release()
            try:
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                pass

    def handle(self, req: Any) -> Any:
        """Carry out one request (a dict as described in the module's docstring)."""
        if not isinstance(req, dict) or not isinstance(req.get("op"), str):
            raise InvalidArgument("bad request: an object with an 'op' is expected")
        op, pool = req["op"], self.pool
        try:
            if op == "snapshot":
                return pool.snapshot(_str(req, "lu"), _str(req, "snap"))
            if op == "clone":
                return pool.clone(_str(req, "source"), _str(req, "new"))
            if op == "grow":
                name, size = _str(req, "lu"), req.get("size")
                if not isinstance(size, int):
                    raise InvalidArgument("bad request: 'size' must be a number of bytes")
                if size < pool.lu_info(name)["size"]:
                    raise InvalidArgument(f"LU {name!r} is in use: it can grow, not shrink")
                pool.resize(name, size)
                return pool.lu_info(name)
            if op == "resync":
                return {"copied": pool.resync(_str(req, "lu"))}
            if op == "status":
                name = _str(req, "lu")
                return {**pool.lu_status(name), **self.describe(name)}
            if op == "let_go":
                self.let_go(_str(req, "lu"))
                return True
        except Busy as e:
            raise Busy(str(e)) from None  # never forwarded again: this is the holder
        raise InvalidArgument(f"bad request: unknown op {op!r}")


def _str(req: dict[str, Any], key: str) -> str:
    v = req.get(key)
    if not isinstance(v, str) or not v:
        raise InvalidArgument(f"bad request: {key!r} must be a non-empty string")
    return v


def serves(pool_path: str, pid: int) -> bool:
    """Whether process ``pid`` serves a control channel for the pool (it can be asked)."""
    return os.path.exists(socket_path(pool_path, pid))


def ask(pool_path: str, holder: int, request: dict[str, Any], timeout: float = 60.0) -> Any:
    """Send ``request`` to the process ``holder`` (the pid a Busy named) and return its result;
    its error is raised here as the same engine exception. A holder without a control socket
    (a process of the Python API, or a mount of an older version) leaves the Busy to the caller:
    NotFound is raised, which the caller turns back into its Busy."""
    path = socket_path(pool_path, holder)
    if not os.path.exists(path):
        raise errors.NotFound(f"process {holder} takes no requests (no {path})")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            raise errors.NotFound(f"process {holder} takes no requests") from None
        # whoever answers must be the pool's owner or root: a socket planted there by another
        # user would otherwise be told what this process asks
        _, uid, _ = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        if uid not in (0, os.stat(pool_path).st_uid):
            raise errors.Unsafe(f"{path} is served by user {uid}, not the pool's owner: refusing to ask it")
        s.sendall(json.dumps(request).encode() + b"\n")
        raw = b""
        while not raw.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            raw += chunk
    if not raw:
        raise BlockstoreError(f"process {holder} closed the control channel without a reply")
    reply = json.loads(raw)
    if reply.get("ok"):
        return reply.get("result")
    kind = getattr(errors, str(reply.get("kind")), BlockstoreError)
    if not (isinstance(kind, type) and issubclass(kind, BlockstoreError)):
        kind = BlockstoreError
    raise kind(f"{reply.get('error')} (asked of pid {holder})")
