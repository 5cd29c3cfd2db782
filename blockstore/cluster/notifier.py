"""The primary's notifier daemon: follows the payload directory and posts each event
to the TCP socket of every caller registered for its kind.

One reader thread follows the log into an in-memory window of encoded lines; each caller has
its own sender thread with its own cursor, which sends everything it is behind in one
``sendall``. The window holds only what some caller has not read yet (nothing when no caller is
registered), and at most WINDOW_BYTES: a slow caller therefore only falls behind (and reads from
the payload files once it is older than the window); it never holds up the reader or another
caller, and memory stays bounded whatever the callers do. A damaged payload file reaches every
caller as a marker of kind ``damaged`` (events.py), and delivery goes on. Delivery is in order
per caller and at-least-once across reconnects: a caller says ``since`` and gets every later
number it registered for.
"""
from __future__ import annotations

import json
import logging
import socket
import threading

from .events import DAMAGED, EventLog, Gone
from .protocol import encode

log = logging.getLogger("blockstore.cluster.notifier")
WINDOW_BYTES = 64 << 20  # encoded events kept in memory, at most
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
        self.cursors: dict[socket.socket, int] = {}  # each caller's last event sent
        self.bytes = 0  # in self.lines
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
                self.bytes += len(line)
                self._trim()
                self.cond.notify_all()

    def _trim(self) -> None:
        """Drop what every caller has read, then the oldest lines past WINDOW_BYTES (a caller
        behind them reads the payload files). Called with the condition held."""
        keep = min(self.cursors.values(), default=self.head) + 1  # the first line someone still needs
        drop = max(0, min(keep - self.base, len(self.lines)))
        gone = sum(map(len, self.lines[:drop]))
        while drop < len(self.lines) and self.bytes - gone > WINDOW_BYTES:
            gone += len(self.lines[drop])
            drop += 1
        if drop:
            self.bytes -= gone
            del self.lines[:drop], self.kinds[:drop]
            self.base += drop

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
            self.cursors[sock] = since
        threading.Thread(target=self._send, args=(sock, kinds, since), name="notifier-caller", daemon=True).start()

    def _from_window(self, cursor: int, kinds: frozenset[str]) -> tuple[list[bytes], int]:
        """Lines after ``cursor`` (at least ``base - 1``) for ``kinds``, at most BATCH events
        looked at, and the new cursor. Called with the condition held."""
        end = min(self.head, cursor + BATCH)
        lines, names = self.lines, self.kinds
        out = [lines[i] for i in range(cursor + 1 - self.base, end + 1 - self.base)
               if names[i] in kinds or names[i] == DAMAGED]
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
            kind = json.loads(line)["kind"]
            if kind in kinds or kind == DAMAGED:
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
                with self.cond:
                    self.cursors[sock] = cursor
        except Gone as e:
            self._say(sock, {"error": "gone", "detail": str(e), "resync": True})
        except OSError as e:
            log.info("caller dropped: %s", e)
        finally:
            with self.cond:
                self.callers.discard(sock)
                self.cursors.pop(sock, None)
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
