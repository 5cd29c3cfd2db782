"""The ``blockstore`` command: a thin adapter over the Python API.

One module per command group (pool, lu, services, mount, cluster), each with ``add(top)`` for its
parsers and ``run(args, ...)``; the parser is built and the command dispatched here.

Exit codes: 0 success; 1 a refused request (one line on stderr, the pool unchanged); 2 a usage
error; ``pool check`` adds 3 (leaks only) and 4 (corruption), see check.py.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from .. import __version__
from ..cluster.bridge import attach
from ..errors import BlockstoreError, PoolCorrupt
from ..pool import Pool
from . import cluster, lu, mount, pool, services
from .args import Parser, UsageError, add_globals, command, commands, everywhere, examples
from .output import fields

SHELLS = ("bash", "zsh", "tcsh")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="blockstore", description="Thin-provisioned virtual block storage: a pool of LUs with "
                                              "snapshots, clones and mirrors, mounted as files.",
               epilog="Start with: blockstore --pool DIR pool create --size 10G; then `blockstore COMMAND --help`.")
    p.add_argument("--version", action="version", version=f"blockstore {__version__}")
    add_globals(p)
    top = p.add_subparsers(dest="group", metavar="COMMAND", parser_class=Parser)
    pool.add(top)
    lu.add(top)
    services.add(top)
    mount.add(top)
    cluster.add(top)
    b = command(top, "bench", "measure the engine against a plain file and QEMU's FUSE export",
                "bench --quick --only core,fuse --save /tmp/b.json", "bench --chart-from bench/results/bench.json")
    b.add_argument("--quick", action="store_true", help="small sizes, done within minutes")
    b.add_argument("--save", metavar="FILE", help="also write the results as JSON to FILE (--json prints them)")
    b.add_argument("--png", metavar="FILE", help="write a chart (default: beside --save)")
    b.add_argument("--dir", help="where to run (default: a temporary directory under the current one)")
    b.add_argument("--chart-from", metavar="JSON", help="draw the chart of an earlier run's JSON (with --png: "
                                                        "where; default beside it), measuring nothing")
    b.add_argument("--only", metavar="GROUPS",
                   help="comma-separated groups to run: core, mirror, services, cluster, serving, etcd, fuse, "
                        "fuse-mirror, first-writes, live, db (default: all)")
    c = command(top, "completion", "print a shell completion script", "completion bash > "
                "/etc/bash_completion.d/blockstore", "completion zsh > ~/.zfunc/_blockstore")
    c.add_argument("shell", choices=SHELLS, help="the shell")
    command(top, "manpage", "print the manual page (roff) made from this parser", "manpage | man -l -")
    everywhere(p)
    return p


def completion(shell: str) -> str:
    """The completion script for ``shell``, made from the parser (shtab: complete.py)."""
    from .complete import completion as made
    return made(build_parser(), shell)


def manpage() -> str:
    """The manual page, made from the parser (argparse-manpage)."""
    from argparse_manpage.manpage import Manpage
    parser = build_parser()
    parser.man_short_description = "thin-provisioned virtual block storage"  # type: ignore[attr-defined]
    every = [e for p in commands(parser) for e in examples(p)]
    sections = [("EXAMPLES", ".nf\n" + "\n".join(e.replace("\\", "\\\\").replace("-", "\\-") for e in every)
                 + "\n.fi"),
                ("ENVIRONMENT", ".TP\n.B BLOCKSTORE_POOL\nthe pool's directory when --pool is not given\n"
                                ".TP\n.B BLOCKSTORE_SAFE_POOLS\npools (colon-separated, or *) that root works on "
                                "although another user owns their directory"),
                ("EXIT STATUS", "0 success; 1 a refused request (one line on stderr, the pool unchanged); 2 a usage "
                                "error; 3 leaks only (pool check), a degraded cluster (cluster status); 4 corruption, "
                                "bad blocks left, a damaged data file (pool check, pool scrub, pool failgrp list, "
                                "lu verify), a cluster down; 5 a degraded mirror: a copy out of service or lacking "
                                "extents (pool check, pool scrub, pool failgrp list).")]
    parser._manpage = [{"heading": h, "content": c} for h, c in sections]  # type: ignore[attr-defined]
    return str(Manpage(parser))


#: Commands that only look: the pool is opened read-only for them, so nothing on disk changes
#: (no session file, no recovery, no reclaim); each list/show of a group counts.
LOOKS = {("pool", "status"), ("lu", "export"), ("lu", "read"), ("lu", "status"), ("lu", "diff"),
         ("lu", "export-diff"), ("lu", "du")}


def _only_looks(args: argparse.Namespace) -> bool:
    cmd = (args.group, getattr(args, "cmd", None))
    if cmd == ("pool", "check"):
        return not args.repair
    if cmd == ("pool", "failgrp"):
        return bool(args.sub == "list")
    return cmd in LOOKS or cmd[1] in ("list", "show")


def run(args: argparse.Namespace) -> int:
    if args.group == "bench" and args.chart_from:
        from blockstore_bench.run import replot
        return int(replot(args.chart_from, args.png))
    if args.group == "bench":
        from blockstore_bench.run import main as bench_main
        return int(bench_main(quick=args.quick, json_path=args.save, png_path=args.png, workdir=args.dir,
                              only=args.only.split(",") if args.only else None, as_json=args.json))
    if args.group == "completion":
        sys.stdout.write(completion(args.shell))
        return 0
    if args.group == "manpage":
        sys.stdout.write(manpage())
        return 0
    if args.group == "umount":
        return mount.run(args)
    if not args.pool:
        raise UsageError("blockstore: no pool given: use --pool DIR or set BLOCKSTORE_POOL")
    if args.group == "mount":
        return mount.run(args)
    if args.group in ("cluster", "node", "ffdc"):
        return cluster.run(args)
    if args.group == "pool" and args.cmd == "create":
        return pool.create(args)
    with Pool.open(args.pool, readonly=_only_looks(args)) as p:
        attach(p, origin="cli")
        if args.verbose:  # -v: every engine event this command raises, as it happens
            p.listeners.append(lambda kind, info: logging.getLogger("blockstore.events").info(
                "%s %s", kind, fields(info)))
        runner: Any = {"pool": pool.run, "lu": lu.run}.get(args.group, services.run)
        return int(runner(args, p))


def main(argv: list[str] | None = None) -> int:
    from ..native import fault_exit
    fault_exit("blockstore: memory fault reading the pool (SIGBUS/SIGSEGV): its metadata may be damaged; "
               "run `blockstore pool check`\n", 4)
    parser = build_parser()
    args = None
    try:
        args = parser.parse_args(argv)
        if args.group is None:
            parser.print_help()
            return 2
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


__all__ = ["build_parser", "commands", "completion", "examples", "main", "manpage"]
