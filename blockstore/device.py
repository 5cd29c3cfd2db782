"""The block-device contract every layer of the data path implements (the thin LU now; the
mirror and any cache stacked on it later), in the manner of s3backer's block store interface."""
from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class BlockDevice(Protocol):
    """Byte-addressed storage of a fixed ``size``.

    - ``read(offset, length)`` returns exactly ``length`` bytes; never-written ranges read as zeros.
    - ``write(offset, data)`` stores ``data``; it may sit in a volatile cache until ``flush``.
    - ``discard(offset, length)`` makes the range read as zeros and frees what it can.
    - ``flush()`` makes every acknowledged write and discard durable (survives SIGKILL or power loss
      of the host's page cache no longer matters once flush returns).
    Out-of-range I/O raises OutOfRange; writing a read-only device raises ReadOnly; all errors are
    BlockstoreError subclasses carrying an errno.
    """

    @property
    def size(self) -> int: ...

    @property
    def readonly(self) -> bool: ...

    def read(self, offset: int, length: int) -> bytes: ...

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None: ...

    def discard(self, offset: int, length: int) -> None: ...

    def flush(self) -> None: ...
