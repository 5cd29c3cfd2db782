"""Zero detection: an all-zero write to a hole allocates nothing."""
from __future__ import annotations

import numpy as np


def is_zero(data: bytes | bytearray | memoryview) -> bool:
    """True when every byte of ``data`` is zero. Real data rarely starts with zeros, so the
    first bytes are probed before the whole buffer is scanned."""
    arr = np.frombuffer(data, np.uint8)
    if arr[:64].any():
        return False
    n8 = len(arr) & ~7
    return not (arr[:n8].view(np.uint64).any() or arr[n8:].any())
