"""blockstore: a virtual block-storage engine. Thin-provisioned, extent-mapped logical units in
a storage pool, with snapshots and copy-on-write clones.

    import blockstore
    with blockstore.Pool.open("/tmp/pool", create=True, size="10G") as pool:
        with pool.create_lu("disk0", "4G") as lu:
            lu.write(0, b"hello")
            lu.flush()

``Pool`` and its ``LU`` handles (api.py) are the public surface, documented in docs/api.md.
"""
from .api import LU, Pool
from .device import BlockDevice
from .errors import (AlreadyExists, BlockstoreError, Busy, InvalidArgument, NotAPool, NotFound,
                     Fenced, OutOfRange, PoolCorrupt, PoolFull, ReadOnly, Unsafe)
from .sizes import format_size, parse_size

__version__ = "0.1.0"
__all__ = ["Pool", "LU", "BlockDevice", "parse_size", "format_size", "BlockstoreError", "InvalidArgument",
           "OutOfRange", "NotFound", "NotAPool", "AlreadyExists", "ReadOnly", "Busy", "PoolFull", "PoolCorrupt",
           "Unsafe", "Fenced"]
