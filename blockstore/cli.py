"""The ``blockstore`` command: a thin adapter over the Python API.

Exit codes: 0 success; 1 a refused request (one line on stderr, the pool unchanged); 2 a usage
error; ``pool check`` adds 3 (leaks only) and 4 (corruption), see check.py.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import stat
import sys
import tempfile
import time
from typing import Any, BinaryIO

from . import __version__
from .check import check
from .cluster.bridge import attach
from .errors import AlreadyExists, BlockstoreError, InvalidArgument, PoolCorrupt
from .names import split_snapshot
from .pool import Pool
from .progress import Progress
from .sizes import format_size, parse_size
from .transfer import export_file, export_stream, import_file, import_stream

STDIN_STEP = 1 << 20


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except InvalidArgument as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _offset(text: str) -> int:
    try:
        return parse_size(text, what="offset", allow_zero=True)
    except InvalidArgument as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _fraction(text: str) -> float:
    """``0.8`` or ``80%``: a bare number is a fraction, so ``1.5`` is refused, not read as 1.5%."""
    try:
        v = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a fraction or percentage: {text!r}") from None
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction in (0, 1] or a percentage in (0%, 100%]")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="blockstore", description="Thin-provisioned virtual block storage.")
    p.add_argument("--pool", default=os.environ.get("BLOCKSTORE_POOL"),
                   help="pool directory (default: $BLOCKSTORE_POOL)")
    p.add_argument("--version", action="version", version=f"blockstore {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars, no line saying what a change did")
    p.add_argument("--json", action="store_true", help="print results as JSON (changes: the object made or changed)")
    top = p.add_subparsers(dest="group", required=True, parser_class=_Parser)

    pool = top.add_parser("pool", help="create and inspect the pool").add_subparsers(dest="cmd", required=True)
    c = pool.add_parser("create", help="make a new pool")
    c.add_argument("--size", type=_size, required=True)
    c.add_argument("--extent-size", type=_size, default=1 << 20)
    c.add_argument("--threshold", type=_fraction, default=0.8, help="warn when this much is allocated (0.8 or 80%%)")
    c.add_argument("--mirror-dir", help="a second failure group for mirrored LUs (ideally another disk)")
    c.add_argument("--json", action="store_true")
    pool.add_parser("status", help="capacity, use, overcommit").add_argument("--json", action="store_true")
    g = pool.add_parser("grow", help="grow the pool")
    g.add_argument("--size", type=_size, required=True)
    t = pool.add_parser("set", help="change a pool setting")
    t.add_argument("--threshold", type=_fraction, required=True)
    fgp = pool.add_parser("failgrp", help="failure groups").add_subparsers(dest="sub", required=True)
    fgp.add_parser("add", help="add the second failure group").add_argument("dir")
    fgp.add_parser("list", help="the failure groups and their state").add_argument("--json", action="store_true")
    r = fgp.add_parser("replace", help="rebuild a lost or foreign copy from the other one, then verify it")
    r.add_argument("dir", nargs="?", help="where the new copy goes (default: where the old one was)")
    r.add_argument("--group", dest="fg", type=int, choices=(0, 1), default=1,
                   help="the failure group to rebuild (default 1)")
    r.add_argument("--json", action="store_true")
    k = pool.add_parser("scrub", help="check every block of every mirrored extent against its checksum "
                                      "(exit 0 clean, 4 bad, unrecoverable or undecided blocks left)")
    k.add_argument("--repair", action="store_true")
    k.add_argument("--json", action="store_true")
    k = pool.add_parser("check", help="verify every metadata invariant (exit 0 clean, 3 leaks, 4 corrupt)")
    k.add_argument("--repair", action="store_true")
    k.add_argument("--json", action="store_true")

    lu = top.add_parser("lu", help="logical units").add_subparsers(dest="cmd", required=True)
    c = lu.add_parser("create", help="a new thin LU")
    c.add_argument("name")
    c.add_argument("--size", type=_size, required=True)
    c.add_argument("--thick", action="store_true", help="reserve every extent now")
    c.add_argument("--mirrored", action="store_true", help="keep a redundant copy in the second failure group")
    c.add_argument("--json", action="store_true")
    lu.add_parser("list", help="every LU and snapshot").add_argument("--json", action="store_true")
    s = lu.add_parser("show", help="one LU")
    s.add_argument("name")
    s.add_argument("--json", action="store_true")
    s = lu.add_parser("du", help="space per LU and snapshot: provisioned, used, exclusive, shared (like rbd du)")
    s.add_argument("name", nargs="?", help="one LU and its snapshots (default: all)")
    s.add_argument("--json", action="store_true")
    s = lu.add_parser("status", help="one LU as its holder sees it: who holds it open, handles, bytes written")
    s.add_argument("name")
    s.add_argument("--json", action="store_true")
    r = lu.add_parser("resize", help="grow (or with --force shrink) an LU")
    r.add_argument("name")
    r.add_argument("--size", type=_size, required=True)
    r.add_argument("--force", action="store_true")
    r = lu.add_parser("rm", help="remove an LU or a snapshot (LU@SNAP)")
    r.add_argument("name")
    r.add_argument("--recursive", "-r", action="store_true", help="remove the LU's snapshots too")
    s = lu.add_parser("snapshot", help="a read-only snapshot NAME@SNAP")
    s.add_argument("name")
    s.add_argument("snap")
    s = lu.add_parser("clone", help="a writable copy-on-write clone of NAME or NAME@SNAP")
    s.add_argument("source")
    s.add_argument("new")
    s = lu.add_parser("rollback", help="return NAME to its snapshot SNAP")
    s.add_argument("name")
    s.add_argument("snap")
    lu.add_parser("flatten", help="a clone stops sharing with its parent").add_argument("name")
    lu.add_parser("mirror", help="give an LU a redundant copy").add_argument("name")
    lu.add_parser("unmirror", help="drop an LU's redundant copy").add_argument("name")
    s = lu.add_parser("verify", help="compare an LU's two copies (exit 0 clean, 4 mismatched)")
    s.add_argument("name")
    s.add_argument("--repair", action="store_true")
    s.add_argument("--json", action="store_true")
    lu.add_parser("resync", help="copy what a degraded copy missed").add_argument("name")
    s = lu.add_parser("import", help="a raw image file into a new LU (sparse-aware)")
    s.add_argument("name")
    s.add_argument("file", help="the image; - for stdin (its length sets the LU's size, rounded up to 512)")
    s = lu.add_parser("export", help="an LU out to a sparse raw file")
    s.add_argument("name")
    s.add_argument("file", help="where to write it; - for stdout (holes as zeros)")
    s.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    s = lu.add_parser("rename", help="rename an LU (its snapshots follow)")
    s.add_argument("name")
    s.add_argument("new")
    s = lu.add_parser("write", help="write stdin into an LU at --offset")
    s.add_argument("name")
    s.add_argument("--offset", type=_offset, default=0)
    s = lu.add_parser("diff", help="the byte ranges that changed from NAME@SNAP1 to NAME@SNAP2 (or to NAME "
                                   "now), from the extent maps: no data is read")
    s.add_argument("older", help="NAME@SNAP1")
    s.add_argument("newer", help="NAME@SNAP2, or NAME for the LU as last committed")
    s.add_argument("--json", action="store_true")
    s = lu.add_parser("export-diff", help="write what changed since a snapshot as a stream that import-diff "
                                          "applies (incremental backup)")
    s.add_argument("name", help="NAME@SNAP2 (or NAME)")
    s.add_argument("file", help="where to write the stream; - for stdout")
    s.add_argument("--from", dest="since", required=True, metavar="SNAP1", help="the snapshot the stream starts from")
    s.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    s = lu.add_parser("import-diff", help="apply an export-diff stream to an LU still at its starting snapshot; "
                                          "takes the stream's ending snapshot")
    s.add_argument("name")
    s.add_argument("file", help="the stream; - for stdin")
    s.add_argument("--json", action="store_true")
    s = lu.add_parser("discard", help="give back the space of a byte range (it reads as zeros after): whole "
                                      "extents are unmapped, partial ones zeroed")
    s.add_argument("name")
    s.add_argument("--offset", type=_offset, default=0, help="where the range starts (bytes; 1M etc.; default 0)")
    s.add_argument("--length", type=_offset, default=None, help="bytes (default: to the end of the LU)")
    s.add_argument("--json", action="store_true")
    s = lu.add_parser("read", help="read --length bytes from --offset to stdout")
    s.add_argument("name")
    s.add_argument("--offset", type=_offset, default=0)
    s.add_argument("--length", type=_offset, default=None, help="default: to the end of the LU")

    cec = top.add_parser("cec", help="physical servers (CECs) and their nodes").add_subparsers(dest="cmd", required=True)
    c = cec.add_parser("add", help="record a CEC and its nodes")
    c.add_argument("name")
    c.add_argument("--node", action="append", default=[], help="a node (VIOS) on it; repeat for more")
    cec.add_parser("list", help="the CECs").add_argument("--json", action="store_true")

    pg = top.add_parser("paging", help="paging-file LUs for client partitions").add_subparsers(dest="cmd", required=True)
    c = pg.add_parser("request", help="provision (or grow) a partition's paging LU, with a redundant copy")
    c.add_argument("--lpar", required=True)
    c.add_argument("--min-size", required=True, type=_size)
    c.add_argument("--node")
    c.add_argument("--json", action="store_true")
    pg.add_parser("list", help="paging LUs").add_argument("--json", action="store_true")
    pg.add_parser("release", help="remove a partition's paging LU").add_argument("--lpar", required=True)
    c = pg.add_parser("migrate", help="hand a paging LU to another CEC")
    c.add_argument("--lpar", required=True)
    c.add_argument("--to-cec", required=True)
    c.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the source to let go")
    c.add_argument("--json", action="store_true")

    im = top.add_parser("image", help="captured images").add_subparsers(dest="cmd", required=True)
    c = im.add_parser("import", help="import a directory or tar archive as an image")
    c.add_argument("src")
    c.add_argument("--name", required=True)
    c.add_argument("--json", action="store_true")
    im.add_parser("list", help="images").add_argument("--json", action="store_true")
    c = im.add_parser("show", help="one image and its files")
    c.add_argument("name")
    c.add_argument("--json", action="store_true")
    im.add_parser("rm", help="remove an image").add_argument("name")

    pt = top.add_parser("partition", help="partitions deployed from images").add_subparsers(dest="cmd", required=True)
    c = pt.add_parser("create", help="deploy an image (clones every image LU)")
    c.add_argument("name")
    c.add_argument("--image", required=True)
    c.add_argument("--cec")
    c.add_argument("--json", action="store_true")
    for verb in ("activate", "deactivate", "rm"):
        pt.add_parser(verb).add_argument("name")
    pt.add_parser("list").add_argument("--json", action="store_true")
    c = pt.add_parser("show")
    c.add_argument("name")
    c.add_argument("--json", action="store_true")

    m = top.add_parser("mount", help="mount the pool's LUs as files (FUSE)")
    m.add_argument("mountpoint")
    m.add_argument("--foreground", "-f", action="store_true", help="stay attached (default: a daemon)")
    m.add_argument("--read-only", action="store_true")
    m.add_argument("--allow-other", action="store_true",
                   help="let other users reach the mount (what they may do: --uid, --gid, --mode)")
    m.add_argument("--uid", help="owner of the LU files: a user name or id (default: you)")
    m.add_argument("--gid", help="group of the LU files: a group name or id (default: yours)")
    m.add_argument("--mode", default="0600", help="permission bits of the LU files, octal (default 0600; "
                   "read-only files lose their w bits, directories get x where files have r)")
    m.add_argument("--threads", type=int, default=None, metavar="N",
                   help="serve with up to N threads (default: one per core, 2 at least; 0: one loop)")
    m.add_argument("--no-direct", action="store_true",
                   help="serve every request in Python, not reads and in-place writes in C (slower)")
    m.add_argument("--no-write-map", action="store_true",
                   help="write in place by pwrite only, never by copying large writes into a mapping of the "
                        "data file (slower)")
    u = top.add_parser("umount", help="unmount (flushing everything), also a stale mount; a busy mount is "
                                      "refused, naming what holds it")
    u.add_argument("mountpoint")
    u.add_argument("--lazy", "-l", action="store_true",
                   help="detach a busy mount now; its daemon flushes and exits when the last file closes")

    from .cli_cluster import add_parsers
    add_parsers(top, lambda sub: sub.add_argument("--json", action="store_true"))

    b = top.add_parser("bench", help="measure the engine against a plain file")
    b.add_argument("--quick", action="store_true", help="small sizes, done within a minute")
    b.add_argument("--json", metavar="FILE", help="write the results as JSON")
    b.add_argument("--png", metavar="FILE", help="write a chart (default: beside --json)")
    b.add_argument("--dir", help="where to run (default: a temporary directory under the current one)")
    b.add_argument("--only", metavar="GROUPS",
                   help="comma-separated groups to run: core, mirror, services, cluster, fuse, fuse-mirror, "
                        "first-writes, live (default: all)")
    _everywhere(p, p)
    return p


#: Options accepted before the command or anywhere after it: (flags, what add_argument takes).
GLOBAL_OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("--pool",), {"help": "pool directory (default: $BLOCKSTORE_POOL)"}),
    (("-v", "--verbose"), {"action": "store_true", "help": "log what happens"}),
    (("-q", "--quiet"), {"action": "store_true", "help": "no progress bars, no line saying what a change did"}),
    (("--json",), {"action": "store_true", "help": "print results as JSON"}),
]


def _everywhere(parser: argparse.ArgumentParser, top: argparse.ArgumentParser) -> None:
    """Give every command the global options, so they may follow it as well as precede it. A
    command's own option of the same name (bench --json FILE) stays its own; a global one given
    after the command defaults to nothing there (SUPPRESS), so it never undoes one given before."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        if parser is top:
            return
        taken = {o for a in parser._actions for o in a.option_strings}
        for a in parser._actions:
            if isinstance(a, argparse._StoreTrueAction) and any(a.option_strings == list(f) for f, _ in GLOBAL_OPTIONS):
                a.default = argparse.SUPPRESS  # the command's own --json: given before it counts too
        for flags, kw in GLOBAL_OPTIONS:
            if not taken.intersection(flags):
                parser.add_argument(*flags, **kw, default=argparse.SUPPRESS)
        return
    for sub in subs:
        for child in set(sub.choices.values()):
            _everywhere(child, top)


def _done(args: argparse.Namespace, obj: Any, line: str) -> None:
    """What a change did: ``obj`` as JSON with --json, else ``line`` (nothing with --quiet)."""
    if getattr(args, "json", False):
        print(json.dumps(obj, indent=2, sort_keys=True, default=str))
    elif not getattr(args, "quiet", False):
        print(line)


def _print(args: argparse.Namespace, obj: Any, human: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(obj, indent=2, sort_keys=True))
    else:
        print(human)


def _table(rows: list[dict[str, Any]]) -> str:
    head = ["NAME", "SIZE", "ALLOCATED", "KIND", "PARENT"]
    body = [[r["name"], format_size(r["size"]), format_size(r["allocated"]),
             r["kind"] + (" thick" if r["thick"] else ""), r["parent"] or "-"] for r in rows]
    return _columns(head, body)


def _show_text(info: dict[str, Any]) -> str:
    """``lu show`` for a reader: sizes, dates and states in words."""
    kind = {"snapshot": f"snapshot of {info['parent']}", "clone": f"clone of {info['parent']}"}.get(
        info["kind"], "LU" + (f" (flattened from {info['parent']})" if info.get("parent") else ""))
    mirror = info.get("mirror")
    rows = [("name", info["name"]), ("kind", kind + (", thick" if info.get("thick") else "")),
            ("size", f"{format_size(info['size'])} ({info['size']:,} bytes)"),
            ("allocated", format_size(info["allocated"])),
            ("mirrored", "no" if not info.get("mirrored") else
             f"yes, {mirror['state']}" + (f", {mirror['dirty_extents']} extent(s) to resync" if mirror and
                                          mirror["dirty_extents"] else "") if mirror else "yes"),
            ("created", time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(info["created"]))),
            ("snapshots", ", ".join(info.get("snapshots") or []) or "none"),
            ("clones", ", ".join(info.get("clones") or []) or "none"),
            ("open", "for writing" if info.get("open_for_writing") else "no"),
            ("role", info.get("role") or "-")]
    return "\n".join(f"{k:<10} {v}" for k, v in rows)


def _columns(head: list[str], body: list[list[str]]) -> str:
    """One table helper: left-aligned columns two spaces apart."""
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *body])


def _status_text(s: dict[str, Any]) -> str:
    return "\n".join([
        f"pool        {s['path']}",
        f"capacity    {format_size(s['capacity'])}  (extents of {format_size(s['extent_size'])})",
        f"allocated   {format_size(s['allocated'])}  ({s['used_fraction'] * 100:.1f}% used incl. reserved"
        f"{', OVER THRESHOLD' if s['threshold_exceeded'] else ''}; threshold {s['threshold'] * 100:.0f}%)",
        f"reserved    {format_size(s['reserved'])}",
        f"free        {format_size(s['free'])}",
        f"provisioned {format_size(s['provisioned'])}  (overcommit {s['overcommit']:.2f}x)",
        f"LUs         {s['lus']}  snapshots {s['snapshots']}",
        f"metadata    {format_size(s['metadata_bytes'])}",
    ])


def _progress(label: str, total: int, args: argparse.Namespace | None = None) -> Progress:
    bar = Progress(label, total)
    if args is not None and (getattr(args, "quiet", False) or getattr(args, "json", False)):
        bar.enabled = False
    return bar


def _is_stream(path: str) -> bool:
    """``-`` (stdin or stdout), or a path that is no regular file: a pipe, /dev/stdout."""
    if path == "-":
        return True
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return False


def _bounded_stdin(room: int, name: str) -> BinaryIO:
    """Stdin as a file that holds at most ``room`` bytes, or a refusal before anything is written.

    A pipe's length is unknown until its end, so it is spooled to a temporary file first: a
    write that would run past the LU's end is refused whole instead of half-applied.
    """
    stdin = sys.stdin.buffer
    try:
        st = os.fstat(stdin.fileno())
        regular = stat.S_ISREG(st.st_mode)
    except (OSError, ValueError):
        regular = False
    if regular:
        length = st.st_size - stdin.tell()
        src: BinaryIO = stdin
    else:
        src = tempfile.TemporaryFile()
        length = 0
        while chunk := stdin.read(STDIN_STEP):
            length += len(chunk)
            if length > room:
                break
            src.write(chunk)
        src.seek(0)
    if length > room:
        raise InvalidArgument(f"the data runs past the end of {name} ({room} bytes fit after the offset)")
    return src


def run(args: argparse.Namespace) -> int:
    if args.group == "bench":
        from blockstore_bench.run import main as bench_main
        return bench_main(quick=args.quick, json_path=args.json, png_path=args.png, workdir=args.dir,
                          only=args.only.split(",") if args.only else None)
    if args.group == "umount":
        from blockstore_fuse.mount import umount
        print(umount(args.mountpoint, lazy=args.lazy))
        return 0
    if not args.pool:
        raise UsageError("blockstore: no pool given: use --pool DIR or set BLOCKSTORE_POOL")
    if args.group == "mount":
        from blockstore_fuse.mount import THREADS, mount
        threads = THREADS if args.threads is None else args.threads
        if not 0 <= threads <= 64:
            raise UsageError("blockstore mount: --threads takes 0 to 64")
        mp = mount(args.pool, args.mountpoint, foreground=args.foreground, read_only=args.read_only,
                   allow_other=args.allow_other, threads=threads, direct=not args.no_direct,
                   map_writes=not args.no_write_map, access=_access(args))
        if not args.foreground:
            print(f"mounted {os.path.abspath(args.pool)} at {mp}")
        return 0
    if args.group in ("cluster", "node", "ffdc"):
        from .cli_cluster import run as run_cluster
        return run_cluster(args, _print)
    if args.group == "pool" and args.cmd == "create":
        with Pool.create(args.pool, args.size, extent_size=args.extent_size, threshold=args.threshold,
                         mirror_dir=args.mirror_dir) as pool:
            st = pool.status()
        _print(args, st, f"created pool {st['path']}: {format_size(st['capacity'])} in extents of "
                         f"{format_size(st['extent_size'])}")
        return 0
    with Pool.open(args.pool, readonly=_only_looks(args)) as pool:
        attach(pool, origin="cli")
        return _run_in_pool(args, pool)


#: Commands that only look: the pool is opened read-only for them, so nothing on disk changes
#: (no session file, no recovery, no reclaim); each list/show of a group counts.
LOOKS = {("pool", "status"), ("lu", "export"), ("lu", "read"), ("lu", "status"), ("lu", "diff"), ("lu", "export-diff"),
         ("lu", "du")}


def _only_looks(args: argparse.Namespace) -> bool:
    cmd = (args.group, getattr(args, "cmd", None))
    if cmd == ("pool", "check"):
        return not args.repair
    if cmd == ("pool", "failgrp"):
        return args.sub == "list"
    return cmd in LOOKS or cmd[1] in ("list", "show")


def _run_services(args: argparse.Namespace, pool: Pool) -> int:
    from .services import images, paging
    cmd = (args.group, args.cmd)
    if cmd == ("cec", "add"):
        rec = paging.add_cec(pool, args.name, args.node)
        print(f"CEC {rec['name']}: nodes {', '.join(rec['nodes']) or '-'}")
    elif cmd == ("cec", "list"):
        rows = paging.list_cecs(pool)
        _print(args, rows, "\n".join(f"{r['name']:<16} {', '.join(r['nodes'])}" for r in rows))
    elif cmd == ("paging", "request"):
        r = paging.request(pool, args.lpar, args.min_size, args.node)
        _print(args, r, f"{r['lpar']}: {r['lu']} {format_size(r['size'])} ({r['mirror']}) on {r['cec']}/{r['node']}")
    elif cmd == ("paging", "list"):
        rows = paging.list_paging(pool)
        head = f"{'LPAR':<14} {'LU':<22} {'SIZE':>9} {'ALLOCATED':>10} {'MIRROR':<9} {'CEC/NODE'}"
        _print(args, rows, "\n".join([head] + [
            f"{r['lpar']:<14} {r['lu']:<22} {format_size(r['size']):>9} {format_size(r['allocated']):>10} "
            f"{r['mirror'] or '-':<9} {r['cec']}/{r['node']}" + (f" -> {r['migrating_to']}" if r["migrating_to"] else "")
            for r in rows]))
    elif cmd == ("paging", "release"):
        paging.release(pool, args.lpar)
    elif cmd == ("paging", "migrate"):
        r = paging.migrate(pool, args.lpar, args.to_cec, timeout=args.timeout)
        _print(args, r, f"{r['lpar']} is now served by {r['cec']}/{r['node']}")
    elif cmd == ("image", "import"):
        bar = Progress(f"import {args.name}", 1)
        last = {"file": ""}

        def progress(path: str, done: int, size: int, total_done: int, total: int) -> None:
            if path != last["file"] and bar.enabled:
                sys.stderr.write(f"\r{path}: {format_size(size)}\n")
                last["file"] = path
            bar.total = total
            bar.update(total_done)
        t = time.monotonic()
        info = images.import_image(pool, args.src, args.name, progress)
        bar.close()
        _print(args, info, f"imported {args.name}: {info['files']} file(s), {format_size(info['logical'])} logical, "
                           f"{format_size(info['allocated'])} allocated, {time.monotonic() - t:.2f}s")
    elif cmd == ("image", "list"):
        rows = images.list_images(pool)
        _print(args, rows, "\n".join(f"{r['name']:<20} {r['files']:>3} file(s) {format_size(r['logical']):>10} "
                                      f"{format_size(r['allocated']):>10} allocated  partitions: "
                                      f"{', '.join(r['partitions']) or '-'}" for r in rows))
    elif cmd == ("image", "show"):
        info = images.show(pool, args.name)
        _print(args, info, "\n".join([f"image {info['name']}: {format_size(info['logical'])} logical, "
                                       f"{format_size(info['allocated'])} allocated"] + [
            f"  {f['handle']}  {f['path']:<30} {format_size(f['size']):>10} {f['role']:<6} {f['xxh128']}  {f['lu']}"
            for f in info["file_list"]]))
    elif cmd == ("image", "rm"):
        images.remove_image(pool, args.name)
    elif cmd == ("partition", "create"):
        info = images.create_partition(pool, args.name, args.image, args.cec)
        _print(args, info, f"partition {info['name']} is {info['state']} ({len(info['lus'])} LU(s))")
    elif cmd[0] == "partition" and cmd[1] in ("activate", "deactivate", "rm"):
        fn = {"activate": images.activate, "deactivate": images.deactivate, "rm": images.remove_partition}[cmd[1]]
        fn(pool, args.name)
    elif cmd == ("partition", "list"):
        rows = images.list_partitions(pool)
        _print(args, rows, "\n".join(f"{r['name']:<20} {r['state']:<12} image {r['image']:<16} cec {r['cec'] or '-'}"
                                      for r in rows))
    elif cmd == ("partition", "show"):
        info = images.show_partition(pool, args.name)
        _print(args, info, "\n".join([f"partition {info['name']}: {info['state']}, image {info['image']}, "
                                       f"cec {info['cec'] or '-'}"] + [f"  {x['path']:<30} {x['lu']}" for x in info["lus"]]))
    return 0


def _run_in_pool(args: argparse.Namespace, pool: Pool) -> int:
    cmd = (args.group, args.cmd)
    if args.group in ("cec", "paging", "image", "partition"):
        return _run_services(args, pool)
    if cmd == ("pool", "status"):
        st = pool.status()
        _print(args, st, _status_text(st))
    elif cmd == ("pool", "grow"):
        pool.grow(args.size)
        st = pool.status()
        _done(args, st, f"pool is now {format_size(st['capacity'])}")
    elif cmd == ("pool", "set"):
        pool.set_threshold(args.threshold)
        st = pool.status()
        _done(args, st, f"threshold set to {st['threshold'] * 100:.0f}%")
    elif cmd == ("pool", "check"):
        rep = check(pool, repair=args.repair)
        lines = [f"error: {e}" for e in rep["errors"]] + [f"leak: {e}" for e in rep["leaks"]]
        lines += [f"repaired: {e}" for e in rep["repaired"]]
        if rep.get("reclaimable"):
            lines.append(f"reclaimable: {rep['reclaimable']} extent(s) held by sessions that died "
                         "(the next command that changes the pool returns them)")
        lines += [f"not repaired: {rep['not_repaired']}"] if "not_repaired" in rep else []
        lines.append("clean" if rep["clean"] else f"not clean (code {rep['code']})")
        _print(args, rep, "\n".join(lines))
        return int(rep["code"])
    elif cmd == ("pool", "failgrp"):
        if args.sub == "add":
            pool.add_failure_group(args.dir)
        if args.sub == "replace":
            from .scrub import replace
            bar = _progress(f"rebuild fg{args.fg}", 1)
            rep = replace(pool, args.fg, args.dir,
                          progress=lambda d, n: (setattr(bar, "total", n), bar.update(d)))
            bar.close()
            lines = [f"fg{rep['group']} rebuilt at {rep['path']}: {rep['extents']} extent(s) copied and verified"]
            lines += [f"unrecoverable: extent {e} (bad in the only copy left)" for e in rep["unrecoverable"]]
            if rep["unmirrored_lost"]:
                lines.append(f"lost: {rep['unmirrored_lost']} extent(s) of unmirrored LUs (no other copy; "
                             "they now read as zeros)")
            _print(args, rep, "\n".join(lines))
            return 4 if rep["unrecoverable"] else 0
        rows = pool.failure_groups()
        _print(args, rows, "\n".join(f"fg{r['group']}  {r['state']:<11} {r['dirty_extents']:>6} dirty  {r['path']}"
                                      for r in rows))
    elif cmd == ("pool", "scrub"):
        from .scrub import scrub
        bar = _progress("scrub", 1)
        rep = scrub(pool, repair=args.repair, progress=lambda d, n: (setattr(bar, "total", n), bar.update(d)))
        bar.close()
        lines = [f"scrubbed {rep['extents']} extent(s) in copies {rep['copies']}, {format_size(rep['bytes'])} "
                 f"at {rep['mib_per_s']:.0f} MiB/s"]
        lines += [f"bad: extent {b['extent']} copy {b['copy']} ({b['blocks']} block(s))" for b in rep["bad"]]
        lines += [f"unrecoverable: extent {e} (no copy matches its checksum)" for e in rep["unrecoverable"]]
        lines += [f"undecided: extent {e} (copies differ, no checksum to decide)" for e in rep["undecided"]]
        if rep["in_use"]:
            lines.append(f"not judged: {len(rep['in_use'])} extent(s) open for writing in another process")
        lines.append(f"repaired {rep['repaired']} block(s)" if rep["repaired"] else ("clean" if rep["clean"] else "not clean"))
        _print(args, rep, "\n".join(lines))
        return 0 if rep["clean"] else 4
    elif cmd == ("lu", "mirror"):
        bar = _progress(f"mirror {args.name}", 1)
        n = pool.set_mirrored(args.name, True, progress=lambda d, t: (setattr(bar, "total", t), bar.update(d)))
        bar.close()
        _done(args, pool.lu_info(args.name), f"{args.name} is mirrored ({n} extent(s) copied)")
    elif cmd == ("lu", "unmirror"):
        pool.set_mirrored(args.name, False)
        _done(args, pool.lu_info(args.name), f"{args.name} is no longer mirrored")
    elif cmd == ("lu", "verify"):
        from .scrub import verify
        rep = verify(pool, args.name, repair=args.repair)
        _print(args, rep, f"{rep['extents']} extent(s) compared at {rep['mib_per_s']:.0f} MiB/s, "
                          f"{len(rep['mismatched'])} mismatched, {rep['repaired']} block(s) repaired"
                          + "".join(f"\nunrecoverable: extent {e}" for e in rep["unrecoverable"]))
        return 0 if rep["clean"] else 4
    elif cmd == ("lu", "resync"):
        n = pool.resync(args.name)
        _done(args, {"name": args.name, "copied": n}, f"copied {n} extent(s)")
    elif cmd == ("lu", "create"):
        with pool.create_lu(args.name, args.size, thick=args.thick, mirrored=args.mirrored):
            pass
        info = pool.lu_info(args.name)
        _print(args, info, f"created LU {args.name} of {format_size(info['size'])}")
    elif cmd == ("lu", "list"):
        rows = sorted(pool.list_lus(), key=lambda r: r["name"])
        _print(args, rows, _table(rows))
    elif cmd == ("lu", "show"):
        info = pool.lu_info(args.name)
        _print(args, info, _show_text(info))
    elif cmd == ("lu", "du"):
        rep = pool.du(args.name)
        head = ["NAME", "PROVISIONED", "USED", "EXCLUSIVE", "SHARED"]
        body = [[r["name"], format_size(r["provisioned"]), format_size(r["used"]), format_size(r["exclusive"]),
                 format_size(r["shared"])] for r in rep["lus"]]
        t = rep["total"]
        body.append(["TOTAL", format_size(t["provisioned"]), format_size(t["used"]), format_size(t["exclusive"]),
                     format_size(t["shared"])])
        _print(args, rep, _columns(head, body) + "\n(TOTAL counts each shared extent once: exclusive + shared is "
                          "what these LUs hold in the pool; snapshots provision nothing of their own)")
    elif cmd == ("lu", "status"):
        st = pool.lu_status(args.name)
        who = f"held by pid {st['holder']}" if st["holder"] else "not open for writing"
        _print(args, st, f"{args.name}: {format_size(st['size'])}, {format_size(st['allocated'])} allocated, {who}"
                         + (f", {st['open_handles']} open handle(s), {format_size(st['bytes_written'])} written"
                            if st["holder"] else ""))
    elif cmd == ("lu", "resize"):
        old = pool.lu_info(args.name)["size"]
        pool.resize(args.name, args.size, force=args.force)
        info = pool.lu_info(args.name)
        _done(args, info, f"{args.name} resized from {format_size(old)} to {format_size(info['size'])}")
    elif cmd == ("lu", "rename"):
        pool.rename(args.name, args.new)
        _done(args, pool.lu_info(args.new), f"renamed {args.name} to {args.new}")
    elif cmd == ("lu", "rm"):
        removed = pool.remove(args.name, recursive=args.recursive)
        _done(args, {"removed": removed}, "removed " + ", ".join(removed))
    elif cmd == ("lu", "snapshot"):
        info = pool.snapshot(args.name, args.snap)
        _done(args, info, f"snapshot {info['name']} taken ({format_size(info['size'])})")
    elif cmd == ("lu", "clone"):
        info = pool.clone(args.source, args.new)
        _done(args, info, f"cloned {args.source} as {info['name']} ({format_size(info['size'])})")
    elif cmd == ("lu", "rollback"):
        pool.rollback(args.name, args.snap)
        _done(args, pool.lu_info(args.name), f"{args.name} is back at {args.name}@{args.snap}")
    elif cmd == ("lu", "flatten"):
        n = pool.flatten(args.name)
        _done(args, {"name": args.name, "copied": n}, f"{args.name} owns all its extents ({n} copied)")
    elif cmd == ("lu", "import"):
        stream = _is_stream(args.file)
        bar = _progress(f"import {args.name}", 0 if stream or not os.path.exists(args.file) else os.path.getsize(args.file),
                        args)
        t = time.monotonic()
        step = lambda d, n: (setattr(bar, "total", n or d), bar.update(d))  # noqa: E731
        if stream:
            with os.fdopen(os.dup(sys.stdin.fileno()) if args.file == "-" else os.open(args.file, os.O_RDONLY), "rb") as src:
                lu = import_stream(pool, args.name, src, progress=step)
        else:
            lu = import_file(pool, args.name, args.file, progress=step)
        with lu:
            size, alloc = lu.size, lu.allocated_bytes
        bar.close()
        _done(args, pool.lu_info(args.name), f"imported {args.file} as {args.name}: {format_size(size)}, "
                                              f"{format_size(alloc)} allocated, {time.monotonic() - t:.2f}s")
    elif cmd == ("lu", "export"):
        stream = _is_stream(args.file)
        if not stream and os.path.exists(args.file) and not args.force:
            raise AlreadyExists(f"{args.file} exists; add --force to overwrite it")
        with pool.lu(args.name, writable=False) as lu:
            bar = _progress(f"export {args.name}", 1, args)
            step = lambda d, n: (setattr(bar, "total", n), bar.update(d))  # noqa: E731
            if stream:
                with os.fdopen(os.dup(sys.stdout.fileno()) if args.file == "-" else os.open(args.file, os.O_WRONLY), "wb") as out:
                    export_stream(lu, out, progress=step)
            else:
                export_file(lu, args.file, progress=step)
            bar.close()
        if not stream:
            _done(args, {"name": args.name, "file": args.file, "size": lu.size},
                  f"exported {args.name} to {args.file} ({format_size(lu.size)})")
    elif cmd == ("lu", "write"):
        with pool.lu(args.name) as lu:
            src = _bounded_stdin(max(0, lu.size - args.offset), args.name)
            pos = args.offset
            while chunk := src.read(STDIN_STEP):
                lu.write(pos, chunk)
                pos += len(chunk)
            lu.flush()
    elif cmd == ("lu", "diff"):
        from .diff import diff
        d = diff(pool, args.older, args.newer)
        lines = [f"{r['offset']:>16} {r['length']:>12} {'data' if r['data'] else 'zero'}" for r in d["ranges"]]
        lines.append(f"{len(d['ranges'])} range(s), {format_size(d['changed'])} changed from {args.older} to {args.newer}")
        _print(args, d, "\n".join(lines))
    elif cmd == ("lu", "export-diff"):
        from .diff import export_diff, open_stream
        if args.file != "-" and os.path.exists(args.file) and not args.force:
            raise AlreadyExists(f"{args.file} exists; add --force to overwrite it")
        with open_stream(args.file, "w") as out:
            d = export_diff(pool, args.name, args.since, out)
        if args.file != "-":
            print(f"wrote {len(d['ranges'])} range(s), {format_size(d['changed'])} changed from "
                  f"{split_snapshot(args.name)[0]}@{args.since} to {args.name}, to {args.file}")
    elif cmd == ("lu", "import-diff"):
        from .diff import import_diff, open_stream
        with open_stream(args.file, "r") as src:
            rep = import_diff(pool, args.name, src)
        _print(args, rep, f"applied {format_size(rep['applied'])} to {args.name} (from {rep['from']}"
                          + (f", now at snapshot {rep['to']})" if rep["to"] else ")"))
    elif cmd == ("lu", "discard"):
        with pool.lu(args.name) as lu:
            end = lu.size if args.length is None else args.offset + args.length
            if end > lu.size or args.offset > lu.size:
                raise InvalidArgument(f"--length: {end - args.offset} bytes at {args.offset} reach past the end of "
                                      f"{args.name} ({format_size(lu.size)})")
            before = lu.allocated_bytes
            lu.discard(args.offset, end - args.offset)
            lu.flush()
            rep = {"name": args.name, "offset": args.offset, "length": end - args.offset,
                   "allocated_before": before, "allocated": lu.allocated_bytes}
        _print(args, rep, f"discarded {format_size(rep['length'])} of {args.name} at {args.offset}: "
                          f"{format_size(before - rep['allocated'])} unmapped, {format_size(rep['allocated'])} allocated now")
    elif cmd == ("lu", "read"):
        with pool.lu(args.name, writable=False) as lu:
            end = lu.size if args.length is None else args.offset + args.length
            if end > lu.size or args.offset > lu.size:
                raise InvalidArgument(f"read of {end - args.offset} bytes at {args.offset} is past the end of "
                                      f"{args.name} ({lu.size} bytes)")
            out = sys.stdout.buffer
            for pos in range(args.offset, end, STDIN_STEP):
                out.write(lu.read(pos, min(STDIN_STEP, end - pos)))
            out.flush()
    return 0


def _access(args: argparse.Namespace) -> Any:
    """The mount's --uid, --gid and --mode as an Access."""
    import grp
    import pwd

    from blockstore_fuse.ops import Access

    def ident(text: str | None, lookup: Any, what: str, default: int) -> int:
        if text is None:
            return default
        if re.fullmatch(r"[0-9]{1,10}", text):
            return int(text)
        try:
            return int(lookup(text)[2])
        except KeyError:
            raise UsageError(f"blockstore mount: no {what} named {text!r}") from None
    if not re.fullmatch(r"0?[0-7]{3}", args.mode):
        raise UsageError(f"blockstore mount: --mode takes octal permission bits such as 0640, not {args.mode!r}")
    return Access(ident(args.uid, pwd.getpwnam, "user", os.getuid()),
                  ident(args.gid, grp.getgrnam, "group", os.getgid()), int(args.mode, 8))


def main(argv: list[str] | None = None) -> int:
    from .native import fault_exit
    fault_exit("blockstore: memory fault reading the pool (SIGBUS/SIGSEGV): its metadata may be damaged; "
               "run `blockstore pool check`\n", 4)
    parser = build_parser()
    args = None
    try:
        args = parser.parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="blockstore: %(message)s")
        return run(args)
    except UsageError as e:
        print(str(e), file=sys.stderr)
        return 2
    except BlockstoreError as e:
        print(f"blockstore: {e}", file=sys.stderr)
        return 4 if isinstance(e, PoolCorrupt) else 1
    except BrokenPipeError:
        return 1
    except KeyboardInterrupt:
        print("blockstore: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        print(f"blockstore: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""), file=sys.stderr)
        return 1
    except Exception as e:  # a promise of one line, kept even for what nobody foresaw
        if args is not None and args.verbose:
            raise
        import lmdb
        what = "the pool's metadata cannot be read (damaged?)" if isinstance(e, lmdb.Error) else "internal error"
        print(f"blockstore: {what}: {type(e).__name__}: {e} (-v shows where)", file=sys.stderr)
        return 4 if isinstance(e, lmdb.Error) else 1


if __name__ == "__main__":
    sys.exit(main())
