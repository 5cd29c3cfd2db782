"""The parser's shape: one way to declare a command (help, example, --json), argument types that
read sizes as people write them, and the global options every command accepts in any place."""
from __future__ import annotations

import argparse
import os
from typing import Any

from ..errors import InvalidArgument
from ..fence import ON_FENCE
from ..sizes import parse_size

SIZE = "bytes, or a number with K, M, G, T or P (powers of 1024): 10G, 512M"


class UsageError(Exception):
    """A command line that cannot be run: exit 2, one line."""


class Parser(argparse.ArgumentParser):
    """Errors become UsageError (one line, exit 2) instead of argparse's usage dump and exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


class _Help(argparse.RawDescriptionHelpFormatter):
    """Examples keep their lines; an option with a default worth saying shows it (not False or
    None, and not twice where its help already names it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS, []) and "default" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


def size(text: str) -> int:
    try:
        return parse_size(text)
    except InvalidArgument as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def lu_size(text: str) -> int:
    """An LU's size: whole 512-byte sectors (0: an empty LU, grown later)."""
    try:
        n = parse_size(text, allow_zero=True)
    except InvalidArgument as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if n % 512:
        raise argparse.ArgumentTypeError(f"an LU's size is a multiple of 512 bytes, not {n}")
    return n


def offset(text: str) -> int:
    try:
        return parse_size(text, what="offset", allow_zero=True)
    except InvalidArgument as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def length(text: str) -> int:
    try:
        return parse_size(text, what="length", allow_zero=True)
    except InvalidArgument as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def fraction(text: str) -> float:
    """``0.8`` or ``80%``: a bare number is a fraction, so ``1.5`` is refused, not read as 1.5%."""
    try:
        v = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a fraction or percentage: {text!r}") from None
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction in (0, 1] or a percentage in (0%, 100%]")
    return v


def group(top: Any, name: str, help: str, dest: str = "cmd") -> Any:
    """A command group (``pool``, ``lu``...): its subcommands' action; they land in ``args.<dest>``
    (a group inside a group needs its own)."""
    p = top.add_parser(name, help=help, description=help)
    return p.add_subparsers(dest=dest, required=True, metavar="COMMAND", parser_class=Parser)


def command(sub: Any, name: str, help: str, *examples: str, json: bool = False) -> argparse.ArgumentParser:
    """One command: its help line (also its description), examples shown by ``--help`` and in the
    man page, and ``--json`` when it prints a record."""
    lines = [e if "blockstore " in e else f"blockstore {e}" for e in examples]  # a pipe names it itself
    epilog = EXAMPLES + "\n".join(f"  {e}" for e in lines) if examples else None
    p: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help, epilog=epilog,
                                                formatter_class=_Help)
    if json:
        p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


EXAMPLES = "examples:\n"


def examples(p: argparse.ArgumentParser) -> list[str]:
    """The example command lines ``command`` gave ``p`` (its epilog's lines)."""
    epilog = p.epilog or ""
    return [line.strip() for line in epilog[len(EXAMPLES):].splitlines()] if epilog.startswith(EXAMPLES) else []


def commands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every command's parser under ``parser`` (the leaves), in the order of the help."""
    out: list[argparse.ArgumentParser] = []
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for child in dict.fromkeys(a.choices.values()):  # an alias maps to the same parser
                out += commands(child) or [child]
    return out


#: Options accepted before the command or anywhere after it: (flags, what add_argument takes).
GLOBAL_OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("--pool",), {"metavar": "DIR", "help": "the pool's directory (default: $BLOCKSTORE_POOL)"}),
    (("-v", "--verbose"), {"action": "store_true", "help": "log what happens, and show where an internal error "
                                                           "came from"}),
    (("-q", "--quiet"), {"action": "store_true", "help": "no progress bars, no line saying what a change did"}),
    (("--json",), {"action": "store_true", "help": "print results as JSON (a change: the object it made or changed)"}),
    (("--progress",), {"action": "store_true", "help": "show progress bars even when stderr is no terminal"}),
    (("--no-progress",), {"action": "store_true", "help": "never show progress bars"}),
]


def add_globals(parser: argparse.ArgumentParser) -> None:
    """The global options on the top-level parser, with their real defaults."""
    for flags, kw in GLOBAL_OPTIONS:
        if flags == ("--pool",):
            kw = {**kw, "default": os.environ.get("BLOCKSTORE_POOL")}
        parser.add_argument(*flags, **kw)


def everywhere(top: argparse.ArgumentParser) -> None:
    """Give every command the global options, so they may follow it as well as precede it. A
    command's own option of the same name (bench --json FILE) stays its own; a global one given
    after the command defaults to nothing there (SUPPRESS), so it never undoes one given before."""
    for leaf in commands(top):
        taken = {o for a in leaf._actions for o in a.option_strings}
        for a in leaf._actions:
            if isinstance(a, argparse._StoreTrueAction) and any(a.option_strings == list(f) for f, _ in GLOBAL_OPTIONS):
                a.default = argparse.SUPPRESS  # the command's own --json: given before it counts too
        for flags, kw in GLOBAL_OPTIONS:
            if not taken.intersection(flags):
                leaf.add_argument(*flags, **{**kw, "help": argparse.SUPPRESS}, default=argparse.SUPPRESS)


def on_fence(parser: argparse.ArgumentParser, goes_with: str | None) -> None:
    """The choice for a write a node may not make for want of a renewed lease (fence.ON_FENCE,
    cluster/serving.py): the option ``--on-fence``, a mount's (given with ``goes_with``) or, with
    ``goes_with`` None, an LU's own, over its mount's (``mount``: none of its own)."""
    whose = f"with {goes_with}, " if goes_with else "this LU's own choice over the node's mount: "
    parser.add_argument("--on-fence", choices=ON_FENCE + (("mount",) if goes_with is None else ()),
                        default="error" if goes_with else None,
                        help=f"{whose}a write while the node cannot show a renewed lease fails at once (ESTALE"
                             + (", default" if goes_with else "") + ") or waits up to the cluster's timeout for a "
                             "renewal (hold)" + ("" if goes_with else "; mount: the mount's --on-fence"))
