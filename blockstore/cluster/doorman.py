"""The door of a node's listening socket: where a connection waits until it has proved it holds
the cluster token.

A connection costs nothing but a descriptor and a buffer until its first line is complete: one
thread watches every waiting connection with a selector. At most ``limit`` connections wait at a
time, and each has ``deadline`` seconds in all for its first line (a byte every two seconds does
not keep it open). When the door is full the connection that has waited longest is dropped for the
newcomer: a flood pushes out its own connections, while a real caller, which sends its whole first
line with the connect, is served as soon as the selector sees it. A first line that is garbage or
that ``authorize`` refuses (a wrong token) is answered with one error line and closed here. Only
an authorized first request is handed on (``admit(conn, first, reader)``) to a thread of its
own, so the number of threads is bounded by the callers that hold a secret, not by whoever can
connect.
"""
from __future__ import annotations

import collections
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from .protocol import MAX_LINE, LineReader, ProtocolError, encode, parse_line

log = logging.getLogger("blockstore.cluster.doorman")

Admit = Callable[[socket.socket, dict[str, Any], LineReader], None]
Authorize = Callable[[dict[str, Any]], None]  # raises ProtocolError to refuse a first line


class Doorman:
    def __init__(self, server: socket.socket, authorize: Authorize, admit: Admit, *,
                 limit: int = 256, deadline: float = 5.0,
                 refusal: Callable[[str], dict[str, Any]] = lambda message: {"error": message}) -> None:
        """``refusal(message)``: the reply to a first line that is garbage or refused."""
        self.server = server
        self.refusal = refusal
        self.authorize = authorize
        self.admit = admit
        self.limit = limit
        self.deadline = deadline
        self.sel = selectors.DefaultSelector()
        # waiting connections in arrival order -> (deadline, bytes so far)
        self.waiting: collections.OrderedDict[socket.socket, tuple[float, bytearray]] = collections.OrderedDict()
        self.dropped = 0  # pushed out or timed out; for the node's view
        self.closed = False

    def serve(self) -> None:
        """Run until the server socket is closed."""
        self.server.setblocking(False)
        self.sel.register(self.server, selectors.EVENT_READ)
        try:
            while not self.closed:
                now = time.monotonic()
                first = next(iter(self.waiting.values()), None)
                timeout = 1.0 if first is None else max(0.0, min(1.0, first[0] - now))
                try:
                    ready = self.sel.select(timeout)
                except OSError:
                    return
                for key, _ in ready:
                    if key.fileobj is self.server:
                        if not self._accept():
                            return
                    else:
                        self._read(key.fileobj)  # type: ignore[arg-type]
                self._expire(time.monotonic())
        finally:
            for conn in list(self.waiting):
                self._drop(conn)
            self.sel.close()

    def close(self) -> None:
        self.closed = True

    def _accept(self) -> bool:
        for _ in range(64):  # a batch, then look at the waiting ones again
            try:
                conn, _ = self.server.accept()
            except BlockingIOError:
                return True
            except OSError:
                return False  # the server socket was closed: the node is leaving
            if len(self.waiting) >= self.limit:
                self.dropped += 1
                self._drop(next(iter(self.waiting)))
            conn.setblocking(False)
            self.waiting[conn] = (time.monotonic() + self.deadline, bytearray())
            self.sel.register(conn, selectors.EVENT_READ)
            self._read(conn)  # a real caller's line usually came with the connect
        return True

    def _read(self, conn: socket.socket) -> None:
        entry = self.waiting.get(conn)
        if entry is None:
            return
        buf = entry[1]
        try:
            chunk = conn.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            self._drop(conn)
            return
        if not chunk:
            self._drop(conn)
            return
        buf += chunk
        i = buf.find(b"\n")
        if i < 0:
            if len(buf) > MAX_LINE:
                self._refuse(conn, f"line longer than {MAX_LINE} bytes")
            return
        try:
            first = parse_line(bytes(buf[:i]))
            self.authorize(first)
        except ProtocolError as e:
            self._refuse(conn, str(e))
            return
        self._forget(conn)
        conn.setblocking(True)
        reader = LineReader(conn, bytes(buf[i + 1:]))
        threading.Thread(target=self.admit, args=(conn, first, reader), name="conn", daemon=True).start()

    def _expire(self, now: float) -> None:
        while self.waiting:
            conn, (due, _) = next(iter(self.waiting.items()))
            if due > now:
                return
            self.dropped += 1
            self._drop(conn)

    def _refuse(self, conn: socket.socket, message: str) -> None:
        try:
            conn.send(encode(self.refusal(message)))  # one line fits any socket buffer; never blocks
        except OSError:
            pass
        self._drop(conn)

    def _forget(self, conn: socket.socket) -> None:
        self.waiting.pop(conn, None)
        try:
            self.sel.unregister(conn)
        except (KeyError, ValueError):
            pass

    def _drop(self, conn: socket.socket) -> None:
        self._forget(conn)
        conn.close()
