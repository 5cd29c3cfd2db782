"""The base of a filter over a store: every call handed on to the store below (``next``), so a
filter overrides only what it changes, as nbdkit's filters are handed ``next_ops``."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import Buffer, Reader, Store

if TYPE_CHECKING:
    import numpy as np

    from ..native import DirectTable


class PassThrough:
    """A store that is the store ``next``, call for call."""

    def __init__(self, next: Store) -> None:
        self.next = next

    @property
    def concurrent_copy(self) -> bool:
        return self.next.concurrent_copy

    @property
    def verifies(self) -> bool:
        return self.next.verifies

    @property
    def unverified(self) -> Reader:
        """The store below's unchecked view: a filter changes writes or checks reads of its own,
        and an unchecked reader reads past it (it only reads)."""
        return self.next.unverified

    def pread(self, offset: int, length: int) -> bytes:
        return self.next.pread(offset, length)

    def readinto(self, buf: memoryview, offset: int) -> int:
        return self.next.readinto(buf, offset)

    def read_multi(self, buf: memoryview, offsets: "np.ndarray", lengths: "np.ndarray") -> None:
        self.next.read_multi(buf, offsets, lengths)

    def pwrite(self, data: Buffer, offset: int) -> None:
        self.next.pwrite(data, offset)

    def cow(self, src_off: int, dst_off: int, length: int, data: Buffer | None, start: int) -> None:
        self.next.cow(src_off, dst_off, length, data, start)

    def copy(self, src_off: int, dst_off: int, length: int) -> None:
        self.next.copy(src_off, dst_off, length)

    def punch(self, offset: int, length: int) -> None:
        self.next.punch(offset, length)

    def release(self, offset: int, length: int) -> None:
        self.next.release(offset, length)

    def sync(self) -> None:
        self.next.sync()

    def block_status(self, offset: int, length: int) -> tuple[int, int]:
        return self.next.block_status(offset, length)

    def publish_table(self, table: "DirectTable", **kw: Any) -> None:
        self.next.publish_table(table, **kw)
