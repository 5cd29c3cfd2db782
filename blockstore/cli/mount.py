"""``blockstore mount`` and ``umount``: the FUSE adapter's command line."""
from __future__ import annotations

import argparse
import os
import re
from typing import Any

from .args import UsageError, command, on_fence
from .output import done


def add(top: Any) -> None:
    m = command(top, "mount", "mount the pool's LUs as files (FUSE): one file per LU, snapshots read-only "
                              "under .snapshots/", "mount /mnt/lus", "mount /mnt/lus --allow-other --gid disk --mode 0660")
    m.add_argument("mountpoint", help="an empty directory")
    m.add_argument("--foreground", "-f", action="store_true", help="stay attached (default: a daemon)")
    m.add_argument("--read-only", action="store_true", help="no writes through this mount")
    m.add_argument("--allow-other", action="store_true",
                   help="let other users reach the mount (what they may do: --uid, --gid, --mode)")
    m.add_argument("--uid", help="owner of the LU files: a user name or id (default: you)")
    m.add_argument("--gid", help="group of the LU files: a group name or id (default: yours)")
    m.add_argument("--mode", default="0600", help="permission bits of the LU files, octal (read-only files lose "
                                                  "their w bits, directories get x where files have r)")
    m.add_argument("--threads", type=int, default=None, metavar="N",
                   help="serve with up to N threads (default: one per core, 2 at least; 0: one loop)")
    m.add_argument("--no-direct", action="store_true",
                   help="serve every request in Python, not reads and in-place writes in C (slower)")
    m.add_argument("--no-write-map", action="store_true",
                   help="write in place by pwrite only, never by copying large writes into a mapping of the "
                        "data file (slower)")
    m.add_argument("--serial-writes", action="store_true",
                   help="let the kernel send one write of a file at a time, as libfuse before 3.15 does "
                        "(slower under many writers)")
    m.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus figures at http://HOST:PORT/metrics: per-LU requests, bytes and "
                        "request times, the pool's space, the failure groups (default: off)")
    m.add_argument("--node", metavar="NAME",
                   help="serve as this cluster node: write only the LUs it owns (lu assign), read the others "
                        "through their redundant copy (node start --mount runs this)")
    on_fence(m, "--node")
    u = command(top, "umount", "unmount, flushing everything (also a stale mount); a busy mount is refused, "
                               "naming what holds it", "umount /mnt/lus", "umount --lazy /mnt/lus")
    u.add_argument("mountpoint", help="where the pool is mounted")
    u.add_argument("--lazy", "-l", action="store_true",
                   help="detach a busy mount now; its daemon flushes and exits when the last file closes")


def run(args: argparse.Namespace) -> int:
    if args.group == "umount":
        from blockstore_fuse.mount import umount
        line = umount(args.mountpoint, lazy=args.lazy)
        done(args, {"mountpoint": os.path.abspath(args.mountpoint), "lazy": args.lazy, "result": line}, line)
        return 0
    from blockstore_fuse.mount import THREADS, log_path, mount
    if args.metrics:
        from ..metrics import parse_address
        parse_address(args.metrics)  # refused here, before the daemon starts
    if args.node is not None:
        from ..cluster.config import require
        from ..names import check_name
        check_name(args.node, "node name")
        if args.read_only:
            raise UsageError("blockstore mount: --node serves what the node owns read-write; drop --read-only")
        require(args.pool)
    threads = THREADS if args.threads is None else args.threads
    if not 0 <= threads <= 64:
        raise UsageError("blockstore mount: --threads takes 0 to 64")
    mp = mount(args.pool, args.mountpoint, foreground=args.foreground, read_only=args.read_only,
               allow_other=args.allow_other, threads=threads, direct=not args.no_direct,
               map_writes=not args.no_write_map, access=_access(args), metrics=args.metrics,
               node=args.node, hold=args.on_fence == "hold", parallel_writes=not args.serial_writes)
    if not args.foreground:
        log = log_path(args.pool, mp)
        done(args, {"pool": os.path.abspath(args.pool), "mountpoint": mp, "log": log},
             f"mounted {os.path.abspath(args.pool)} at {mp} (log {log})")
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
