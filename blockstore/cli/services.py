"""``blockstore cec|paging|image|partition ...``: the services built on LUs (paging files for
client partitions, captured OS images and the partitions deployed from them)."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ..pool import Pool
from ..sizes import format_size
from .args import SIZE, command, group, size
from ..diff import open_stream
from .output import binary_stdout, columns, done, emit, is_stream, progress, replacing

GROUPS = ("cec", "paging", "image", "partition")


def add(top: Any) -> None:
    cec = group(top, "cec", "physical servers (CECs) and the nodes (VIOS) that run on them")
    c = command(cec, "add", "record a CEC and its nodes", "cec add cec1 --node vios1 --node vios2", json=True)
    c.add_argument("name", help="the CEC's name")
    c.add_argument("--node", action="append", default=[], help="a node on it; repeat for more")
    command(cec, "list", "the CECs and their nodes", "cec list", json=True)

    pg = group(top, "paging", "paging-file LUs for client partitions (LPARs), each with a redundant copy")
    c = command(pg, "request", "provision (or grow) a partition's paging LU",
                "paging request --lpar lpar7 --min-size 8G", json=True)
    c.add_argument("--lpar", required=True, help="the client partition")
    c.add_argument("--min-size", required=True, type=size, help=f"at least this large ({SIZE})")
    c.add_argument("--node", help="the node that serves it (default: the local one)")
    command(pg, "list", "paging LUs, their partitions and where they are served", "paging list", json=True)
    c = command(pg, "release", "remove a partition's paging LU", "paging release --lpar lpar7", json=True)
    c.add_argument("--lpar", required=True, help="the client partition")
    c = command(pg, "migrate", "hand a paging LU to another CEC (the partition moves)",
                "paging migrate --lpar lpar7 --to-cec cec2", json=True)
    c.add_argument("--lpar", required=True, help="the client partition")
    c.add_argument("--to-cec", required=True, help="the CEC it moves to")
    c.add_argument("--node", help="the node of that CEC that serves it (default: the one with fewest LUs)")
    c.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the source to let go")

    im = group(top, "image", "captured OS images, each file an LU that partitions clone")
    c = command(im, "import", "import a directory or tar archive as an image (identical extents stored once)",
                "image import ./rootfs --name base1", "image import base.tar --name base1", json=True)
    c.add_argument("src", help="a directory, or a tar archive (.tar, .tar.gz, ...)")
    c.add_argument("--name", required=True, help="the image's name")
    command(im, "list", "images: files, size, space, partitions deployed from them", "image list", json=True)
    c = command(im, "show", "one image and its files", "image show base1", json=True)
    c.add_argument("name", help="the image")
    c = command(im, "rm", "remove an image no partition uses", "image rm base1", json=True)
    c.add_argument("name", help="the image")

    pt = group(top, "partition", "partitions deployed from images")
    c = command(pt, "create", "deploy an image: a clone of every image LU", "partition create web1 --image base1",
                json=True)
    c.add_argument("name", help="the partition")
    c.add_argument("--image", required=True, help="the image to deploy")
    c.add_argument("--cec", help="the CEC it runs on")
    for verb, what in (("activate", "mark a partition active (its LUs in use)"),
                       ("deactivate", "mark a partition inactive"),
                       ("rm", "remove an inactive partition and its LUs")):
        c = command(pt, verb, what, f"partition {verb} web1", json=True)
        c.add_argument("name", help="the partition")
    command(pt, "list", "partitions and their state", "partition list", json=True)
    c = command(pt, "show", "one partition and its LUs", "partition show web1", json=True)
    c.add_argument("name", help="the partition")
    c = command(pt, "export", "the partition's tree as a tar archive: files as it holds them, links, "
                "devices, modes, owners, times", "partition export web1 web1.tar",
                "partition export web1 - | tar -x -C /mnt/web1", json=True)
    c.add_argument("name", help="the partition")
    c.add_argument("file", help="where to write it; - for stdout")
    c.add_argument("--force", action="store_true", help="overwrite FILE if it exists")


def run(args: argparse.Namespace, pool: Pool) -> int:
    from ..services import images, paging
    cmd = (args.group, args.cmd)
    placement = _placement(pool) if args.group == "paging" else None
    if cmd == ("cec", "add"):
        rec = paging.add_cec(pool, args.name, args.node)
        done(args, rec, f"CEC {rec['name']}: nodes {', '.join(rec['nodes']) or '-'}")
    elif cmd == ("cec", "list"):
        rows = paging.list_cecs(pool)
        emit(args, rows, columns(["CEC", "NODES"], [[r["name"], ", ".join(r["nodes"]) or "-"] for r in rows],
                                 empty="no CECs"))
    elif cmd == ("paging", "request"):
        r = paging.request(pool, args.lpar, args.min_size, args.node, placement)
        done(args, r, f"{r['lpar']}: {r['lu']} {format_size(r['size'])} ({r['mirror']}) on {r['cec']}/{r['node']}")
    elif cmd == ("paging", "list"):
        rows = paging.list_paging(pool, placement)
        emit(args, rows, columns(["LPAR", "LU", "SIZE", "MAPPED", "MIRROR", "CEC/NODE"], [
            [r["lpar"], r["lu"], format_size(r["size"]), format_size(r["allocated"]), r["mirror"] or "-",
             f"{r['cec']}/{r['node']}" + (f" -> {r['migrating_to']}" if r["migrating_to"] else "")] for r in rows],
             empty="no paging LUs"))
    elif cmd == ("paging", "release"):
        paging.release(pool, args.lpar)
        done(args, {"lpar": args.lpar, "released": True}, f"released the paging LU of {args.lpar}")
    elif cmd == ("paging", "migrate"):
        r = paging.migrate(pool, args.lpar, args.to_cec, args.node, timeout=args.timeout, placement=placement)
        done(args, r, f"{r['lpar']} is now served by {r['cec']}/{r['node']}")
    elif args.group == "image":
        _image(args, pool)
    elif cmd == ("partition", "create"):
        info = images.create_partition(pool, args.name, args.image, args.cec)
        done(args, info, f"partition {info['name']} is {info['state']} ({len({x['lu'] for x in info['lus']})} LU(s) "
                         f"for {len(info['lus'])} file(s))")
    elif cmd[0] == "partition" and cmd[1] in ("activate", "deactivate"):
        info = (images.activate if cmd[1] == "activate" else images.deactivate)(pool, args.name)
        done(args, info, f"partition {args.name} is {info['state']}")
    elif cmd == ("partition", "rm"):
        images.remove_partition(pool, args.name)
        done(args, {"removed": args.name}, f"removed partition {args.name} and its LUs")
    elif cmd == ("partition", "list"):
        rows = images.list_partitions(pool)
        emit(args, rows, columns(["PARTITION", "STATE", "IMAGE", "CEC"],
                                 [[r["name"], r["state"], r["image"], r["cec"] or "-"] for r in rows],
                                 empty="no partitions"))
    elif cmd == ("partition", "export"):
        if args.file == "-":
            binary_stdout("a tar archive")
        if is_stream(args.file):  # -, a pipe, a device: written as it is
            with open_stream(args.file, "w") as out:
                images.export_partition(pool, args.name, out)
        else:
            with replacing(args.file, args.force) as tmp, open(tmp, "wb") as out:
                rep = images.export_partition(pool, args.name, out)
            done(args, rep, f"wrote partition {args.name} to {args.file}: {rep['entries']} entries, "
                            f"{format_size(rep['bytes'])} of files")
    elif cmd == ("partition", "show"):
        info = images.show_partition(pool, args.name)
        emit(args, info, "\n".join([f"partition {info['name']}: {info['state']}, image {info['image']}, "
                                    f"cec {info['cec'] or '-'}"] + [f"  {x['path']:<30} {x['lu']}"
                                                                     + (f" at {x['offset']}" if x["offset"] else "")
                                                                     for x in info["lus"]]))
    return 0


def _image(args: argparse.Namespace, pool: Pool) -> None:
    from ..services import images
    if args.cmd == "import":
        t = time.monotonic()
        with progress(args, f"import {args.name}") as step:
            def each(path: str, done_: int, size_: int, total_done: int, total: int) -> None:
                step(total_done, total)
            info = images.import_image(pool, args.src, args.name, each)
        done(args, info, f"imported {args.name}: {info['files']} file(s), {info['dirs']} dir(s), {info['links']} "
                         f"link(s), {info['special']} device(s) and FIFO(s), {format_size(info['logical'])} logical, "
                         f"{format_size(info['allocated'])} allocated, {time.monotonic() - t:.2f}s")
    elif args.cmd == "list":
        rows = images.list_images(pool)
        emit(args, rows, columns(["IMAGE", "FILES", "LOGICAL", "ALLOCATED", "PARTITIONS"], [
            [r["name"], str(r["files"]), format_size(r["logical"]), format_size(r["allocated"]),
             ", ".join(r["partitions"]) or "-"] for r in rows], empty="no images"))
    elif args.cmd == "show":
        info = images.show(pool, args.name)
        emit(args, info, f"image {info['name']}: {format_size(info['logical'])} logical, "
                         f"{format_size(info['allocated'])} allocated\n" + columns(
                             ["HANDLE", "PATH", "SIZE", "ROLE", "XXH128", "LU", "AT"],
                             [[f["handle"], f["path"], format_size(f["size"]), f["role"], f["xxh128"], f["lu"],
                               str(f["offset"]) if f["packed"] else "-"] for f in info["file_list"]])
                         + "\n(AT: the byte offset of a small file packed with others into one LU)"
                         + "".join(f"\n{e['kind']:<8} {e['path']}" + (f" -> {e['target']}" if "target" in e else "")
                                   for e in info["tree"] if e["kind"] != "dir"))
    elif args.cmd == "rm":
        images.remove_image(pool, args.name)
        done(args, {"removed": args.name}, f"removed image {args.name}")
    sys.stdout.flush()


def _placement(pool: Pool) -> Any:
    """In a pool whose cluster has nodes, the cluster says who serves a partition
    (cluster/placement.py); without any, the CEC records (cec add) do."""
    from ..cluster.config import has_cluster
    if not has_cluster(pool.path):
        return None
    from ..cluster.placement import ClusterPlacement
    placement = ClusterPlacement(pool.path)
    return placement if placement.has_nodes() else None
