"""The storage stack under the LUs: stores of one interface, stacked.

    LU (lu.py)                logical extents -> physical extents (the extent map)
      |  the Store interface below, at physical byte offsets
    MirrorFile (mirror.py)    two copies; checksums, activity log, dirty log, degraded mode
      |  the same interface, once per copy
    DataFile (datafile.py)    one failure group's sparse file
    FailureGroups (groups.py) builds this stack and re-points it; nothing else assembles one
    CopyHealth (health.py)    each copy's state and what it lacks: one record for every process
    RedirectedCopy (redirect.py)  one copy read alone (read redirection), refusing what it lacks

A layer added later (the cluster's read redirection, an ownership fence) is another Store
wrapping the one below and handing each call on, and is put in place by ``FailureGroups``.

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

from typing import Protocol

#: block_status flags
DATA = 1
ZERO = 2
ALLOCATED = 4


class Store(Protocol):
    """A store of physical extents (the contract is in this module's docstring)."""

    def pread(self, offset: int, length: int) -> bytes: ...

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None: ...

    def punch(self, offset: int, length: int) -> None: ...

    def release(self, offset: int, length: int) -> None: ...

    def sync(self) -> None: ...

    def block_status(self, offset: int, length: int) -> tuple[int, int]: ...
