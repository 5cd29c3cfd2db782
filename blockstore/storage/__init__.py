"""The storage stack under the LUs: stores of one interface, stacked.

    LU (lu.py)                logical extents -> physical extents (the extent map)
      |  the Store interface below, at physical byte offsets
    MirrorFile (mirror.py)    two copies; checksums, activity log, dirty log, degraded mode
      |  the same interface, once per copy
    DataFile (datafile.py)    one failure group's sparse file
    FailureGroups (groups.py) builds this stack and re-points it; nothing else assembles one
    CopyHealth (health.py)    each copy's state and what it lacks: one record for every process
    RedirectedCopy (redirect.py)  one copy read alone (read redirection), refusing what it lacks
    FencedStore (fenced.py)   writes only while the writer may (a cluster node's data-path fence)

A layer added to the stack (read redirection, the ownership fence) is a filter: a store over
the one below that hands every call on (``PassThrough``, filter.py) except the ones it changes,
as nbdkit hands its filters ``next_ops``, and ``FailureGroups`` puts it in place.

The contract every store keeps (offsets and lengths in bytes of the store's physical space):

- ``pread(offset, length)`` returns exactly ``length`` bytes; a store that cannot is an OSError
  (EIO for a short or failed read). ``read_multi(buf, offsets, lengths)`` scatters several reads
  into one buffer (offset -1 reads zeros).
- ``pwrite(data, offset)`` writes all of ``data`` or raises OSError (ENOSPC: the file system is
  full; EIO: the device failed). Nothing written is durable before ``sync``.
- ``cow(src, dst, length, data, start)`` copies ``length`` bytes within one extent (whole
  blocks of 4 KiB for a mirror) with ``data`` (if any) laid over them at ``start``: the
  copy-on-write of a shared extent, or of the part of it a deferred copy still lacks; it never
  writes ``src``. ``copy(src, dst, length)`` is that with nothing laid over; a store whose
  ``concurrent_copy`` is true lets it run without the pool lock, beside other I/O (the filler
  of deferred copies uses it so, lu.py).
- ``punch(offset, length)`` makes a range read as zeros; ``release`` drops extents nothing
  references any more.
- ``sync()`` makes every write acknowledged so far durable, or raises OSError; once a sync has
  failed, every later one fails too (the kernel may have dropped the pages it could not write).
  ``dirty_data`` says whether there is anything to sync.
- ``block_status(offset, length)`` returns ``(flags, n)``: the first ``n`` bytes (1 <= n <=
  length) of the range share ``flags``, a sum of DATA (reads what was written), ZERO (reads as
  zeros) and ALLOCATED (takes space at this layer), as QEMU's block status answers it.
- ``publish_table(table, ...)`` points a C direct-path table (native/fastpath.h) at the store.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..native import Buffer as Buffer  # one definition of a byte buffer (the C layer's), re-exported

if TYPE_CHECKING:
    import numpy as np

    from ..native import DirectTable

#: block_status flags
DATA = 1
ZERO = 2
ALLOCATED = 4


class Reader(Protocol):
    """Where reads come from: a store, or a store's unverified reads."""

    def pread(self, offset: int, length: int) -> bytes: ...

    def read_multi(self, buf: memoryview, offsets: "np.ndarray", lengths: "np.ndarray") -> None: ...


class Store(Protocol):
    """A store of physical extents (the contract is in this module's docstring). Every member a
    caller uses is declared here, so a filter (filter.py) can hand each one on."""

    @property
    def concurrent_copy(self) -> bool:
        """Whether ``copy`` may run without the pool lock, beside other I/O."""

    @property
    def verifies(self) -> bool:
        """Whether reads are checked against checksums (a mirror's)."""

    @property
    def unverified(self) -> Reader:
        """The same store read without checks (for readers that cannot know the checksums)."""

    def pread(self, offset: int, length: int) -> bytes: ...

    def readinto(self, buf: memoryview, offset: int) -> int: ...

    def read_multi(self, buf: memoryview, offsets: "np.ndarray", lengths: "np.ndarray") -> None: ...

    def pwrite(self, data: Buffer, offset: int) -> None: ...

    def cow(self, src_off: int, dst_off: int, length: int, data: Buffer | None, start: int) -> None: ...

    def copy(self, src_off: int, dst_off: int, length: int) -> None: ...

    def punch(self, offset: int, length: int) -> None: ...

    def release(self, offset: int, length: int) -> None: ...

    def sync(self) -> None: ...

    def block_status(self, offset: int, length: int) -> tuple[int, int]: ...

    def publish_table(self, table: "DirectTable", *, unit: int, size: int, chunk: int, phys: list[Any],
                      direct: list[Any] | None, zero_slow: bool, map_writes: bool, serve: bool,
                      republish: "Callable[[], None]", verify: bool = False) -> None: ...
