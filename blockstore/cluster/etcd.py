"""The coordination store on etcd (v3, through its JSON gateway; client: etcd3gw).

Every operation of store.py's interface is one etcd request: reads are linearizable ranges,
compare-and-set and ``commit`` are transactions comparing each key's ``mod_revision`` (0: the key
is absent), leases are etcd leases, the revision is etcd's, and ``changes`` reads etcd's revision
history through a watch from a past revision ("gone, resync" once etcd has compacted it).

The cluster's keys live under a prefix of their own (``blockstore/POOL-ID/``), so several pools can
share one etcd; the store answers only for the cluster whose record is under its prefix.

Leases are whole seconds in etcd, and etcd raises a TTL below its minimum (one and a half election
timeouts: 2 s with etcd's defaults) to that minimum: ``grant_lease`` asks for the TTL rounded up,
and ``time_to_live`` reports etcd's whole seconds rounded down, so what a node believes of its
lease is never more than etcd grants (the data path's margin rests on it). A node whose keep-alive
interval times misses is under 2 s therefore holds its lease up to 2 s: it is found down by its
peers' keep-alives at the configured timeout, and its lease in etcd ends by etcd's.

What the engine assumes of etcd (after Jepsen's etcd 3.4.3 analysis): key-value operations are
strict-serializable, also under partitions and process pauses, so a compare on ``mod_revision``
is a fence; leases and locks alone are not (a paused holder wakes up past its lease), which is why
every write of the data path compares an ownership epoch where it lands (fence.py).
"""
from __future__ import annotations

import base64
import json
import math
import random
import threading
from typing import Any
from urllib.parse import urlsplit

from ..errors import BlockstoreError, InvalidArgument, NotFound
from .store import MAX_VALUE, Change, Entry, _check_key

SCHEME = "etcd://"


class StoreUnavailable(BlockstoreError):
    """No etcd endpoint answered (or none with a quorum)."""


def parse_endpoints(url: str) -> list[tuple[str, int]]:
    """``etcd://HOST:PORT[,HOST:PORT...]`` as (host, port) pairs; InvalidArgument in one line."""
    if not url.startswith(SCHEME):
        raise InvalidArgument(f"a store is etcd://HOST:PORT[,HOST:PORT...], not {url!r}")
    out = []
    for part in url[len(SCHEME):].split(","):
        try:
            u = urlsplit("//" + part.strip())
            host, port = u.hostname, u.port
        except ValueError:
            host = port = None
        if not host or not port or u.path or u.query:
            raise InvalidArgument(f"bad etcd endpoint {part!r} in {url!r}: HOST:PORT")
        out.append((host, port))
    return out


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text or "")


def _next_key(raw: bytes) -> bytes:
    """The first key after every key that starts with ``raw`` (etcd's range_end of a prefix)."""
    b = bytearray(raw)
    while b and b[-1] == 0xFF:
        b.pop()
    if not b:
        return b"\0"  # every key
    b[-1] += 1
    return bytes(b)


class EtcdStore:
    """The coordination store in etcd at ``endpoints`` (``etcd://HOST:PORT,...``), under
    ``prefix``. ``timeout``: seconds a request may wait for a member (to connect, and between
    bytes of its answer) before the next member is asked. When every member let it wait that
    long, each is asked once more, waiting ``PATIENCE`` times longer (1 s at least): a member
    that does not answer soon is passed over while another answers (a paused member must not
    hold a node's keep-alives up), but members that are all slow at once (their disks busy
    with fsyncs) are not taken for a store without quorum."""

    PATIENCE = 4

    def __init__(self, url: str, prefix: str, *, timeout: float = 2.0) -> None:
        import etcd3gw  # not needed by a pool whose store is the embedded one
        from etcd3gw import exceptions as etcd_errors
        self._errors = etcd_errors
        self.url, self.endpoints = url, parse_endpoints(url)
        self.prefix = prefix.encode()
        #: one client per member for each round of asking: quick, then patient
        self._rounds = [[etcd3gw.Etcd3Client(host=h, port=p, timeout=t, api_path="/v3/") for h, p in self.endpoints]
                        for t in (timeout, max(1.0, self.PATIENCE * timeout))]
        self._clients = self._rounds[0]
        self._current = random.randrange(len(self._clients))  # spread the nodes over the members
        self._lock = threading.Lock()
        self.closed = False

    # -- one request, to the member in use or the next ---------------------------------------

    @property
    def member(self) -> str:
        """The endpoint this store talks to now (HOST:PORT)."""
        h, p = self.endpoints[self._current]
        return f"{h}:{p}"

    def _call(self, path: str, body: dict[str, Any], lost: list[str] | None = None) -> Any:
        """etcd's answer to ``body`` at ``path``; every member that let the request time out is
        appended to ``lost`` (the request may have been carried out there, its answer lost)."""
        last: Exception | None = None
        for clients in self._rounds:
            for k in range(len(clients)):
                i = (self._current + k) % len(clients)
                c = clients[i]
                try:
                    out = c.post(c.get_url(path), json=body)
                    self._current = i
                    return out
                except (self._errors.ConnectionFailedError, self._errors.ConnectionTimeoutError,
                        self._errors.InternalServerError) as e:
                    last = e  # down, cut off, or without a quorum: the next member may have one
                    if lost is not None and isinstance(e, self._errors.ConnectionTimeoutError):
                        lost.append(f"{c.host}:{c.port}")
                except self._errors.Etcd3Exception as e:
                    raise self._refused(c, e) from None
            if not isinstance(last, self._errors.ConnectionTimeoutError):
                break  # refused or without quorum: asking again more patiently changes nothing
        why = {"ConnectionFailedError": "no connection", "ConnectionTimeoutError": "timed out",
               "InternalServerError": "no quorum"}.get(type(last).__name__, str(last))
        raise StoreUnavailable(f"etcd is unavailable at {self.url} (every endpoint: {why})")

    @staticmethod
    def _refused(c: Any, e: Exception) -> BlockstoreError:
        """The error for a request a member answered with a refusal."""
        try:
            why = json.loads(getattr(e, "detail_text", None) or "{}").get("message") or str(e)
        except ValueError:
            why = str(e)
        if "lease not found" in why:
            return NotFound("the lease has expired or does not exist")
        return BlockstoreError(f"etcd at {c.host}:{c.port} refused a request: {why}")

    def _key(self, key: str) -> bytes:
        return self.prefix + _check_key(key)

    def _entry(self, kv: dict[str, Any]) -> Entry:
        lease = int(kv.get("lease", 0))
        return Entry(_unb64(kv.get("value")), int(kv["mod_revision"]), lease or None)

    # -- the interface (store.py) ---------------------------------------------------------------

    def revision(self) -> int:
        out = self._call("kv/range", {"key": _b64(self.prefix + b"\0revision"), "count_only": True})
        return int(out["header"]["revision"])

    def get(self, key: str) -> Entry | None:
        out = self._call("kv/range", {"key": _b64(self._key(key))})
        kvs = out.get("kvs") or []
        return self._entry(kvs[0]) if kvs else None

    def range(self, prefix: str) -> list[tuple[str, Entry]]:
        start = self.prefix + prefix.encode()
        out = self._call("kv/range", {"key": _b64(start), "range_end": _b64(_next_key(start)), "sort_order": "ASCEND",
                                      "sort_target": "KEY"})
        n = len(self.prefix)
        return [(_unb64(kv["key"])[n:].decode(), self._entry(kv)) for kv in out.get("kvs") or []]

    def _put_op(self, key: str, value: bytes | None, lease: int | None = None) -> dict[str, Any]:
        if value is None:
            return {"request_delete_range": {"key": _b64(self._key(key))}}
        if len(value) > MAX_VALUE:
            raise InvalidArgument(f"store value of {len(value)} bytes is over {MAX_VALUE}")
        put: dict[str, Any] = {"key": _b64(self._key(key)), "value": _b64(value)}
        if lease is not None:
            put["lease"] = str(lease)
        return {"request_put": put}

    def _txn(self, compares: dict[str, int], ops: list[dict[str, Any]]) -> int | None:
        cmp = [{"key": _b64(self._key(k)), "target": "MOD", "result": "EQUAL", "mod_revision": str(rev)}
               for k, rev in compares.items()]
        lost: list[str] = []
        out = self._call("kv/txn", {"compare": cmp, "success": ops}, lost)
        if out.get("succeeded"):
            return int(out["header"]["revision"])
        return self._carried_out(ops) if lost and compares else None

    def _carried_out(self, ops: list[dict[str, Any]]) -> int | None:
        """After a transaction whose compare failed on a second try: the revision of the first
        try if that one was carried out (its answer lost to a timeout), so the store holds what
        it wrote: each key put holds the value (and lease) put, each key deleted is absent. None
        if not. A record equal to ours written by someone else counts as ours: the store then
        holds what we asked for either way (records name their writer and epoch)."""
        revs = []
        for op in ops:
            if "request_put" in op:
                put = op["request_put"]
                kvs = self._call("kv/range", {"key": put["key"]}).get("kvs") or []
                if not kvs or kvs[0].get("value", "") != put["value"] or \
                        int(kvs[0].get("lease", 0)) != int(put.get("lease", 0)):
                    return None
                revs.append(int(kvs[0]["mod_revision"]))
            elif self._call("kv/range", {"key": op["request_delete_range"]["key"], "count_only": True}).get("count"):
                return None
        return max(revs) if revs else self.revision()

    def put(self, key: str, value: bytes, *, lease: int | None = None) -> int:
        rev = self._txn({}, [self._put_op(key, value, lease)])
        assert rev is not None
        return rev

    def compare_and_set(self, key: str, expected: int, value: bytes, *, lease: int | None = None) -> int | None:
        return self._txn({key: expected}, [self._put_op(key, value, lease)])

    def delete(self, key: str, *, expected: int | None = None) -> bool:
        if expected is None:
            out = self._call("kv/deleterange", {"key": _b64(self._key(key))})
            return int(out.get("deleted", 0)) > 0
        if expected == 0:
            return False
        return self._txn({key: expected}, [self._put_op(key, None)]) is not None

    def commit(self, compares: dict[str, int], puts: dict[str, bytes | None]) -> int | None:
        return self._txn(compares, [self._put_op(k, v) for k, v in puts.items()])

    def grant_lease(self, ttl: float) -> int:
        if not 0 < ttl <= 3600:
            raise InvalidArgument("a lease lasts from 0 to 3600 seconds")
        out = self._call("lease/grant", {"TTL": str(math.ceil(ttl)), "ID": "0"})
        return int(out["ID"])

    def keep_alive(self, lease: int) -> None:
        out = self._call("lease/keepalive", {"ID": str(lease)})
        if int((out.get("result") or {}).get("TTL", 0)) <= 0:
            raise NotFound(f"lease {lease} has expired")

    def time_to_live(self, lease: int) -> float | None:
        out = self._call("kv/lease/timetolive", {"ID": str(lease)})
        ttl = int(out.get("TTL", -1))
        return None if ttl < 0 else float(ttl)

    def revoke(self, lease: int) -> None:
        try:
            self._call("kv/lease/revoke", {"ID": str(lease)})
        except NotFound:
            pass  # gone already

    def changes(self, since: int, prefix: str = "") -> list[Change]:
        """Every change after revision ``since`` to keys under ``prefix``, oldest first, from
        etcd's history: a watch from ``since + 1``, whose past events etcd sends at once, read
        until they reach the revision current when asked, or until the stream pauses (the last
        revisions were another prefix's). NotFound when etcd has compacted that history (the
        watcher must resync)."""
        import requests
        head = self.revision()
        if head <= since:
            return []
        start = self.prefix
        body = {"create_request": {"key": _b64(start), "range_end": _b64(_next_key(start)),
                                   "start_revision": str(since + 1)}}
        c = self._clients[self._current]
        n, want = len(self.prefix), prefix.encode()
        out: list[Change] = []
        try:
            resp = c.session.post(c.get_url("watch"), data=json.dumps(body), stream=True, timeout=(2.0, 0.5))
        except requests.RequestException as e:
            raise StoreUnavailable(f"etcd is unavailable at {self.member}: {e}") from None
        try:
            for line in resp.iter_lines():
                result = json.loads(line).get("result", {}) if line.strip() else {}
                if int(result.get("compact_revision", 0)):
                    raise NotFound(f"changes after revision {since} are gone (etcd compacted to "
                                   f"{result['compact_revision']}); resync")
                events = result.get("events") or []
                for ev in events:
                    kv = ev["kv"]
                    key = _unb64(kv["key"])[n:]
                    if key.startswith(want) and int(kv["mod_revision"]) <= head:
                        out.append(Change(int(kv["mod_revision"]), key.decode(),
                                          None if ev.get("type") == "DELETE" else _unb64(kv.get("value"))))
                if events and int(events[-1]["kv"]["mod_revision"]) >= head:
                    break
        except requests.exceptions.ConnectionError:
            pass  # the stream paused: every past event was sent
        finally:
            resp.close()
        return out

    def where(self) -> dict[str, Any]:
        """Where the store is: {"backend": "etcd", "endpoints", "prefix", "member" (the one this
        process talks to now)}."""
        return {"backend": "etcd", "endpoints": self.url, "prefix": self.prefix.decode(), "member": self.member}

    def close(self) -> None:
        self.closed = True
        for clients in self._rounds:
            for c in clients:
                c.session.close()

