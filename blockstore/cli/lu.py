"""``blockstore lu ...``: logical units, their snapshots and clones, copies, and data in and out."""
from __future__ import annotations

import argparse
import os
import stat
import sys
import tempfile
import time
from typing import Any, BinaryIO

from ..errors import BlockstoreError, InvalidArgument
from ..names import split_snapshot
from ..pool import Pool
from ..records import LUInfo
from ..sizes import format_size
from ..transfer import export_file, export_stream, import_file, import_stream
from .args import SIZE, UsageError, command, group, length, lu_size, offset, on_fence
from .output import binary_stdout, columns, done, emit, is_stream, progress, replacing, sized, when

STDIN_STEP = 1 << 20
#: ``lu list --kind``: what each kind selects. Image LUs are hidden unless asked for.
KINDS = ("lu", "clone", "snapshot", "image", "partition", "paging", "all")


def add(top: Any) -> None:
    sub = group(top, "lu", "logical units: thin disks, their snapshots and clones")
    c = command(sub, "create", "a new thin LU (it reads as zeros; space is taken as it is written)",
                "lu create disk0 --size 10G", "lu create db --size 100G --mirrored", json=True)
    c.add_argument("name", help="the LU's name (letters, digits, . _ -)")
    c.add_argument("--size", type=lu_size, required=True,
                   help=f"the LU's size ({SIZE}; a multiple of 512; 0 for an empty LU, grown later)")
    c.add_argument("--thick", action="store_true", help="reserve every extent now")
    c.add_argument("--mirrored", action="store_true", help="keep a redundant copy in the second failure group")
    on_fence(c, None)
    c = command(sub, "list", "LUs, clones and snapshots (image LUs only with --kind image or all)",
                "lu list", "lu list --kind snapshot --json", json=True)
    c.add_argument("--kind", choices=KINDS, action="append",
                   help="only this kind; repeat for more (default: all but image LUs)")
    c.add_argument("--names", action="store_true", help=argparse.SUPPRESS)  # one per line: shell completion
    s = command(sub, "show", "one LU or snapshot in words", "lu show disk0", "lu show disk0@monday --json", json=True)
    s.add_argument("name", help="NAME or NAME@SNAP")
    s = command(sub, "du", "space per LU and snapshot: provisioned, used, exclusive, shared (like rbd du)",
                "lu du", "lu du disk0 --json", json=True)
    s.add_argument("name", nargs="?", help="one LU and its snapshots (default: all)")
    s = command(sub, "status", "an LU as its holder sees it: who holds it open, handles, bytes written",
                "lu status disk0", json=True)
    s.add_argument("name", help="NAME")
    r = command(sub, "resize", "grow an LU (live, also while mounted), or shrink it with --force",
                "lu resize disk0 --size 20G", json=True)
    r.add_argument("name", help="NAME")
    r.add_argument("--size", type=lu_size, required=True, help=f"the new size ({SIZE}; a multiple of 512)")
    r.add_argument("--force", action="store_true", help="allow a shrink (what lies past the new end is lost)")
    r = command(sub, "rm", "remove an LU, or one snapshot (NAME@SNAP)", "lu rm disk0@monday", "lu rm disk0 -r",
                json=True)
    r.add_argument("name", help="NAME or NAME@SNAP")
    r.add_argument("--recursive", "-r", action="store_true", help="remove the LU's snapshots too")
    s = command(sub, "snapshot", "a read-only point-in-time copy NAME@SNAP (live, also while mounted)",
                "lu snapshot disk0 monday", json=True)
    s.add_argument("name", help="NAME")
    s.add_argument("snap", help="the snapshot's name")
    s = command(sub, "clone", "a writable copy-on-write clone of NAME or NAME@SNAP", "lu clone disk0@monday test1",
                json=True)
    s.add_argument("source", help="NAME or NAME@SNAP")
    s.add_argument("new", help="the clone's name")
    s = command(sub, "rollback", "return NAME to its snapshot SNAP (what was written since is lost)",
                "lu rollback disk0 monday", json=True)
    s.add_argument("name", help="NAME")
    s.add_argument("snap", help="SNAP (or NAME@SNAP), a snapshot of NAME")
    s = command(sub, "assign", "make a node of the cluster the LU's owner (the primary records it, under a new "
                "ownership epoch)", "lu assign disk0 --node n2", json=True)
    s.add_argument("name", help="NAME")
    s.add_argument("--node", help="a node that is up (default: the one owning fewest LUs)")
    s = command(sub, "set", "change an LU's settings", "lu set db --on-fence hold", json=True)
    s.add_argument("name", help="NAME")
    on_fence(s, None)
    s = command(sub, "flatten", "a clone copies what it shares and stops depending on its parent",
                "lu flatten test1", json=True)
    s.add_argument("name", help="NAME")
    s = command(sub, "mirror", "give an LU a redundant copy in the second failure group", "lu mirror disk0", json=True)
    s.add_argument("name", help="NAME")
    s = command(sub, "unmirror", "drop an LU's redundant copy", "lu unmirror disk0", json=True)
    s.add_argument("name", help="NAME")
    s = command(sub, "verify", "compare a mirrored LU's two copies block by block; exit 0 clean, 4 mismatched",
                "lu verify disk0 --repair", json=True)
    s.add_argument("name", help="NAME")
    s.add_argument("--repair", action="store_true", help="rewrite a block proven bad from the copy proven good")
    s = command(sub, "resync", "copy to a copy what it missed while degraded", "lu resync disk0", json=True)
    s.add_argument("name", help="NAME")
    s = command(sub, "import", "a raw disk image (or a pipe) into a new LU; holes and zeros take no space",
                "lu import vm1 vm1.raw", "zcat vm1.raw.gz | blockstore lu import vm1 -",
                json=True)
    s.add_argument("name", help="the new LU's name")
    s.add_argument("file", help="the image; - for stdin (its length sets the LU's size, rounded up to 512)")
    s = command(sub, "export", "an LU or snapshot out to a sparse raw file, or to stdout",
                "lu export disk0@monday monday.raw", "lu export disk0 - | gzip > disk0.raw.gz", json=True)
    s.add_argument("name", help="NAME or NAME@SNAP")
    s.add_argument("file", help="where to write it; - for stdout (holes as zeros)")
    s.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    s = command(sub, "rename", "rename an LU (its snapshots follow)", "lu rename disk0 web0", json=True)
    s.add_argument("name", help="NAME")
    s.add_argument("new", help="the new name")
    s = command(sub, "write", "write stdin into an LU at --offset", "lu write disk0 --offset 1M < blob", json=True)
    s.add_argument("name", help="NAME")
    s.add_argument("--offset", type=offset, default="0", help=f"where to start ({SIZE})")
    _span_args(command(sub, "read", "read bytes of an LU or snapshot to stdout",
                       "lu read disk0 --offset 1M --length 4K | xxd | head"), "NAME or NAME@SNAP")
    _span_args(command(sub, "discard", "give back the space of a byte range (it reads as zeros after): whole "
                                       "extents are unmapped, partial ones zeroed",
                       "lu discard disk0 --offset 1G --length 1G", json=True), "NAME")
    s = command(sub, "diff", "the byte ranges that changed from NAME@SNAP1 to NAME@SNAP2 (or to NAME now), "
                             "from the extent maps: no data is read", "lu diff disk0@monday disk0@tuesday",
                json=True)
    s.add_argument("older", help="NAME@SNAP1")
    s.add_argument("newer", help="NAME@SNAP2, or NAME for the LU as last committed")
    s = command(sub, "export-diff", "write what changed since a snapshot as a stream that import-diff applies "
                                    "(incremental backup)",
                "lu export-diff disk0@tuesday --from monday tue.diff", json=True)
    s.add_argument("name", help="NAME@SNAP2 (or NAME)")
    s.add_argument("file", help="where to write the stream; - for stdout")
    s.add_argument("--from", dest="since", required=True, metavar="SNAP1", help="the snapshot the stream starts from")
    s.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    s = command(sub, "import-diff", "apply an export-diff stream to an LU still at its starting snapshot; it "
                                    "takes the stream's ending snapshot", "lu import-diff disk0 tue.diff", json=True)
    s.add_argument("name", help="NAME")
    s.add_argument("file", help="the stream; - for stdin")


def _span_args(p: argparse.ArgumentParser, name_help: str) -> None:
    """NAME and the byte range ``--offset``/``--length`` of a command that reads or discards one."""
    p.add_argument("name", help=name_help)
    p.add_argument("--offset", type=offset, default="0", help=f"where the range starts ({SIZE})")
    p.add_argument("--length", type=length, default=None, help=f"how much ({SIZE}; default: to the end of the LU)")


def run(args: argparse.Namespace, pool: Pool) -> int:
    return RUN[args.cmd](args, pool) or 0


# -- looking ---------------------------------------------------------------------------------------

def _list(args: argparse.Namespace, pool: Pool) -> None:
    rows = sorted(pool.list_lus(), key=lambda r: r["name"])
    kinds = set(args.kind or [])
    shown: list[Any] = [r for r in rows if _kind_matches(r, kinds)]
    owned = _owned(pool)
    if owned is not None:
        shown = [{**r, "owner": owned.get(r["name"].split("@")[0])} for r in shown]
    if args.names:
        print("\n".join(r["name"] for r in shown))
        return
    hidden = sum(1 for r in rows if r["role"] == "image") if not kinds else 0
    body = [[r["name"], format_size(r["size"]), format_size(r["allocated"]),
             r["kind"] + (" thick" if r["thick"] else "") + (f" ({r['role']})" if r["role"] else ""),
             r["parent"] or "-"] for r in shown]
    text = columns(["NAME", "SIZE", "MAPPED", "KIND", "PARENT"], body, empty="no LUs")
    notes = ["MAPPED: what each maps, shared extents in every LU that maps them (lu du adds up)"] if shown else []
    if hidden:
        notes.append(f"{hidden} image LU(s) not shown (--kind image or --kind all)")
    emit(args, shown, text + "".join(f"\n({n})" for n in notes))


def _kind_matches(r: LUInfo, kinds: set[str]) -> bool:
    if not kinds:
        return r["role"] != "image"
    return "all" in kinds or r["kind"] in kinds or (r["role"] or "") in kinds


def _owned(pool: Pool, lu: str | None = None) -> dict[str, Any] | None:
    """Owners by LU name (every LU's, or ``lu``'s alone); None: the pool has no cluster."""
    from ..cluster.admin import owners
    return owners(pool.path, lu)


def _served(pool: Pool, node: str, lu: str) -> str:
    """Where the owning node serves ``lu``: its mount's file and its NBD URI."""
    from ..cluster.admin import node_record
    from ..errors import NotFound
    try:
        rec = node_record(pool.path, node)
    except NotFound:
        return "-"
    where = [os.path.join(rec["mount"], lu)] if rec.get("mount") else []
    where += [f"nbd://{rec['nbd']}/{lu}"] if rec.get("nbd") else []
    return ", ".join(where) or f"nowhere (node {node} runs without --mount)"


def _assign(args: argparse.Namespace, pool: Pool) -> None:
    from ..cluster.admin import assign
    pool.lu_info(args.name)  # NotFound here, in one line, before the cluster is asked
    rep = assign(pool.path, args.name, args.node)
    done(args, rep, f"{rep['lu']} is owned by {rep['node']} at epoch {rep['epoch']}"
                    f" (before: {rep['previous'] or 'no owner'})")


def _show(args: argparse.Namespace, pool: Pool) -> None:
    info: Any = pool.lu_info(args.name)
    base = args.name.split("@")[0]
    owned = _owned(pool, base)
    if owned is not None:  # a pool with a cluster: its LUs have owning nodes
        info["owner"] = owned.get(base)
    kind = {"snapshot": f"snapshot of {info['parent']}", "clone": f"clone of {info['parent']}"}.get(
        info["kind"], "LU" + (f" (flattened from {info['parent']})" if info.get("parent") else ""))
    mirror = info.get("mirror")
    mirrored = "no"
    if info.get("mirrored"):
        mirrored = "yes" if not mirror else f"yes, {mirror['state']}" + (
            f", {mirror['dirty_extents']} extent(s) to resync" if mirror["dirty_extents"] else "")
    rows = [("name", info["name"]), ("kind", kind + (", thick" if info.get("thick") else "")),
            ("size", sized(info["size"])), ("mapped", format_size(info["allocated"])), ("mirrored", mirrored),
            ("created", when(info["created"])),
            ("snapshots", ", ".join(info.get("snapshots") or []) or "none"),
            ("clones", ", ".join(info.get("clones") or []) or "none"),
            ("open", _held(info)),
            ("role", info.get("role") or "-")]
    if not info["readonly"]:
        rows.append(("on fence", _on_fence(info)))
    if owned is not None:
        own = info["owner"]
        rows.append(("owner", f"node {own['node']}, epoch {own['epoch']}" if own else "none (lu assign)"))
        if own:
            rows.append(("served", _served(pool, own["node"], base)))
    emit(args, info, "\n".join(f"{k:<10} {v}" for k, v in rows))


def _du(args: argparse.Namespace, pool: Pool) -> None:
    rep = pool.du(args.name)
    fields = ("provisioned", "used", "exclusive", "shared")
    rows: list[tuple[str, Any]] = [(r["name"], r) for r in rep["lus"]] + [("TOTAL", rep["total"])]
    body = [[name, *(format_size(r[f]) for f in fields)] for name, r in rows]
    emit(args, rep, columns(["NAME", *(f.upper() for f in fields)], body)
         + "\n(TOTAL counts each shared extent once: exclusive + shared is what these LUs hold in the pool; "
           "snapshots provision nothing of their own)")


def _status(args: argparse.Namespace, pool: Pool) -> None:
    st = pool.lu_status(args.name)
    who = _held(st)
    emit(args, st, f"{args.name}: {format_size(st['size'])}, {format_size(st['allocated'])} mapped, {who}"
                   + (f", {st['open_handles']} open handle(s), {format_size(st['bytes_written'] or 0)} written"
                      if st["holder"] and st["open_handles"] is not None else ""))


def _held(info: Any) -> str:
    h = info.get("holder")
    if not h:
        return "not open for writing"
    return f"open for writing by pid {h['pid']} ({h['command']})" if h["pid"] else f"open for writing ({h['command']})"


def _diff(args: argparse.Namespace, pool: Pool) -> None:
    from ..diff import diff
    d = diff(pool, args.older, args.newer)
    lines = [f"{r['offset']:>16} {r['length']:>12} {'data' if r['data'] else 'zero'}" for r in d["ranges"]]
    lines.append(f"{len(d['ranges'])} range(s), {format_size(d['changed'])} changed from {args.older} to {args.newer}")
    emit(args, d, "\n".join(lines))


# -- changing ----------------------------------------------------------------------------------------

def _create(args: argparse.Namespace, pool: Pool) -> None:
    with pool.create_lu(args.name, args.size, thick=args.thick, mirrored=args.mirrored, allow_empty=True):
        pass
    if args.on_fence not in (None, "mount"):
        pool.update_lu(args.name, on_fence=args.on_fence)
    info: Any = pool.lu_info(args.name)
    owned = ""
    from ..cluster.admin import assign
    from ..cluster.config import has_cluster
    if has_cluster(pool.path):  # the new LU goes to the least loaded node
        try:
            info["owner"] = {k: v for k, v in assign(pool.path, args.name, None, wait=0.0).items()
                             if k in ("node", "epoch")}
            owned = f", owned by {info['owner']['node']}"
        except BlockstoreError as e:
            info["owner"] = None
            owned = f", no owner yet ({e})"
    done(args, info, f"created LU {args.name} of {format_size(info['size'])}"
                     + (", mirrored" if args.mirrored else "") + (", thick" if args.thick else "") + owned)


def _set(args: argparse.Namespace, pool: Pool) -> None:
    if args.on_fence is None:
        raise UsageError("lu set: give a setting to change (--on-fence)")
    pool.update_lu(args.name, on_fence=None if args.on_fence == "mount" else args.on_fence)
    info = pool.lu_info(args.name)
    done(args, info, f"{args.name}: on fence, {_on_fence(info)} (from its next open on its owner)")


def _on_fence(info: Any) -> str:
    return {"hold": "hold writes", "error": "fail writes"}.get(info.get("on_fence"), "as its mount says")


def _resize(args: argparse.Namespace, pool: Pool) -> None:
    old = pool.lu_info(args.name)["size"]
    pool.resize(args.name, args.size, force=args.force, allow_empty=True)
    info = pool.lu_info(args.name)
    done(args, info, f"{args.name} resized from {format_size(old)} to {format_size(info['size'])}")


def _rm(args: argparse.Namespace, pool: Pool) -> None:
    removed = pool.remove(args.name, recursive=args.recursive)
    done(args, {"removed": removed}, "removed " + ", ".join(removed))


def _snapshot(args: argparse.Namespace, pool: Pool) -> None:
    info = pool.snapshot(args.name, args.snap)
    done(args, info, f"snapshot {info['name']} taken ({format_size(info['size'])})")


def _clone(args: argparse.Namespace, pool: Pool) -> None:
    info = pool.clone(args.source, args.new)
    done(args, info, f"cloned {args.source} as {info['name']} ({format_size(info['size'])})")


def _rollback(args: argparse.Namespace, pool: Pool) -> None:
    pool.rollback(args.name, args.snap)
    snap = args.snap if args.snap.startswith(args.name + "@") else f"{args.name}@{args.snap}"
    done(args, pool.lu_info(args.name), f"{args.name} is back at {snap}")


def _flatten(args: argparse.Namespace, pool: Pool) -> None:
    n = pool.flatten(args.name)
    done(args, {"name": args.name, "copied": n}, f"{args.name} owns all its extents ({n} copied)")


def _rename(args: argparse.Namespace, pool: Pool) -> None:
    pool.rename(args.name, args.new)
    done(args, pool.lu_info(args.new), f"renamed {args.name} to {args.new}")


def _mirror(args: argparse.Namespace, pool: Pool) -> None:
    if pool.lu_info(args.name)["mirrored"] and "@" not in args.name:
        done(args, pool.lu_info(args.name), f"{args.name} is mirrored already: nothing to do")
        return
    with progress(args, f"mirror {args.name}", unit_bytes=pool.extent_size) as step:
        n = pool.set_mirrored(args.name, True, progress=step)
    done(args, pool.lu_info(args.name), f"{args.name} is mirrored ({n} extent(s) copied)")


def _unmirror(args: argparse.Namespace, pool: Pool) -> None:
    if not pool.lu_info(args.name)["mirrored"] and "@" not in args.name:
        done(args, pool.lu_info(args.name), f"{args.name} is not mirrored: nothing to do")
        return
    pool.set_mirrored(args.name, False)
    done(args, pool.lu_info(args.name), f"{args.name} is no longer mirrored")


def _verify(args: argparse.Namespace, pool: Pool) -> int:
    from ..scrub import verify
    rep = verify(pool, args.name, repair=args.repair)
    emit(args, rep, f"{rep['extents']} extent(s) compared at {rep['mib_per_s']:.0f} MiB/s, "
                    f"{len(rep['mismatched'])} mismatched, {rep['repaired']} block(s) repaired"
                    + "".join(f"\nunrecoverable: extent {e}" for e in rep["unrecoverable"]))
    return 0 if rep["clean"] else 4


def _resync(args: argparse.Namespace, pool: Pool) -> None:
    with progress(args, f"resync {args.name}", unit_bytes=pool.extent_size) as step:
        n = pool.resync(args.name, progress=step)
    done(args, {"name": args.name, "copied": n}, f"copied {n} extent(s) to {args.name}'s other copy")


def _discard(args: argparse.Namespace, pool: Pool) -> None:
    with pool.lu(args.name) as lu:
        start, end = _span(args, lu.size)
        before = lu.allocated_bytes
        lu.discard(start, end - start)
        lu.flush()
        rep = {"name": args.name, "offset": start, "length": end - start,
               "allocated_before": before, "allocated": lu.allocated_bytes}
    done(args, rep, f"discarded {format_size(rep['length'])} of {args.name} at {format_size(start)}: "
                    f"{format_size(before - rep['allocated'])} unmapped, {format_size(rep['allocated'])} mapped now")


def _span(args: argparse.Namespace, lu_size: int) -> tuple[int, int]:
    """``--offset``/``--length`` as a byte range within the LU, or a refusal naming both."""
    if args.offset > lu_size:
        raise InvalidArgument(f"--offset {format_size(args.offset)} is past the end of {args.name} ({sized(lu_size)})")
    end = lu_size if args.length is None else args.offset + args.length
    if end > lu_size:
        raise InvalidArgument(f"--offset {format_size(args.offset)} --length {format_size(end - args.offset)} "
                              f"reaches past the end of {args.name} ({sized(lu_size)})")
    return args.offset, end


# -- data in and out ---------------------------------------------------------------------------------

def _import(args: argparse.Namespace, pool: Pool) -> None:
    stream = is_stream(args.file)
    t = time.monotonic()
    with progress(args, f"import {args.name}") as step:
        if stream:
            fd = os.dup(sys.stdin.fileno()) if args.file == "-" else os.open(args.file, os.O_RDONLY)
            with os.fdopen(fd, "rb") as src:
                lu = import_stream(pool, args.name, src, progress=step)
        else:
            lu = import_file(pool, args.name, args.file, progress=step)
    with lu:
        size_, alloc = lu.size, lu.allocated_bytes
    done(args, pool.lu_info(args.name), f"imported {args.file} as {args.name}: {format_size(size_)}, "
                                        f"{format_size(alloc)} mapped, {time.monotonic() - t:.2f}s")


def _export(args: argparse.Namespace, pool: Pool) -> None:
    stream = is_stream(args.file)
    if args.file == "-":
        binary_stdout(f"{args.name}'s bytes")
    with pool.lu(args.name, writable=False) as lu:
        if stream:
            fd = os.dup(sys.stdout.fileno()) if args.file == "-" else os.open(args.file, os.O_WRONLY)
            with progress(args, f"export {args.name}") as step, os.fdopen(fd, "wb") as out:
                export_stream(lu, out, progress=step)
        else:
            with progress(args, f"export {args.name}", unit_bytes=lu.extent_size) as step, \
                    replacing(args.file, args.force) as tmp:
                export_file(lu, tmp, progress=step)
    if not stream:
        done(args, {"name": args.name, "file": args.file, "size": lu.size},
             f"exported {args.name} to {args.file} ({format_size(lu.size)})")


def _bounded_stdin(room: int, name: str) -> tuple[BinaryIO, int]:
    """Stdin as a file that holds at most ``room`` bytes, and its length; or a refusal before
    anything is written.

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
        n = st.st_size - stdin.tell()
        src: BinaryIO = stdin
    else:
        src = tempfile.TemporaryFile()
        n = 0
        while chunk := stdin.read(STDIN_STEP):
            n += len(chunk)
            if n > room:
                break
            src.write(chunk)
        src.seek(0)
    if n > room:
        raise InvalidArgument(f"the data runs past the end of {name} ({sized(room)} fit after the offset)")
    return src, n


def _write(args: argparse.Namespace, pool: Pool) -> None:
    with pool.lu(args.name) as lu:
        src, n = _bounded_stdin(max(0, lu.size - args.offset), args.name)
        lu.reserve(args.offset, n)  # the pool's room for all of it, before any of it is written
        pos = args.offset
        while chunk := src.read(STDIN_STEP):
            lu.write(pos, chunk)
            pos += len(chunk)
        lu.flush()
    done(args, {"name": args.name, "offset": args.offset, "length": pos - args.offset},
         f"wrote {format_size(pos - args.offset)} to {args.name} at {format_size(args.offset)}")


def _read(args: argparse.Namespace, pool: Pool) -> None:
    binary_stdout(f"{args.name}'s bytes")
    with pool.lu(args.name, writable=False) as lu:
        start, end = _span(args, lu.size)
        out = sys.stdout.buffer
        for pos in range(start, end, STDIN_STEP):
            out.write(lu.read(pos, min(STDIN_STEP, end - pos)))
        out.flush()


def _export_diff(args: argparse.Namespace, pool: Pool) -> None:
    from ..diff import export_diff, open_stream
    if args.file == "-":
        binary_stdout("a diff stream")
    if is_stream(args.file):  # -, a pipe, a device: written as it is
        with open_stream(args.file, "w") as out:
            d = export_diff(pool, args.name, args.since, out)
    else:
        with replacing(args.file, args.force) as tmp, open_stream(tmp, "w") as out:
            d = export_diff(pool, args.name, args.since, out)
    if args.file != "-":
        done(args, d, f"wrote {len(d['ranges'])} range(s), {format_size(d['changed'])} changed from "
                      f"{split_snapshot(args.name)[0]}@{args.since} to {args.name}, to {args.file}")


def _import_diff(args: argparse.Namespace, pool: Pool) -> None:
    from ..diff import import_diff, open_stream
    with open_stream(args.file, "r") as src:
        rep = import_diff(pool, args.name, src)
    done(args, rep, f"applied {format_size(rep['applied'])} to {args.name} (from {rep['from']}"
                    + (f", now at snapshot {rep['to']})" if rep["to"] else ")"))


#: Each ``lu`` command and what runs it.
RUN: dict[str, Any] = {
    "create": _create, "list": _list, "show": _show, "du": _du, "status": _status, "resize": _resize, "rm": _rm,
    "snapshot": _snapshot, "clone": _clone, "rollback": _rollback, "flatten": _flatten, "mirror": _mirror,
    "assign": _assign, "set": _set,
    "unmirror": _unmirror, "verify": _verify, "resync": _resync, "import": _import, "export": _export,
    "rename": _rename, "write": _write, "read": _read, "discard": _discard, "diff": _diff,
    "export-diff": _export_diff, "import-diff": _import_diff,
}
