"""The line protocol every node listens with: one JSON object per line, UTF-8, at most MAX_LINE
bytes. The first line of a connection says what it is (``op``) and carries a secret: the
callers' token (T) for the first two, the node key (K) for the rest (config.py):

    {"op": "register", "token": T, "kinds": ["*"], "since": 0}   an event caller (primary only)
    {"op": "status", "token": T}                                   this node's view, one reply
    {"op": "hello", "token": K, "node": N, "incarnation": I}      a peer's keep-alive link
    {"op": "notice", "token": K, "what": "ffdc", ...}             a command's one-off message
    {"op": "ffdc", "token": K, "reason": TEXT}                     capture FFDC on this node
    {"op": "stop", "token": K}                                     leave the cluster and exit

A refusal is one line ``{"error": TEXT, ...}`` and the connection is closed.
"""
from __future__ import annotations

import json
import socket
from typing import Any

MAX_LINE = 64 << 10


class ProtocolError(Exception):
    pass


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


class LineReader:
    """Bounded line reads from a socket (a caller cannot make us buffer an endless line)."""

    def __init__(self, sock: socket.socket, buf: bytes = b"") -> None:
        self.sock = sock
        self.buf = buf  # bytes already read from the socket (the doorman's rest after a first line)
        self.pos = 0  # where the next line starts in buf (slicing buf per line would copy its rest)

    def readline(self) -> bytes | None:
        """The next line without its newline; None at a clean end of stream."""
        while True:
            i = self.buf.find(b"\n", self.pos)
            if i >= 0:
                line, self.pos = self.buf[self.pos:i], i + 1
                if len(line) > MAX_LINE:
                    raise ProtocolError(f"line longer than {MAX_LINE} bytes")
                return line
            if len(self.buf) - self.pos > MAX_LINE:
                raise ProtocolError(f"line longer than {MAX_LINE} bytes")
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                if len(self.buf) > self.pos:
                    raise ProtocolError("connection ended in the middle of a line")
                return None
            self.buf, self.pos = self.buf[self.pos:] + chunk, 0

    def read_json(self) -> dict[str, Any] | None:
        line = self.readline()
        return None if line is None else parse_line(line)


def parse_line(line: bytes) -> dict[str, Any]:
    """One protocol line (without its newline) as a JSON object, or ProtocolError."""
    if len(line) > MAX_LINE:
        raise ProtocolError(f"line longer than {MAX_LINE} bytes")
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        # ValueError covers bad UTF-8, bad JSON and a number past Python's digit limit;
        # RecursionError, nesting deeper than the parser goes: garbage, not a fault of ours
        raise ProtocolError("not a JSON line") from None
    if not isinstance(obj, dict):
        raise ProtocolError("a line must be a JSON object")
    return obj


def parse_address(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``HOST:PORT`` or ``:PORT`` or ``PORT`` -> (host, port)."""
    from ..errors import InvalidArgument
    host, _, port = text.rpartition(":")
    try:
        p = int(port)
    except ValueError:
        raise InvalidArgument(f"not an address HOST:PORT: {text!r}") from None
    if not 0 <= p <= 65535:
        raise InvalidArgument(f"port {p} is out of range")
    return (host or default_host), p


def request(address: str, obj: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Send one request line and read one reply line."""
    host, port = parse_address(address)
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(encode(obj))
        reply = LineReader(s).read_json()
    if reply is None:
        raise ProtocolError(f"{address} closed the connection without a reply")
    return reply


def tell(address: str, key: str, msg: dict[str, Any]) -> bool:
    """Send a node one notice line (``msg`` names its ``what``); best effort."""
    try:
        with socket.create_connection(parse_address(address), timeout=1) as s:
            s.sendall(encode({**msg, "op": "notice", "token": key}))
        return True
    except OSError:
        return False
