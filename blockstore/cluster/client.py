"""An event caller: registers with the current primary and yields events in order, across
primary changes (it reconnects with ``since`` = the last number it saw, so nothing is lost and
what a new primary sends twice is dropped here)."""
from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

from ..errors import BlockstoreError
from . import election
from .config import open_store, read_token
from .events import Gone
from .protocol import LineReader, ProtocolError, encode, parse_address


class EventClient:
    def __init__(self, pool_path: str, *, kinds: list[str] | None = None, since: int = 0,
                 token: str | None = None, wait: float = 30.0) -> None:
        """``wait``: how long to keep trying while there is no primary to register with."""
        self.pool_path = pool_path
        self.kinds = kinds or ["*"]
        self.last = since
        self.token = token if token is not None else read_token(pool_path)
        self.wait = wait
        self.sock: socket.socket | None = None

    def _primary_address(self) -> str | None:
        store = open_store(self.pool_path)
        try:
            return election.current(store).address
        finally:
            store.close()

    def connect(self) -> dict[str, Any]:
        """Register with the primary (waiting up to ``wait`` for one); returns its reply."""
        deadline = time.monotonic() + self.wait
        while True:
            address = self._primary_address()
            try:
                if address is None:
                    raise OSError("no primary")
                s = socket.create_connection(parse_address(address), timeout=5)
                s.sendall(encode({"op": "register", "token": self.token, "kinds": self.kinds, "since": self.last}))
                reader = LineReader(s)
                reply = reader.read_json()
                if reply is not None and "error" not in reply:
                    s.settimeout(None)
                    self.sock, self.reader = s, reader
                    return reply
                s.close()
                if reply is not None and reply["error"] == "gone":
                    raise Gone(reply.get("detail", "gone"))
                if reply is not None and reply["error"] != "not primary":
                    raise BlockstoreError(f"the primary refused: {reply['error']}")
            except (OSError, ProtocolError):
                pass
            if time.monotonic() > deadline:
                raise BlockstoreError(f"no primary took the registration within {self.wait:.0f}s")
            time.sleep(0.05)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            if self.sock is None:
                self.connect()
            try:
                line = self.reader.readline()
            except (OSError, ProtocolError):
                line = None
            if line is None:  # the primary went away (or was deposed): find the next one
                self.close()
                continue
            ev = json.loads(line)
            if "error" in ev:
                self.close()
                if ev["error"] == "gone":
                    raise Gone(ev.get("detail", "gone"))
                continue
            if ev["seq"] <= self.last:
                continue
            self.last = ev["seq"]
            yield ev

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
