"""``blockstore pool ...``: create, grow and inspect the pool; its failure groups; check and scrub."""
from __future__ import annotations

import argparse
from typing import Any

from ..check import CORRUPT, check, groups_verdict
from ..pool import Pool
from ..records import PoolStatus
from ..sizes import format_size
from .args import SIZE, command, fraction, group, size
from .output import done, emit, progress


def add(top: Any) -> None:
    sub = group(top, "pool", "create and inspect the pool")
    c = command(sub, "create", "make a new pool in an empty or missing directory",
                "--pool /srv/pool pool create --size 100G",
                "--pool /srv/pool pool create --size 1T --mirror-dir /mnt/disk2/pool-fg1", json=True)
    c.add_argument("--size", type=size, required=True, help=f"capacity of the pool's data file ({SIZE})")
    c.add_argument("--extent-size", type=size, default="1M", metavar="SIZE",
                   help="the unit of allocation and copy on write, a power of two from 64K to 16M")
    c.add_argument("--threshold", type=fraction, default="80%",
                   help="warn when this much is allocated (0.8 or 80%%)")
    c.add_argument("--mirror-dir", metavar="DIR", help="a second failure group for mirrored LUs (another disk)")
    command(sub, "status", "capacity, allocation, provisioned size and overcommit", "pool status --json", json=True)
    g = command(sub, "grow", "make the pool larger (it never shrinks)", "pool grow --size 200G", json=True)
    g.add_argument("--size", type=size, required=True, help=f"the new capacity ({SIZE})")
    t = command(sub, "set", "change a pool setting", "pool set --threshold 90%", json=True)
    t.add_argument("--threshold", type=fraction, required=True, help="warn when this much is allocated (0.9 or 90%%)")
    fgp = group(sub, "failgrp", "failure groups: where the copies of mirrored LUs live", dest="sub")
    f = command(fgp, "add", "add the second failure group (ideally another disk)", "pool failgrp add /mnt/disk2/fg1",
                json=True)
    f.add_argument("dir", help="an empty or missing directory for the copies")
    command(fgp, "list", "the failure groups, their state and what they missed; exit 0 all ok, 4 a data file "
                         "damaged, 5 degraded", "pool failgrp list", json=True)
    r = command(fgp, "replace", "rebuild a lost or foreign copy from the other one, then verify it",
                "pool failgrp replace /mnt/new-disk/fg1", json=True)
    r.add_argument("dir", nargs="?", help="where the new copy goes (default: where the old one was)")
    r.add_argument("--group", dest="fg", type=int, choices=(0, 1), default=1, help="the failure group to rebuild")
    command(sub, "resync", "copy to each copy of the mirror what it lacks (a failed copy whose file is back "
                           "first goes back in service); LUs another process holds are resynced by it",
            "pool resync", json=True)
    k = command(sub, "scrub", "check every block of every mirrored extent against its checksum; exit 0 clean, "
                              "4 bad, unrecoverable or undecided blocks left (or a data file damaged), 5 degraded",
                "pool scrub --repair", json=True)
    k.add_argument("--repair", action="store_true",
                   help="rewrite a block proven bad from a copy proven good (nothing else is written)")
    k = command(sub, "check", "verify every metadata invariant; exit 0 clean, 3 leaks only, 4 corrupt, 5 degraded",
                "pool check", "pool check --repair", json=True)
    k.add_argument("--repair", action="store_true", help="give back leaked extents (corruption is never guessed at)")


def run(args: argparse.Namespace, pool: Pool) -> int:
    cmd = args.cmd
    if cmd == "status":
        st = pool.status()
        emit(args, st, _status_text(st))
    elif cmd == "grow":
        pool.grow(args.size)
        st = pool.status()
        done(args, st, f"pool is now {format_size(st['capacity'])}")
    elif cmd == "set":
        pool.set_threshold(args.threshold)
        st = pool.status()
        done(args, st, f"threshold set to {st['threshold'] * 100:.0f}%")
    elif cmd == "check":
        rep = check(pool, repair=args.repair)
        lines = [f"error: {e}" for e in rep["errors"]] + [f"leak: {e}" for e in rep["leaks"]]
        lines += [f"degraded: {e}" for e in rep["degraded"]]
        lines += [f"repaired: {e}" for e in rep["repaired"]]
        if rep.get("reclaimable"):
            lines.append(f"reclaimable: {rep['reclaimable']} extent(s) held by sessions that died "
                         "(the next command that changes the pool returns them)")
        lines += [f"not repaired: {rep['not_repaired']}"] if "not_repaired" in rep else []
        lines.append("clean" if rep["clean"] else f"not clean (code {rep['code']})")
        emit(args, rep, "\n".join(lines))
        return int(rep["code"])
    elif cmd == "failgrp":
        return _failgrp(args, pool)
    elif cmd == "resync":
        with progress(args, "resync", unit_bytes=pool.extent_size) as step:
            n = pool.resync(progress=step)
        rows = pool.failure_groups()
        done(args, {"copied": n, "groups": rows}, f"resynced {n} extent(s); copies: "
                                                  + ", ".join(f"fg{r['group']} {r['state']}" for r in rows))
    elif cmd == "scrub":
        from ..scrub import scrub
        with progress(args, "scrub", unit_bytes=pool.extent_size) as step:
            rep = scrub(pool, repair=args.repair, progress=step)
        lines = [f"scrubbed {rep['extents']} extent(s) in copies {rep['copies']}, {format_size(rep['bytes'])} "
                 f"at {rep['mib_per_s']:.0f} MiB/s"]
        lines += [f"bad: extent {b['extent']} copy {b['copy']} ({b['blocks']} block(s))" for b in rep["bad"]]
        lines += [f"unrecoverable: extent {e} (no copy matches its checksum)" for e in rep["unrecoverable"]]
        lines += [f"undecided: extent {e} (copies differ, no checksum to decide)" for e in rep["undecided"]]
        if rep["in_use"]:
            lines.append(f"not judged: {len(rep['in_use'])} extent(s) open for writing in another process")
        code, damage, degraded = groups_verdict(rep["groups"])
        lines += [f"error: {e}" for e in damage] + [f"degraded: {e}" for e in degraded]
        lines.append(f"repaired {rep['repaired']} block(s)" if rep["repaired"] else ("clean" if rep["clean"] else "not clean"))
        emit(args, rep, "\n".join(lines))
        return CORRUPT if not rep["clean"] else code
    return 0


def _failgrp(args: argparse.Namespace, pool: Pool) -> int:
    if args.sub == "add":
        pool.add_failure_group(args.dir)
        done(args, pool.failure_groups(), f"failure group fg1 added at {args.dir}")
        return 0
    if args.sub == "replace":
        from ..scrub import replace
        with progress(args, f"rebuild fg{args.fg}", unit_bytes=pool.extent_size) as step:
            rep = replace(pool, args.fg, args.dir, progress=step)
        lines = [f"fg{rep['group']} rebuilt at {rep['path']}: {rep['extents']} extent(s) copied and verified"]
        lines += [f"unrecoverable: extent {e} (bad in the only copy left)" for e in rep["unrecoverable"]]
        if rep["unmirrored_lost"]:
            lines.append(f"lost: {rep['unmirrored_lost']} extent(s) of unmirrored LUs (no other copy; "
                         "they now read as zeros)")
        emit(args, rep, "\n".join(lines))
        return 4 if rep["unrecoverable"] else 0
    rows = pool.failure_groups()
    emit(args, rows, "\n".join(f"fg{r['group']}  {r['state']:<11} {r['dirty_extents']:>6} dirty  {r['path']}"
                               + (f"  ({r['problem']})" if r["problem"] else "") for r in rows))
    return groups_verdict(rows)[0]


def _status_text(s: PoolStatus) -> str:
    """Every percentage of the same whole: the capacity."""
    def pct(n: int) -> str:
        return f"{n / max(s['capacity'], 1) * 100:.1f}%"
    return "\n".join([
        f"pool        {s['path']}",
        f"capacity    {format_size(s['capacity'])}  (extents of {format_size(s['extent_size'])})",
        f"allocated   {format_size(s['allocated'])}  ({pct(s['allocated'])} of capacity)",
        f"reserved    {format_size(s['reserved'])}  ({pct(s['reserved'])}: held for thick LUs and uncommitted writes)",
        f"free        {format_size(s['free'])}  ({pct(s['free'])})",
        f"threshold   {s['threshold'] * 100:.0f}% of capacity allocated or reserved"
        f"{': EXCEEDED' if s['threshold_exceeded'] else ''} (now {s['used_fraction'] * 100:.1f}%)",
        f"provisioned {format_size(s['provisioned'])}  (overcommit {s['overcommit']:.2f}x)",
        f"LUs         {s['lus']}  snapshots {s['snapshots']}",
        f"metadata    {format_size(s['metadata_bytes'])}",
    ] + (["copies      " + ", ".join(f"fg{i} {st}" for i, st in enumerate(s["copies"]))
          + ("" if all(st == "ok" for st in s["copies"]) else "  (DEGRADED: pool failgrp list)")]
         if len(s["copies"]) > 1 else []))


def create(args: argparse.Namespace) -> int:
    """``pool create``: the one command with no pool to open yet."""
    with Pool.create(args.pool, args.size, extent_size=args.extent_size, threshold=args.threshold,
                     mirror_dir=args.mirror_dir) as pool:
        st = pool.status()
    done(args, st, f"created pool {st['path']}: {format_size(st['capacity'])} in extents of "
                   f"{format_size(st['extent_size'])}")
    return 0
