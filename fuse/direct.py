"""The direct path of a mount: reads, and writes into extents an LU already owns, served by C
callbacks (native/fastpath.h) through each open LU's translation table, without Python or the
GIL; everything else (filling a hole, copy-on-write, a whole extent of zeros, past the end, a
mirrored LU) falls back to the binding's Python callbacks. An fsync is the data file's sync,
done in C too, while the last flush left the LU nothing to commit (journal.py). With libfuse's
threads, direct requests then run in parallel on every core."""
from __future__ import annotations

from blockstore.lu import LU
from blockstore.native import fuse_direct_attach, fuse_direct_counts, fuse_direct_detach, fuse_direct_setup

from . import binding


class DirectPath:
    def __init__(self, *, map_writes: bool = True) -> None:
        """``map_writes``: see ``LU.direct_table``."""
        self.map_writes = map_writes

    def install(self, originals: dict[str, int]) -> dict[str, int]:
        """For binding.callbacks_replaced: C read, write and fsync first, the binding's as fallback."""
        read, write, fsync = fuse_direct_setup(binding.FH_OFFSET, originals["read"], originals["write"],
                                               originals["fsync"])
        return {"read": read, "write": write, "fsync": fsync}

    def attach(self, fh: int, lu: LU, stat: int = -1) -> None:
        """Serve file handle ``fh`` of ``lu`` directly, if its LU can be served so; count its
        requests under ``stat`` (native.fuse_stat) either way."""
        fuse_direct_attach(fh, lu.direct_table(map_writes=self.map_writes), stat)

    def detach(self, fh: int) -> None:
        fuse_direct_detach(fh)

    @staticmethod
    def counts() -> dict[str, int]:
        return fuse_direct_counts()
