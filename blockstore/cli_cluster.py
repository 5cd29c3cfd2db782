"""The ``cluster``, ``node`` and ``ffdc`` commands: a thin adapter over blockstore.cluster."""
from __future__ import annotations

import argparse
import datetime
import json
from typing import Any

from .cluster import admin, config, ffdc
from .cluster.events import EventLog
from .errors import InvalidArgument


def add_parsers(top: Any, json_flag: Any) -> None:
    cl = top.add_parser("cluster", help="the cluster of node processes").add_subparsers(dest="cmd", required=True)
    c = cl.add_parser("create", help="make the pool's cluster")
    c.add_argument("name")
    c.add_argument("--interval", type=float, default=1.0, help="seconds between keep-alives (default 1)")
    c.add_argument("--misses", type=int, default=3, help="keep-alives missed before a node is down (default 3)")
    json_flag(c)
    json_flag(cl.add_parser("status", help="OK/DEGRADED/DOWN, each node, the primary and epoch"))
    e = cl.add_parser("events", help="the event log (--follow: live, through the primary)")
    e.add_argument("--since", type=int, default=0, metavar="SEQ", help="events after SEQ (default: all kept)")
    e.add_argument("--follow", action="store_true", help="keep printing new events")
    e.add_argument("--kind", action="append", help="only this kind; repeat for more")
    json_flag(e)

    nd = top.add_parser("node", help="node processes").add_subparsers(dest="cmd", required=True)
    s = nd.add_parser("start", help="start a node (a daemon unless --foreground)")
    s.add_argument("--name", required=True)
    s.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (default: loopback, any free port)")
    s.add_argument("--cec", help="the CEC (physical server) it runs on")
    s.add_argument("--foreground", action="store_true")
    json_flag(s)
    nd.add_parser("stop", help="stop a node (a primary resigns first)").add_argument("name")

    fd = top.add_parser("ffdc", help="first-failure data capture bundles").add_subparsers(dest="cmd", required=True)
    c = fd.add_parser("capture", help="capture a bundle now")
    c.add_argument("--node", help="on this running node (default: here, from this command)")
    c.add_argument("--reason", default="", help="why")
    json_flag(fd.add_parser("list", help="the bundles in the repository"))
    c = fd.add_parser("show", help="one bundle: its manifest and files")
    c.add_argument("id")
    json_flag(c)


def _when(t: float | None) -> str:
    return "-" if t is None else datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _status_text(st: dict[str, Any]) -> str:
    lines = [f"cluster {st['cluster']}: {st['state']}  primary {st['primary'] or '-'}  epoch {st['epoch']}"
             f"  (keep-alive {st['interval']}s, down after {st['misses']} misses)"]
    for n in st["nodes"]:
        seen = "-" if n["last_seen_s"] is None else f"{n['last_seen_s']:.1f}s ago"
        view = n["view"]
        lines.append(f"  {n['name']:<16} {n['state']:<8} {n['role']:<8} {n['address']:<22} last seen {seen:<10}"
                     f" sees primary {view['primary'] or '-'} epoch {view['epoch'] if view['epoch'] is not None else '-'}")
    return "\n".join(lines)


def _event_text(ev: dict[str, Any]) -> str:
    data = " ".join(f"{k}={v}" for k, v in ev["data"].items())
    return f"{ev['seq']:>8} {_when(ev['time'])} {ev['kind']:<18} {ev['node'] or '-'}  {data}"


def run(args: argparse.Namespace, out: Any) -> int:
    """``out(args, obj, human_text)`` prints either JSON or the text."""
    pool = args.pool
    cmd = (args.group, args.cmd)
    if cmd == ("cluster", "create"):
        cfg = config.create(pool, args.name, interval=args.interval, misses=args.misses)
        out(args, {"name": cfg.name, "interval": cfg.interval, "misses": cfg.misses,
                   "token_file": config.token_path(pool)},
            f"created cluster {cfg.name} (keep-alive every {cfg.interval}s, down after {cfg.misses} misses); "
            f"callers' token in {config.token_path(pool)}")
    elif cmd == ("cluster", "status"):
        st = admin.status(pool)
        out(args, st, _status_text(st))
        return 0 if st["state"] == "OK" else 3 if st["state"] == "DEGRADED" else 4
    elif cmd == ("cluster", "events"):
        return _events(args, pool)
    elif cmd == ("node", "start"):
        rec = admin.start_node(pool, args.name, listen=args.listen, cec=args.cec, foreground=args.foreground)
        if not args.foreground:
            out(args, rec, f"node {rec['name']} started (pid {rec['pid']}, listening on {rec['address']}); "
                           f"log {admin.log_path(pool, args.name)}")
    elif cmd == ("node", "stop"):
        admin.stop_node(pool, args.name)
        print(f"node {args.name} stopped")
    elif cmd == ("ffdc", "capture"):
        bid = admin.ask_ffdc(pool, args.node, args.reason) if args.node else _capture_here(pool, args.reason)
        print(f"captured {bid}")
    elif cmd == ("ffdc", "list"):
        rows = ffdc.list_bundles(pool)
        out(args, rows, "\n".join(f"{r['id']}  {r['condition'] or '?':<18} {r['bytes']:>8} B  {r['reason']}"
                                  for r in rows) or "no FFDC bundles")
    elif cmd == ("ffdc", "show"):
        b = ffdc.show(pool, args.id)
        text = [f"{k:<10} {b[k]}" for k in ("id", "node", "condition", "reason")] + [f"time       {_when(b['time'])}"]
        for name, body in sorted(b["contents"].items()):
            tail = body.rstrip().splitlines()[-15:]
            text += [f"--- {name} ({len(body)} bytes{', last 15 lines' if len(tail) == 15 else ''})", *tail]
        out(args, b, "\n".join(text))
    return 0


def _capture_here(pool: str, reason: str) -> str:
    """FFDC from this command's process; the nodes and callers are told like for a node's own."""
    from .cluster.protocol import tell
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
    from .cluster.events import check_kinds
    config.require(pool)
    kinds = check_kinds(args.kind) if args.kind else None
    if args.since < 0:
        raise InvalidArgument("--since takes a sequence number >= 0")

    def show(ev: dict[str, Any]) -> None:
        if kinds is None or ev["kind"] in kinds:
            print(json.dumps(ev, sort_keys=True) if args.json else _event_text(ev), flush=True)
    if not args.follow:
        evs = EventLog(pool).events(args.since)
        if args.json:
            print(json.dumps([e for e in evs if kinds is None or e["kind"] in kinds], indent=2, sort_keys=True))
        else:
            for ev in evs:
                show(ev)
        return 0
    from .cluster.client import EventClient
    for ev in EventClient(pool, kinds=args.kind, since=args.since):
        show(ev)
    return 0
