"""``blockstore cluster|node|ffdc ...``: the cluster of node processes, a thin adapter over
blockstore.cluster."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ..cluster import admin, config, ffdc
from ..cluster.events import DAMAGED, EventLog
from ..errors import InvalidArgument
from .args import UsageError, command, group, on_fence
from .output import done, emit, fields, when


def add(top: Any) -> None:
    cl = group(top, "cluster", "the cluster of node processes that watch each other and elect a primary")
    c = command(cl, "create", "make the pool's cluster", "cluster create prod --interval 0.5", json=True)
    c.add_argument("name", help="the cluster's name")
    c.add_argument("--interval", type=float, default=1.0, help="seconds between keep-alives")
    c.add_argument("--misses", type=int, default=3, help="keep-alives missed before a node is down")
    c.add_argument("--store", metavar="etcd://HOST:PORT[,...]",
                   help="keep the cluster's records in etcd there (default: the pool's embedded store)")
    c.add_argument("--fence-agent", default="", metavar="CMD",
                   help="the command run with a failed node's name before its LUs move (exit 0: it can no longer "
                        "write); default: on this machine, stop its processes and wait for them to end")
    c = command(cl, "status", "OK/DEGRADED/DOWN, each node, the primary and epoch; exit 0 OK, 3 degraded, 4 down",
                "cluster status", json=True)
    c.add_argument("--names", action="store_true", help=argparse.SUPPRESS)  # one per line: shell completion
    e = command(cl, "events", "the event log (--follow: live, through the primary)",
                "cluster events --follow --kind node_down", json=True)
    e.add_argument("--since", type=int, default=0, metavar="SEQ", help="events after SEQ (default: all kept)")
    e.add_argument("--follow", action="store_true", help="keep printing new events")
    e.add_argument("--kind", action="append", help="only this kind; repeat for more")

    nd = group(top, "node", "node processes")
    s = command(nd, "start", "start a node (a daemon unless --foreground); it joins the cluster",
                "node start n1", "node start n2 --listen 127.0.0.1:7001 --cec cec1", json=True)
    s.add_argument("name", nargs="?", help="the node's name")
    s.add_argument("--name", dest="name_opt", metavar="NAME", help=argparse.SUPPRESS)
    s.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any free port)")
    s.add_argument("--cec", help="the CEC (physical server) it runs on")
    s.add_argument("--mount", metavar="DIR",
                   help="serve the pool's LUs at DIR: the LUs the node owns read-write, the others read-only "
                        "through their redundant copy (a FUSE mount the node runs)")
    s.add_argument("--nbd", metavar="HOST:PORT",
                   help="with --mount, also export the node's LUs over NBD there (nbdkit; export name: the LU's "
                        "name; read-only where the node does not own the LU)")
    on_fence(s, "--mount")
    s.add_argument("--store", metavar="etcd://HOST:PORT[,...]",
                   help="reach the cluster's etcd at these endpoints, not those the pool records (the members "
                        "near this node)")
    s.add_argument("--foreground", action="store_true", help="stay attached (logs to stderr)")
    s.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus figures at http://HOST:PORT/metrics: the primary, epoch and each "
                        "node's state, the pool's space (default: off)")
    s = command(nd, "stop", "stop a node: it leaves cleanly (a primary resigns first)", "node stop n1", json=True)
    s.add_argument("name", nargs="?", help="the node's name")
    s.add_argument("--name", dest="name_opt", metavar="NAME", help=argparse.SUPPRESS)

    fd = group(top, "ffdc", "first-failure data capture: bundles of logs and state taken when something fails")
    c = command(fd, "capture", "capture a bundle now", "ffdc capture --node n1 --reason 'slow writes'", json=True)
    c.add_argument("--node", help="on this running node (default: here, from this command)")
    c.add_argument("--reason", default="", help="why")
    command(fd, "list", "the bundles in the repository", "ffdc list", json=True)
    c = command(fd, "show", "one bundle: its manifest and files", "ffdc show 20261202T120000-n1-heartbeat_loss",
                json=True)
    c.add_argument("id", help="the bundle's id (ffdc list)")


def _node_name(args: argparse.Namespace) -> str:
    """``node start|stop NAME`` (``--name NAME`` is still taken)."""
    name = args.name or args.name_opt
    if not name:
        raise UsageError(f"blockstore node {args.cmd}: give the node's name: blockstore node {args.cmd} NAME")
    return str(name)


def _status_text(st: dict[str, Any]) -> str:
    store = st["store"]
    where = store["path"] if store["backend"] == "embedded" else \
        f"{store['endpoints']} (this command: {store['member']})"
    if store["health"] != "ok":
        return f"cluster: DOWN  store {store['backend']} at {where}: {store['health']}"
    lines = [f"cluster {st['cluster']}: {st['state']}  primary {st['primary'] or '-'}  epoch {st['epoch']}"
             f"  (keep-alive {st['interval']}s, down after {st['misses']} misses)",
             f"  store {store['backend']} at {where}, {store['health']}"]
    for n in st["nodes"]:
        seen = "-" if n["last_seen_s"] is None else f"{n['last_seen_s']:.1f}s ago"
        view = n["view"]
        lines.append(f"  {n['name']:<16} {n['state']:<8} {n['role']:<8} {n['address']:<22} last seen {seen:<10}"
                     f" sees primary {view['primary'] or '-'} epoch {view['epoch'] if view['epoch'] is not None else '-'}"
                     f"  owns {len(n['lus'])} LU(s)"
                     + (f"  serves at {n['mount']}" if n.get("mount") else "")
                     + (f" and nbd://{n['nbd']}" if n.get("nbd") else "")
                     + (f"  store member {n['store_member']}" if n.get("store_member") else ""))
    return "\n".join(lines)


def _event_text(ev: dict[str, Any]) -> str:
    data = fields(ev["data"])
    return f"{ev['seq']:>8} {when(ev['time'])} {ev['kind']:<18} {ev['node'] or '-'}  {data}"


def run(args: argparse.Namespace) -> int:
    pool = args.pool
    out = emit
    cmd = (args.group, args.cmd)
    if cmd == ("cluster", "create"):
        cfg = config.create(pool, args.name, interval=args.interval, misses=args.misses,
                            fence_agent=args.fence_agent, store_url=args.store)
        done(args, {"name": cfg.name, "interval": cfg.interval, "misses": cfg.misses,
                    "token_file": config.token_path(pool)},
            f"created cluster {cfg.name} (keep-alive every {cfg.interval}s, down after {cfg.misses} misses); "
            f"callers' token in {config.token_path(pool)}")
    elif cmd == ("cluster", "status"):
        st = admin.status(pool)
        if args.names:
            print("\n".join(n["name"] for n in st["nodes"]))
            return 0
        out(args, st, _status_text(st))
        return 0 if st["state"] == "OK" else 3 if st["state"] == "DEGRADED" else 4
    elif cmd == ("cluster", "events"):
        return _events(args, pool)
    elif cmd == ("node", "start"):
        name = _node_name(args)
        if args.store:
            from ..cluster.etcd import parse_endpoints
            parse_endpoints(args.store)
            if config.store_where(pool) is None:
                raise UsageError("node start --store: the pool's cluster keeps its records in its embedded store")
            os.environ[config.STORE_ENV] = args.store  # the node and its children reach etcd there
        rec = admin.start_node(pool, name, listen=args.listen, cec=args.cec, foreground=args.foreground,
                               metrics=args.metrics, mount=args.mount, hold=args.on_fence == "hold",
                               nbd=args.nbd)
        if not args.foreground:
            done(args, rec, f"node {rec['name']} started (pid {rec['pid']}, listening on {rec['address']}); "
                            f"log {admin.log_path(pool, name)}")
    elif cmd == ("node", "stop"):
        name = _node_name(args)
        admin.stop_node(pool, name)
        done(args, {"name": name, "stopped": True}, f"node {name} stopped")
    elif cmd == ("ffdc", "capture"):
        bid = admin.ask_ffdc(pool, args.node, args.reason) if args.node else _capture_here(pool, args.reason)
        done(args, {"id": bid}, f"captured {bid}")
    elif cmd == ("ffdc", "list"):
        rows = ffdc.list_bundles(pool)
        out(args, rows, "\n".join(f"{r['id']}  {r['condition'] or '?':<18} {r['bytes']:>8} B  {r['reason']}"
                                  for r in rows) or "no FFDC bundles")
    elif cmd == ("ffdc", "show"):
        b = ffdc.show(pool, args.id)
        text = [f"{k:<10} {b[k]}" for k in ("id", "node", "condition", "reason")] + [f"time       {when(b['time'])}"]
        for name, body in sorted(b["contents"].items()):
            tail = body.rstrip().splitlines()[-15:]
            text += [f"--- {name} ({len(body)} bytes{', last 15 lines' if len(tail) == 15 else ''})", *tail]
        out(args, b, "\n".join(text))
    return 0


def _capture_here(pool: str, reason: str) -> str:
    """FFDC from this command's process; the nodes and callers are told like for a node's own."""
    from ..cluster.protocol import tell
    store = config.open_store(pool)
    try:
        cfg = config.load_config(store, pool)
        bid = ffdc.capture(pool, store, cfg, node="cli", condition="manual", reason=reason)
        nodes = [json.loads(e.value) for _, e in store.range("nodes/")]
    finally:
        store.close()
    assert bid is not None  # manual captures are never rate-limited
    EventLog(pool).publish("ffdc_captured", {"id": bid, "node": "cli", "condition": "manual", "reason": reason},
                           node="cli")
    key = config.read_key(pool)
    for n in nodes:
        if not n.get("stopped"):
            tell(n["address"], key, {"what": "ffdc", "id": bid, "node": "cli", "condition": "manual"})
    return bid


def _events(args: argparse.Namespace, pool: str) -> int:
    from ..cluster.events import check_kinds
    config.require(pool)
    kinds = check_kinds(args.kind) if args.kind else None
    if args.since < 0:
        raise InvalidArgument("--since takes a sequence number >= 0")

    def show(ev: dict[str, Any]) -> None:
        if kinds is None or ev["kind"] in kinds or ev["kind"] == DAMAGED:
            print(json.dumps(ev, sort_keys=True) if args.json else _event_text(ev), flush=True)
    evs = EventLog(pool).events(args.since)
    if not args.follow:
        if args.json:
            print(json.dumps([e for e in evs if kinds is None or e["kind"] in kinds or e["kind"] == DAMAGED],
                             indent=2, sort_keys=True))
        else:
            for ev in evs:
                show(ev)
        damaged = [e for e in evs if e["kind"] == DAMAGED]
        for ev in damaged:
            print(f"blockstore: event {ev['seq']}: {ev['data']['file']} is {ev['data']['why']}; skipped",
                  file=sys.stderr)
        return 4 if damaged else 0
    # the backlog first, from the pool, whether or not a primary is up to send what follows
    for ev in evs:
        show(ev)
    since = max([args.since] + [e["seq"] for e in evs])
    from ..cluster import election
    from ..cluster.client import EventClient
    store = config.open_store(pool)
    try:
        up = election.live(store) is not None
    finally:
        store.close()
    if not up:
        print(f"blockstore: no primary is up; waiting for one to follow events after {since} "
              f"(start a node: blockstore node start NAME)", file=sys.stderr, flush=True)
    for ev in EventClient(pool, kinds=args.kind, since=since, wait=float("inf")):
        show(ev)
    return 0
