"""A cluster node (a VIOS): one ``blockstore node`` process.

What a node does, each on its own thread:
- listens on its address for the line protocol (protocol.py): peers' keep-alive links, event
  callers, status and FFDC requests, stop;
- keep-alive: every ``interval`` it sends a line to every other registered node over a TCP link
  it keeps open, renews its lease in the coordination store (``alive/NAME``), and writes its view
  of the cluster (``views/NAME``), each on a thread of its own so that a slow commit delays
  neither the lines nor the lease. A peer is down when no line came from it for ``misses``
  intervals (monotonic clock), or at once when its link breaks and its port refuses a new
  connection: on one machine that means the process is gone, which is how a SIGKILLed primary is
  replaced in well under an interval while a stopped (SIGSTOP) one still takes the full timeout;
- the monitor: watches the ``primary`` record, runs an election when one is needed (election.py),
  notices when it has been deposed, and, while primary, keeps the membership records (fenced by
  epoch), runs the notifier (notifier.py), captures FFDC for faults the engine reported, and
  prunes old events;
- FFDC: captures on heartbeat loss, on an unhandled exception in any of its threads, and when
  asked; tells every other node and publishes an ``ffdc_captured`` event.

What a node does with LUs lives in modules of their own: the primary's moves of them (assign,
graceful hand-over, failover, fencing) in moves.py, the node's serving processes (its mount and
NBD export, supervised children) in servers.py, what those may write in serving.py.

Eligible to become primary (the requirements an election checks): the node is registered, its
own lease in the store is live (renewed within the timeout), it is not stopping, and in its own
view the current primary is down or there is none. The primary is down when its process refuses
connections, or when it has not been heard within the timeout and its lease in the store has
expired too (so a starved or just-started node never deposes a primary that renews its lease). Candidates wait in name order (interval/10
each among the nodes they see up) so that usually one tries, but safety comes from the store's
compare-and-set alone.
"""
from __future__ import annotations

import collections
import functools
import hmac
import json
import logging
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

from ..errors import AlreadyExists, BlockstoreError, InvalidArgument, NotFound
from ..names import check_name
from . import agent, election, ffdc
from .bridge import take_faults
from .doorman import Doorman
from .config import ClusterConfig, load_config, open_store, read_key, read_token
from .election import Deposed, Primary
from .events import EventLog, Gone, check_kinds
from .moves import Moves
from .notifier import Notifier
from .servers import NodeExport, NodeMount
from .protocol import LineReader, ProtocolError, encode, parse_address

log = logging.getLogger("blockstore.cluster.node")
NODE_OPS = frozenset({"hello", "notice", "stop", "ffdc", "assign", "let_go"})  # the node key's alone


@dataclass
class Peer:
    name: str
    address: str
    found: float                      # monotonic time we learned of it
    heard: float | None = None        # monotonic time of its last keep-alive line
    refused: bool = False             # its port refused us after its link broke: the process is gone
    link: socket.socket | None = None
    sending: threading.Lock = field(default_factory=threading.Lock)  # one line at a time on the link
    state: str = "joining"            # joining (not heard yet), up, down
    stopped: bool = False             # it left cleanly
    meta: dict[str, Any] = field(default_factory=dict)


class _Ring(logging.Handler):
    """The node's recent log lines, for FFDC bundles."""

    def __init__(self, n: int = 2000) -> None:
        super().__init__()
        self.lines: collections.deque[str] = collections.deque(maxlen=n)
        self.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


class Node:
    def __init__(self, pool_path: str, name: str, *, listen: str = "127.0.0.1:0", cec: str | None = None,
                 mount: str | None = None, hold: bool = False, nbd: str | None = None) -> None:
        self.pool_path = os.path.abspath(pool_path)
        self.name = check_name(name, "node name")
        self.mount = NodeMount(self.pool_path, self.name, mount, hold=hold) if mount else None
        self.export = NodeExport(self.name, self.mount.mountpoint, nbd) if nbd and self.mount else None
        self.cec = check_name(cec, "CEC name") if cec else None
        self.bind = parse_address(listen)
        self.store = open_store(self.pool_path)
        try:
            self.cfg: ClusterConfig = load_config(self.store, self.pool_path)
            self.token = read_token(self.pool_path).encode()
            self.key = read_key(self.pool_path)
        except BaseException:
            self.store.close()
            raise
        self.events = EventLog(self.pool_path)
        self.moves = Moves(self.pool_path, self.store, self.cfg, self.key, self)
        self.ring = _Ring()
        logging.getLogger("blockstore").addHandler(self.ring)
        self.lock = threading.RLock()
        self.peers: dict[str, Peer] = {}
        self.primary = Primary(None, 0, 0)
        self.me: Primary | None = None          # the record of my own election while I am primary
        self.notifier: Notifier | None = None
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.lease = 0
        self.lease_renewed = 0.0
        self.store_reached = True               # the last lease renewal did not fail
        self.incarnation = time.time_ns()
        self.need_since: float | None = None
        self.ffdc_seen: list[dict[str, Any]] = []
        self.refused_writes = 0
        self.last_duties = 0.0                  # monotonic time of the primary's last duty round
        self.last_round = time.monotonic()      # of the monitor's last look at the peers
        self.grace_until = 0.0                  # silence is no failure before this (a stall of ours)
        self.duty_faults: set[tuple[str, str]] = set()  # (thread, exception) already captured
        self._ffdc_queue: queue.Queue[tuple[str, str, BaseException | None]] = queue.Queue()
        self.server: socket.socket | None = None
        self.doorman: Doorman | None = None
        self.address = ""

    # -- joining and leaving -------------------------------------------------------------------

    def start(self) -> None:
        """Bind, register (refused if a live node has this name) and start every thread."""
        try:
            self.server = socket.create_server(self.bind, backlog=128)
        except OSError as e:
            raise InvalidArgument(f"cannot listen on {self.bind[0]}:{self.bind[1]}: {e.strerror}") from None
        host, port = self.server.getsockname()[:2]
        self.address = f"{host}:{port}"
        try:
            self._register()
        except BaseException:
            self.server.close()
            raise
        threading.excepthook = self._thread_crashed
        self.doorman = Doorman(self.server, self._authorize, self._serve)
        for target, tname in ((self.doorman.serve, "doorman"), (self._monitor_loop, "monitor"),
                              (self._ffdc_loop, "ffdc")):
            threading.Thread(target=target, name=tname, daemon=True).start()
        for tname, step in (("heartbeat", self._heartbeat_round), ("lease", self._lease_round),
                            ("view", self._write_view)):
            threading.Thread(target=self._every_interval, args=(tname, step), name=tname, daemon=True).start()
        for child in self._children():
            child.on_started = self._record_processes
            try:
                child.start()
            except BaseException:
                self.stopping.set()
                self._leave()
                raise
        log.info("node %s up at %s (cluster %s, interval %.2fs, down after %d misses)",
                 self.name, self.address, self.cfg.name, self.cfg.interval, self.cfg.misses)

    def _register(self) -> None:
        alive = json.dumps({"pid": os.getpid(), "address": self.address, "incarnation": self.incarnation}).encode()
        key = f"alive/{self.name}"
        self.lease = self.store.grant_lease(self.cfg.timeout)
        while True:
            try:
                if self.store.compare_and_set(key, 0, alive, lease=self.lease) is not None:
                    break
            except NotFound:
                # the new lease ran out before its first use (this process was stopped or
                # starved for the whole timeout in between): take a fresh one
                self.lease = self.store.grant_lease(self.cfg.timeout)
                continue
            held = self.store.get(key)
            if held is None:
                continue
            who = json.loads(held.value)
            # Our own listening socket holds its address now, so a record naming that address
            # is a dead process's (a port has one listener): no need to wait for its lease.
            gone = who["address"] == self.address or self._gone(who["address"])
            if not gone or not self.store.delete(key, expected=held.revision):
                self.store.revoke(self.lease)
                raise AlreadyExists(f"node {self.name} is already running (pid {who['pid']} at {who['address']})")
            log.info("node %s: the previous process under this name is gone; taking its place", self.name)
        self.store.put(f"nodes/{self.name}", json.dumps({
            "name": self.name, "address": self.address, "cec": self.cec, "pid": os.getpid(),
            "incarnation": self.incarnation, "registered": time.time(), "stopped": False,
            "mount": self.mount.mountpoint if self.mount else None, "nbd": self.export.address if self.export else None,
            "processes": self._processes()}).encode())
        self.lease_renewed = time.monotonic()
        self.publish("node_joined", {"node": self.name, "address": self.address, "cec": self.cec,
                                      "pid": os.getpid()})

    def _children(self) -> list[NodeMount | NodeExport]:
        """The node's serving processes (servers.py), in the order they start."""
        return [c for c in (self.mount, self.export) if c is not None]

    def _processes(self) -> list[dict[str, int]]:
        """The processes this node serves from (itself, its mount, its export): what the fence
        agent stops."""
        return [agent.this_process(), *(p for c in self._children() if (p := c.process()) is not None)]

    def _record_processes(self) -> None:
        rec = self.store.get(f"nodes/{self.name}")
        if rec is None:
            return
        info = json.loads(rec.value)
        if info.get("incarnation") == self.incarnation:
            info["processes"] = self._processes()
            self.store.compare_and_set(f"nodes/{self.name}", rec.revision, json.dumps(info).encode())

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def run(self, on_ready: Any = None) -> None:
        """Start, then serve until stopped (``node stop``, SIGTERM): a primary resigns first."""
        self.start()
        if on_ready:
            on_ready()
        self.stopping.wait()
        self._leave()

    def _leave(self) -> None:
        for child in reversed(self._children()):
            child.stop()  # the mount last: every LU it wrote is flushed and let go before the node leaves
        with self.lock:
            if self.notifier:
                self.notifier.stop()
                self.notifier = None
            me, self.me = self.me, None
        if me is not None and election.resign(self.store, me):
            self.publish("primary_resigned", {"node": self.name, "epoch": me.epoch})
            self._tell_peers({"op": "elected"})  # "look at the record": there is no primary now
        rec = self.store.get(f"nodes/{self.name}")
        if rec is not None:
            info = json.loads(rec.value)
            if info.get("incarnation") == self.incarnation:
                info["stopped"] = True
                self.store.put(f"nodes/{self.name}", json.dumps(info).encode())
        self.store.revoke(self.lease)
        with self.lock:
            for p in self.peers.values():
                if p.link:
                    p.link.close()
        if self.doorman:
            self.doorman.close()
        if self.server:
            self.server.close()
        log.info("node %s left the cluster", self.name)
        self.store.close()

    # -- keep-alive ----------------------------------------------------------------------------

    def _duty(self, thread: str, step: Callable[[], Any]) -> None:
        """One round of a duty thread (keep-alive, monitor, FFDC). Whatever it raises is logged,
        captured as FFDC once per thread and kind of exception, and the thread goes on: a node
        whose keep-alive or monitor had died would look alive to its peers while doing nothing."""
        try:
            step()
        except Exception as e:
            if self.stopping.is_set():
                return  # the store is closing under the threads as the node leaves
            log.error("%s in thread %s: %s; going on", type(e).__name__, thread, e)
            key = (thread, type(e).__name__)
            if key not in self.duty_faults:
                self.duty_faults.add(key)
                self._ffdc_queue.put(("exception", f"{type(e).__name__} in thread {thread}", e))
            self.stopping.wait(min(1.0, self.cfg.interval))  # not a hot loop if it fails again

    def _every_interval(self, thread: str, step: Callable[[], Any]) -> None:
        while not self.stopping.is_set():
            t0 = time.monotonic()
            self._duty(thread, step)
            self.stopping.wait(max(0.0, self.cfg.interval - (time.monotonic() - t0)))

    # The keep-alive lines, the lease and the view are each on a thread of their own: a store
    # write waits for its commit's fsync, which a disk busy with other writers can hold for
    # seconds. Sent after one, the lines stopped too, peers took the slow disk for a dead node,
    # and fenced it; renewed after one, the lease ran out and the node's own writes stopped. (The
    # embedded store renews a lease without a commit: deadlines.py.) A node whose lease runs out
    # all the same loses the primary role (the store is the arbiter) and rejoins, but stays up in
    # its peers' view, so nothing it owns moves. A renewal that fails (the store cannot be
    # reached: no quorum, cut off) is another matter: the node cannot show it owns anything, so
    # it falls silent until a renewal succeeds, and its LUs move.

    def _heartbeat_round(self) -> None:
        self._refresh_peers()  # read-only transactions: they never wait for a commit
        if not self.store_reached:
            return
        with self.lock:
            line = encode({"op": "hb", "node": self.name, "incarnation": self.incarnation,
                           "primary": self.primary.node, "epoch": self.primary.epoch})
            peers = list(self.peers.values())
        for p in peers:
            if not p.stopped:
                self._send(p, line)

    def _lease_round(self) -> None:
        try:
            self._renew()
        except BaseException:
            self.store_reached = False
            raise
        self.store_reached = True

    def _renew(self) -> None:
        if self.stopping.is_set():
            return
        try:
            asked = time.monotonic()  # the lease runs from the request, not from its answer
            self.store.keep_alive(self.lease)
            self.lease_renewed = asked
        except NotFound:
            # Our lease ran out (we were stopped or starved): register again, i.e. rejoin.
            log.warning("node %s: lease expired; rejoining", self.name)
            try:
                self._register()
            except AlreadyExists as e:
                log.error("cannot rejoin: %s; leaving", e)
                self.stop()

    def _refresh_peers(self) -> None:
        now = time.monotonic()
        for key, e in self.store.range("nodes/"):
            info = json.loads(e.value)
            name = info["name"]
            if name == self.name:
                continue
            with self.lock:
                p = self.peers.get(name)
                if p is None or p.address != info["address"] or p.meta.get("incarnation") != info["incarnation"]:
                    if p and p.link:
                        p.link.close()
                    p = self.peers[name] = Peer(name, info["address"], now, meta=info)
                p.stopped = bool(info.get("stopped"))

    def _connect(self, p: Peer) -> socket.socket | None:
        try:
            s = socket.create_connection(parse_address(p.address), timeout=self.cfg.interval / 2)
            s.sendall(encode({"op": "hello", "token": self.key, "node": self.name, "incarnation": self.incarnation}))
            return s
        except ConnectionRefusedError:
            with self.lock:
                if not p.refused:
                    log.info("peer %s refuses connections: its process is gone", p.name)
                p.refused = True
            self.wake.set()
        except OSError:
            pass  # unreachable or slow: the keep-alive timeout decides
        return None

    def _send(self, p: Peer, line: bytes) -> None:
        with p.sending:  # the heartbeat and the monitor (``_tell_peers``) share the link
            self._send_locked(p, line)

    def _send_locked(self, p: Peer, line: bytes) -> None:
        for _ in range(2):  # a broken link is reconnected once at once, to tell "gone" from "slow"
            if p.link is None:
                p.link = self._connect(p)
                if p.link is None:
                    return
            try:
                p.link.sendall(line)
                return
            except OSError:
                p.link.close()
                p.link = None

    def _tell_peers(self, msg: dict[str, Any]) -> None:
        line = encode(msg)
        with self.lock:
            peers = [p for p in self.peers.values() if not p.stopped]
        for p in peers:
            self._send(p, line)

    def _heard(self, name: str) -> None:
        with self.lock:
            p = self.peers.get(name)
            if p is not None:
                p.heard = time.monotonic()
                p.refused = False

    def _gone(self, address: str) -> bool:
        """True if nothing listens at ``address`` any more (refused: on one machine, the process
        that listened there has ended). A slow or unreachable address is not gone."""
        try:
            socket.create_connection(parse_address(address), timeout=self.cfg.interval / 2).close()
        except ConnectionRefusedError:
            return True
        except OSError:
            pass
        return False

    def _link_lost(self, name: str) -> None:
        """A peer's link to us closed: find out now whether its process is gone."""
        with self.lock:
            p = self.peers.get(name)
        if p is None or p.stopped:
            return
        # A killed process's sockets close in descriptor order, so its link can end while its
        # listening socket still accepts: look again for half an interval before leaving it to
        # the keep-alives.
        deadline = time.monotonic() + self.cfg.interval / 2
        while not self._gone(p.address):
            if time.monotonic() >= deadline or self.stopping.is_set():
                return
            time.sleep(0.05)
        with self.lock:
            p.refused = True
        log.info("peer %s closed its link and refuses connections: its process is gone", name)
        self.wake.set()

    def _is_up(self, p: Peer, now: float) -> bool:
        return not p.refused and not p.stopped and p.heard is not None and now - p.heard < self.cfg.timeout

    def _update_states(self) -> list[tuple[Peer, str, str]]:
        """Recompute each peer's state; returns the transitions.

        A node that was itself starved (its monitor did not run for a whole interval: the machine
        was overloaded, or it was stopped) has not read the keep-alives waiting in its sockets
        either: for one interval after such a stall it does not take silence for a failure,
        since a node found down is fenced and its LUs moved. A refused port still counts at once."""
        now = time.monotonic()
        if now - self.last_round > self.cfg.interval:
            self.grace_until = now + self.cfg.interval
        self.last_round = now
        self._read_leaves(now)
        changes = []
        with self.lock:
            for p in self.peers.values():
                if self._is_up(p, now):
                    new = "up"
                elif p.stopped:
                    new = "stopped"
                elif p.state == "up" and not p.refused and now < self.grace_until:
                    new = "up"
                elif p.refused or p.heard is not None or now - p.found >= self.cfg.timeout:
                    new = "down"
                else:
                    new = "joining"
                if new != p.state:
                    changes.append((p, p.state, new))
                    p.state = new
        return changes

    def _read_leaves(self, now: float) -> None:
        """A peer that went quiet may have left cleanly: ``node stop`` marks its record before it
        closes its links, so the record is read again before the silence is taken for a failure."""
        with self.lock:
            quiet = [p for p in self.peers.values() if p.state == "up" and not p.stopped and not self._is_up(p, now)]
        for p in quiet:
            rec = self.store.get(f"nodes/{p.name}")
            info = json.loads(rec.value) if rec is not None else {}
            if info.get("stopped") and info.get("incarnation") == p.meta.get("incarnation"):
                with self.lock:
                    p.stopped = True

    # -- the monitor: election, deposition, primary duties ---------------------------------------

    def _monitor_loop(self) -> None:
        while not self.stopping.is_set():
            self.wake.wait(min(0.1, self.cfg.interval / 5))
            self.wake.clear()
            if self.stopping.is_set():
                return
            self._duty("monitor", self._monitor_round)

    def _monitor_round(self) -> None:
        for p, old, new in self._update_states():
            log.info("peer %s: %s -> %s", p.name, old, new)
            if old == "up" and new == "down":
                self._ffdc_queue.put(("heartbeat_loss", f"no keep-alive from {p.name}", None))
        self.primary = election.current(self.store)
        self._check_deposed()
        if self.me is None:
            self._maybe_elect()
        if self.me is not None and time.monotonic() - self.last_duties >= self.cfg.interval / 4:
            self.last_duties = time.monotonic()
            self._primary_duties()

    def _check_deposed(self) -> None:
        if self.me is not None and self.primary.revision != self.me.revision:
            log.warning("deposed: my epoch %d is over; the primary is %s at epoch %d",
                        self.me.epoch, self.primary.node or "none", self.primary.epoch)
            with self.lock:
                if self.notifier:
                    self.notifier.stop()
                    self.notifier = None
                self.me = None

    def _primary_up(self) -> bool:
        node = self.primary.node
        if node is None:
            return False
        if node == self.name:
            return False  # a record naming me that I do not hold: a previous incarnation of me
        p = self.peers.get(node)
        if p is not None and (p.refused or p.stopped):
            return False  # its process is gone, or it left
        if p is not None and p.state == "up":
            return True
        # Not heard from (not yet, or not within the timeout): its lease in the store decides, so
        # a node that has just started, or was starved of CPU, never deposes a primary that is
        # still renewing its lease. A hung primary loses the lease after the same timeout.
        return self.store.get(f"alive/{node}") is not None

    def _eligible(self) -> bool:
        return (not self.stopping.is_set() and self.store.get(f"alive/{self.name}") is not None
                and time.monotonic() - self.lease_renewed < self.cfg.timeout)

    def _maybe_elect(self) -> None:
        if self._primary_up():
            self.need_since = None
            return
        now = time.monotonic()
        if self.need_since is None:
            self.need_since = now
        with self.lock:
            up = sorted([self.name] + [p.name for p in self.peers.values() if p.state == "up"])
        if now - self.need_since < up.index(self.name) * self.cfg.interval / 10 or not self._eligible():
            return
        election.break_lock(self.store, lambda holder: holder != self.name and (
            holder not in self.peers or self.peers[holder].state == "down"))
        won = election.elect(self.store, self.name, self.address, self.primary, self.lease)
        if won is None:
            return
        previous = self.primary
        with self.lock:
            self.me = self.primary = won
            self.notifier = Notifier(self.events)
        self.need_since = None
        log.info("elected primary at epoch %d (previous: %s at epoch %d)", won.epoch, previous.node, previous.epoch)
        self.publish("primary_elected", {"node": self.name, "epoch": won.epoch, "previous": previous.node})
        self._tell_peers({"op": "elected", "node": self.name, "epoch": won.epoch})

    def _primary_duties(self) -> None:
        """Membership records and fault captures; each membership write is fenced by my epoch."""
        me = self.me
        if me is None:
            return
        states = {self.name: "up"}
        with self.lock:
            states.update({p.name: p.state for p in self.peers.values() if p.state != "joining"})
        try:
            for name, state in states.items():
                key = f"members/{name}"
                rec = self.store.get(key)
                old = json.loads(rec.value)["state"] if rec else None
                if old == state:
                    continue
                election.fenced(self.store, me, {key: json.dumps(
                    {"state": state, "since": time.time(), "epoch": me.epoch}).encode()})
                kind = {"up": "node_up", "down": "node_down", "stopped": "node_left"}[state]
                self.publish(kind, {"node": name, "previous": old, "epoch": me.epoch})
        except Deposed as e:
            self.refused_writes += 1
            log.warning("%s", e)
            self.wake.set()
            return
        self.moves.failover(me, states)
        for fault in take_faults(self.pool_path):
            self._ffdc_queue.put((fault.get("condition", "io_error"), json.dumps(fault.get("detail"), default=str), None))
        if self.events.head() - self.events.oldest() >= self.cfg.event_keep + 1000:
            self.events.prune(self.cfg.event_keep)

    def publish(self, kind: str, data: dict[str, Any]) -> int | None:
        try:
            seq = self.events.publish(kind, data, node=self.name)
        except OSError as e:
            log.error("could not publish %s: %s", kind, e)
            return None
        if self.notifier:
            self.notifier.wake()
        return seq

    # -- views ---------------------------------------------------------------------------------

    def _confirmed(self) -> tuple[Primary, Primary | None]:
        """(the primary record now, my election if the record is still mine). A reply that claims
        the primary role is checked against the store when it is made: a primary stopped past its
        lease and then continued would otherwise answer as primary until its monitor's next round."""
        now, me = election.current(self.store), self.me
        if me is not None and now.revision != me.revision:
            self.wake.set()  # the monitor steps down
            me = None
        return now, me

    def view(self) -> dict[str, Any]:
        record, me = self._confirmed()
        now = time.monotonic()
        with self.lock:
            peers = {p.name: {"state": p.state, "address": p.address,
                              "last_heard_s": None if p.heard is None else round(now - p.heard, 3)}
                     for p in self.peers.values()}
        return {"node": self.name, "address": self.address, "cec": self.cec, "pid": os.getpid(),
                "role": "primary" if me else "member", "primary": record.node,
                "epoch": record.epoch, "time": time.time(), "peers": peers,
                "ffdc_seen": self.ffdc_seen[-20:], "refused_writes": self.refused_writes,
                "event_head": self.events.head() if me else None,
                "door": None if self.doorman is None else {"waiting": len(self.doorman.waiting),
                                                           "dropped": self.doorman.dropped},
                "store_member": self.store.where().get("member")}

    def _write_view(self) -> None:
        self.store.put(f"views/{self.name}", json.dumps(self.view()).encode())

    # -- FFDC ----------------------------------------------------------------------------------

    def _ffdc_loop(self) -> None:
        while True:
            condition, reason, exc = self._ffdc_queue.get()
            self._duty("ffdc", functools.partial(self.capture, condition, reason, exc))

    def capture(self, condition: str, reason: str = "", exc: BaseException | None = None) -> str | None:
        """Capture FFDC here; tell every other node and the callers. None when rate-limited."""
        try:
            bid = ffdc.capture(self.pool_path, self.store, self.cfg, node=self.name, condition=condition,
                               reason=reason, log_lines=list(self.ring.lines), state=self.view(), exc=exc)
        except (OSError, BlockstoreError) as e:
            log.error("FFDC capture for %s failed: %s", condition, e)
            return None
        if bid is None:
            log.info("FFDC for %s rate-limited (%s)", condition, reason)
            return None
        log.warning("FFDC %s captured: %s %s", bid, condition, reason)
        self._tell_peers({"op": "ffdc", "id": bid, "node": self.name, "condition": condition})
        self.publish("ffdc_captured", {"id": bid, "node": self.name, "condition": condition, "reason": reason})
        return bid

    def _thread_crashed(self, args: threading.ExceptHookArgs) -> None:
        if self.stopping.is_set():
            return  # the store is closing under the threads as the node leaves
        log.error("unhandled %s in thread %s: %s", args.exc_type.__name__,
                  args.thread.name if args.thread else "?", args.exc_value)
        if args.exc_value is not None:
            self._ffdc_queue.put(("exception", f"{args.exc_type.__name__} in thread "
                                  f"{args.thread.name if args.thread else '?'}", args.exc_value))

    # -- the listener --------------------------------------------------------------------------

    def _authorize(self, first: dict[str, Any]) -> None:
        """The doorman's check of a first line: the node key allows every op, the callers' token
        all but the nodes' own."""
        token = str(first.get("token", "")).encode()
        if hmac.compare_digest(token, self.key.encode()):
            return
        if not hmac.compare_digest(token, self.token):
            raise ProtocolError("bad token")
        if first.get("op") in NODE_OPS:
            raise ProtocolError(f"op {first.get('op')!r} takes the node key, not the callers' token")

    def _serve(self, conn: socket.socket, first: dict[str, Any], reader: LineReader) -> None:
        """One authorized connection (the doorman has checked its first line)."""
        handed_over = False
        try:
            conn.settimeout(5.0)
            op = first.get("op")
            if op == "hello":
                name = self._check_peer(first)
                conn.settimeout(None)
                self._peer_link(name, reader)
            elif op == "notice":
                self._notice(first)
            elif op == "register":
                handed_over = self._register_caller(conn, first)
            elif op == "status":
                conn.sendall(encode(self.view()))
            elif op == "ffdc":
                reason = str(first.get("reason", ""))[:4096]
                bid = self.capture("manual", reason)
                conn.sendall(encode({"ok": True, "id": bid}))
            elif op == "stop":
                conn.sendall(encode({"ok": True}))
                self.stop()
            elif op == "assign":
                conn.sendall(encode(self._assign(first)))
            elif op == "let_go":
                self.let_go_here(str(first.get("lu", "")))
                conn.sendall(encode({"ok": True}))
            else:
                raise ProtocolError(f"unknown op {op!r}")
        except (ProtocolError, BlockstoreError, Gone) as e:
            reply: dict[str, Any] = {"error": str(e)}
            if isinstance(e, Gone):
                reply = {"error": "gone", "detail": str(e), "resync": True}
            try:
                conn.sendall(encode(reply))
            except OSError:
                pass
        except OSError:
            pass
        finally:
            if not handed_over:
                conn.close()

    def _assign(self, req: dict[str, Any]) -> dict[str, Any]:
        """As the primary, give an LU an owner (moves.py). Not the primary: the reply names the
        one that is."""
        now, me = self._confirmed()
        if me is None:
            return {"error": "not primary", "primary": now.node, "address": now.address}
        return {"ok": True, **self.moves.assign(me, str(req.get("lu", "")), str(req.get("node") or ""))}

    def let_go_here(self, lu: str) -> None:
        """As the owner: have this node's mount flush and release ``lu`` (none: nothing to do)."""
        child = self.mount.process() if self.mount else None
        if child is not None:
            from .. import control
            control.ask(self.pool_path, child["pid"], {"op": "let_go", "lu": lu}, timeout=2 * self.cfg.timeout + 5)

    # -- what the primary's moves (moves.py) ask of the node -------------------------------------

    def states(self) -> dict[str, str]:
        """Every node known and its state in my view (me: up; joining ones too)."""
        with self.lock:
            return {self.name: "up", **{p.name: p.state for p in self.peers.values()}}

    def up_nodes(self) -> dict[str, str | None]:
        """The nodes up in my view (me included), each with its CEC."""
        with self.lock:
            return {self.name: self.cec, **{p.name: p.meta.get("cec") for p in self.peers.values() if p.state == "up"}}

    def cecs(self) -> dict[str, str | None]:
        """Each known node's CEC (None: it names none)."""
        with self.lock:
            return {self.name: self.cec, **{p.name: p.meta.get("cec") for p in self.peers.values()}}

    def refused(self, e: Deposed) -> None:
        """A write of mine as primary was refused: I was deposed; the monitor steps down."""
        self.refused_writes += 1
        log.warning("%s", e)
        self.wake.set()

    def _check_peer(self, hello: dict[str, Any]) -> str:
        """A keep-alive link speaks for the process the store has registered under its name now:
        a stale incarnation (a process that was replaced) or a name that is not a live node
        is refused."""
        name = str(hello.get("node"))
        rec = self.store.get(f"nodes/{name}")
        info = json.loads(rec.value) if rec is not None else {}
        if name == self.name or info.get("stopped", True) or info.get("incarnation") != hello.get("incarnation"):
            raise ProtocolError(f"{name!r} is not a running node of this cluster (or not this incarnation of it)")
        return name

    def _notice(self, msg: dict[str, Any]) -> None:
        """A one-off message from the administrator's commands (today: an FFDC they captured)."""
        if msg.get("what") == "ffdc":
            self._seen_ffdc(msg)

    def _seen_ffdc(self, msg: dict[str, Any]) -> None:
        self.ffdc_seen.append({"id": msg.get("id"), "node": msg.get("node"), "condition": msg.get("condition")})
        log.warning("peer %s captured FFDC %s (%s)", msg.get("node"), msg.get("id"), msg.get("condition"))

    def _peer_link(self, name: str, reader: LineReader) -> None:
        try:
            while True:
                msg = reader.read_json()
                if msg is None:
                    break
                op = msg.get("op")
                if op == "hb":
                    self._heard(name)
                elif op == "elected":
                    self._heard(name)
                    self.wake.set()
                elif op == "ffdc":
                    self._seen_ffdc(msg)
        except (ProtocolError, OSError):
            pass
        if not self.stopping.is_set():
            self._link_lost(name)

    def _register_caller(self, conn: socket.socket, req: dict[str, Any]) -> bool:
        record, me = self._confirmed()
        with self.lock:
            notifier = self.notifier
        if notifier is None or me is None:
            conn.sendall(encode({"error": "not primary", "primary": record.node,
                                 "address": record.address, "epoch": record.epoch}))
            return False
        kinds = check_kinds(req.get("kinds", ["*"]))
        since = req.get("since", 0)
        if not isinstance(since, int) or isinstance(since, bool) or since < 0:
            raise InvalidArgument("since must be a sequence number (an integer >= 0)")
        head = self.events.head()
        if since > head:
            raise InvalidArgument(f"since {since} is past the last event ({head})")
        if since + 1 < self.events.oldest():
            raise Gone(f"events after {since} were pruned (the oldest kept is {self.events.oldest()})")
        conn.sendall(encode({"ok": True, "node": self.name, "epoch": me.epoch, "head": head}))
        notifier.add_caller(conn, kinds, since)
        return True
