"""Byte sizes as users write them: 512, 4K, 1M, 10G, 1T (powers of 1024)."""
from __future__ import annotations

import re
from fractions import Fraction

from .errors import InvalidArgument

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
# ASCII digits only (\d would take full-width ones), matched whole (no trailing newline)
_SIZE_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGTP]?)(?:I?B)?\s*", re.IGNORECASE | re.ASCII)
#: Larger than any pool or LU we accept (the extent index is 32 bits, the extent at most 16 MiB).
MAX_SIZE = 1 << 56


def parse_size(value: str | int, *, what: str = "size", allow_zero: bool = False) -> int:
    """Return a size in bytes from an int or a string such as ``10G``; raise InvalidArgument."""
    if isinstance(value, bool):
        raise InvalidArgument(f"{what}: not a size: {value!r}")
    if isinstance(value, int):
        n = value
    else:
        m = _SIZE_RE.fullmatch(str(value))
        if not m:
            raise InvalidArgument(f"{what}: not a size: {value!r} (use a number with an optional K, M, G, T suffix)")
        number, unit = m.groups()
        exact = Fraction(number) * _UNITS[unit.upper()]  # exact: a float rounds above 2^53
        if exact.denominator != 1:
            raise InvalidArgument(f"{what}: {value!r} is not a whole number of bytes")
        n = int(exact)
    if n < 0:
        raise InvalidArgument(f"{what}: must not be negative: {value!r}")
    if n == 0 and not allow_zero:
        raise InvalidArgument(f"{what}: must be greater than zero")
    if n > MAX_SIZE:
        raise InvalidArgument(f"{what}: {value!r} is larger than the maximum of {format_size(MAX_SIZE)}")
    return n


def format_size(n: int) -> str:
    """A size for people: ``1.5 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}".replace(".0 ", " ")
        n /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")
