"""The primary's notifier daemon: follows the payload directory and posts each event
to the TCP socket of every caller registered for its kind.

One reader thread follows the log into a bounded in-memory window of encoded lines; each caller
has its own sender thread with its own cursor, which sends everything it is behind in one
``sendall``. A slow caller therefore only falls behind (and reads from the payload files once it
is older than the window); it never holds up the reader or another caller. Delivery is in order
per caller and at-least-once across reconnects: a caller says ``since`` and gets every later
number it registered for.
"""
from __future__ import annotations

import json
import logging
import socket
import threading

from .events import EventLog, Gone
from .protocol import encode

log = logging.getLogger("blockstore.cluster.notifier")
WINDOW = 200_000     # recent events kept in memory
BATCH = 4096         # events per sendall at most
SEND_TIMEOUT = 30.0  # a caller that takes no bytes for this long is dropped (it can reconnect)


class Notifier:
    def __init__(self, events: EventLog, poll: float = 0.002) -> None:
        self.events = events
        self.poll = poll
        self.cond = threading.Condition()
        self.base = events.head() + 1   # seq of lines[0]
        self.lines: list[bytes] = []
        self.kinds: list[str] = []
        self.stopped = False
        self.callers: set[socket.socket] = set()
        self._reader = threading.Thread(target=self._follow, name="notifier-reader", daemon=True)
        self._reader.start()

    @property
    def head(self) -> int:
        return self.base + len(self.lines) - 1

    def _follow(self) -> None:
        while not self.stopped:
            seq = self.head + 1
            try:
                line = self.events.read(seq)
            except Gone:  # pruned under us: skip to what is kept
                with self.cond:
                    self.base, self.lines, self.kinds = self.events.oldest(), [], []
                continue
            if line is None:
                with self.cond:
                    self.cond.wait(self.poll)
                continue
            kind = json.loads(line)["kind"]
            with self.cond:
                self.lines.append(line)
                self.kinds.append(kind)
                if len(self.lines) > WINDOW:
                    drop = len(self.lines) - WINDOW // 2
                    del self.lines[:drop], self.kinds[:drop]
                    self.base += drop
                self.cond.notify_all()

    def wake(self) -> None:
        """Someone published: look now rather than at the next poll."""
        with self.cond:
            self.cond.notify_all()

    def add_caller(self, sock: socket.socket, kinds: frozenset[str], since: int) -> None:
        """Serve a registered caller from ``since`` on its own thread (the reply to its register
        line has been sent)."""
        sock.settimeout(SEND_TIMEOUT)
        with self.cond:
            self.callers.add(sock)
        threading.Thread(target=self._send, args=(sock, kinds, since), name="notifier-caller", daemon=True).start()

    def _from_window(self, cursor: int, kinds: frozenset[str]) -> tuple[list[bytes], int]:
        """Lines after ``cursor`` (at least ``base - 1``) for ``kinds``, at most BATCH events
        looked at, and the new cursor. Called with the condition held."""
        end = min(self.head, cursor + BATCH)
        lines, names = self.lines, self.kinds
        out = [lines[i] for i in range(cursor + 1 - self.base, end + 1 - self.base) if names[i] in kinds]
        return out, end

    def _from_files(self, cursor: int, kinds: frozenset[str]) -> tuple[list[bytes], int]:
        """The same for a caller behind the window, read from the payload files (raises Gone)."""
        out: list[bytes] = []
        seq = cursor
        while seq - cursor < BATCH:
            line = self.events.read(seq + 1)
            if line is None:
                break
            seq += 1
            if json.loads(line)["kind"] in kinds:
                out.append(line)
        return out, seq

    def _send(self, sock: socket.socket, kinds: frozenset[str], cursor: int) -> None:
        try:
            while True:
                with self.cond:
                    while not self.stopped and cursor >= self.head:
                        self.cond.wait()
                    if self.stopped:
                        return
                    behind = cursor + 1 < self.base
                    if not behind:
                        lines, cursor = self._from_window(cursor, kinds)
                if behind:
                    lines, cursor = self._from_files(cursor, kinds)
                if lines:
                    sock.sendall(b"".join(lines))
        except Gone as e:
            self._say(sock, {"error": "gone", "detail": str(e), "resync": True})
        except OSError as e:
            log.info("caller dropped: %s", e)
        finally:
            with self.cond:
                self.callers.discard(sock)
            sock.close()

    @staticmethod
    def _say(sock: socket.socket, obj: dict) -> None:  # type: ignore[type-arg]
        try:
            sock.sendall(encode(obj))
        except OSError:
            pass

    def stop(self) -> None:
        """Stop serving (deposed or leaving): every caller is disconnected and will reconnect
        to the new primary with its own ``since``."""
        with self.cond:
            self.stopped = True
            callers = list(self.callers)
            self.cond.notify_all()
        for s in callers:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
