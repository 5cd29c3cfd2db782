"""The data path's fence as a store (fence.py, layer 2): a filter that asks ``may_write()``
before every call that changes the store below (write, copy on write, copy, punch) and lets it
through only if that returns; it raises Fenced when the writer may no longer write (a cluster
node that lost the LU, or cannot show a renewed lease). Reads pass untouched. The C direct path
does not come through here: its table's fence word (LU.fence_writes) sends every write after the
deadline to Python, and so here."""
from __future__ import annotations

from collections.abc import Callable

from . import Buffer, Store
from .filter import PassThrough


class FencedStore(PassThrough):
    def __init__(self, next: Store, may_write: Callable[[], None]) -> None:
        super().__init__(next)
        self.may_write = may_write

    def pwrite(self, data: Buffer, offset: int) -> None:
        self.may_write()
        self.next.pwrite(data, offset)

    def cow(self, src_off: int, dst_off: int, length: int, data: Buffer | None, start: int) -> None:
        self.may_write()
        self.next.cow(src_off, dst_off, length, data, start)

    def copy(self, src_off: int, dst_off: int, length: int) -> None:
        self.may_write()
        self.next.copy(src_off, dst_off, length)

    def punch(self, offset: int, length: int) -> None:
        self.may_write()
        self.next.punch(offset, length)
