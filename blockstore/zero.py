"""Zero detection: an all-zero write to a hole allocates nothing (done in C, without the GIL)."""
from __future__ import annotations

from .native import is_zero

__all__ = ["is_zero"]
