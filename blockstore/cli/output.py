"""What commands print: JSON or text, one table helper, one line per change, progress bars."""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import AlreadyExists, InvalidArgument
from ..sizes import format_size


def emit(args: argparse.Namespace, obj: Any, human: str) -> None:
    """A record: JSON with --json, else the text."""
    if getattr(args, "json", False):
        print(json.dumps(obj, indent=2, sort_keys=True, default=str))
    elif human:
        print(human)


def done(args: argparse.Namespace, obj: Any, line: str) -> None:
    """What a change did: ``obj`` as JSON with --json, else ``line`` (nothing with --quiet)."""
    if getattr(args, "json", False) or not getattr(args, "quiet", False):
        emit(args, obj, line)


def fields(d: dict[str, Any]) -> str:
    """A record's set fields as ``key=value`` words (event lines)."""
    return " ".join(f"{k}={v}" for k, v in d.items() if v is not None)


def columns(head: list[str], body: list[list[str]], empty: str = "") -> str:
    """The one table helper: left-aligned columns two spaces apart; ``empty`` when there are no rows."""
    if not body and empty:
        return empty
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *body])


def when(t: float | None) -> str:
    """A time stamp (seconds since the epoch) in local time, or ``-``."""
    return "-" if t is None else datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def sized(n: int) -> str:
    """Bytes in words, exact too when it is not a round figure: ``4 MiB (4,194,304 bytes)``."""
    return f"{format_size(n)} ({n:,} bytes)"


Step = Callable[[int, int], None]


@contextmanager
def progress(args: argparse.Namespace, label: str, total: int = 0, unit_bytes: int = 1) -> Iterator[Step]:
    """A progress bar on stderr (tqdm) for long work; yields ``step(done, total)``, both counted in
    units of ``unit_bytes`` bytes (1 for bytes, the extent size for extents), shown in bytes with
    rate and ETA. Shown when stderr is a terminal, or with --progress; never with --no-progress,
    --quiet or --json. The bar ends as one final line."""
    from tqdm import tqdm
    off = any(getattr(args, k, False) for k in ("no_progress", "quiet", "json"))
    disable = True if off else (False if getattr(args, "progress", False) else None)  # None: only on a tty
    bar = tqdm(total=total * unit_bytes or None, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
               disable=disable, file=sys.stderr, leave=True, dynamic_ncols=True, mininterval=0.2)

    def step(d: int, n: int) -> None:
        if n and bar.total != n * unit_bytes:
            bar.total = n * unit_bytes
        bar.update(d * unit_bytes - bar.n)
    try:
        yield step
    finally:
        bar.close()


def binary_stdout(what: str) -> None:
    """Refuse to write an LU's bytes onto a terminal, as rbd export does."""
    if sys.stdout.isatty():
        raise InvalidArgument(f"refusing to write {what} to a terminal: redirect it (> FILE, | CMD) or name a file")


@contextmanager
def replacing(path: str, force: bool) -> Iterator[str]:
    """A temporary name beside the file ``path`` (a link's target, not the link) to write,
    renamed over it when the block completes and removed when it does not: an interrupted export
    leaves no file that looks whole, and a failed one leaves nothing that a retry would have to
    --force. A directory is refused."""
    if os.path.isdir(path):
        raise InvalidArgument(f"{path} is a directory: name a file to write")
    if os.path.lexists(path) and not force:
        raise AlreadyExists(f"{path} exists; add --force to overwrite it")
    target = os.path.realpath(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".part", dir=os.path.dirname(target))
    mask = os.umask(0)
    os.umask(mask)
    os.fchmod(fd, 0o666 & ~mask)  # as the file open() would have made
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def is_stream(path: str) -> bool:
    """``-`` (stdin or stdout), or a path that is no regular file (nor a directory, which the
    file's path refuses in words): a pipe, /dev/stdout."""
    if path == "-":
        return True
    try:
        mode = os.stat(path).st_mode
        return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))
    except FileNotFoundError:
        return False
