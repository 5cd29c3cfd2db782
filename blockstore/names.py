"""LU names: they become file names under a mount and keys in the metadata, so they are kept
to a safe alphabet. A snapshot is addressed as ``LU@SNAP``."""
from __future__ import annotations

import re

from .errors import InvalidArgument

MAX_NAME = 64
# fullmatch, not "$": "$" also matches before a final newline, which would let "x\n" in
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]*", re.ASCII)


def check_name(name: str, what: str = "LU name") -> str:
    """Return ``name`` if it is a valid LU (or snapshot) name, else raise InvalidArgument."""
    if not isinstance(name, str) or name == "":
        raise InvalidArgument(f"{what} must not be empty")
    if len(name) > MAX_NAME:
        raise InvalidArgument(f"{what} is longer than {MAX_NAME} characters")
    if ".." in name or not _NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"{what} {name!r} is not valid: use letters, digits and . _ + - (no spaces, '/', '..' or '@')"
        )
    return name


def split_snapshot(ref: str) -> tuple[str, str | None]:
    """``'disk@s1'`` -> ``('disk', 's1')``; ``'disk'`` -> ``('disk', None)``; both parts checked."""
    if isinstance(ref, str) and ref.count("@") == 1:
        lu, snap = ref.split("@")
        return check_name(lu), check_name(snap, "snapshot name")
    return check_name(ref), None


def snapshot_name(lu: str, snap: str) -> str:
    return f"{check_name(lu)}@{check_name(snap, 'snapshot name')}"
