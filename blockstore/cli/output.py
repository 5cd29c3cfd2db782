"""What commands print: JSON or text, one table helper, one line per change, progress bars."""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

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
