"""blockstore: a virtual block-storage engine. Thin-provisioned, extent-mapped logical units in
a storage pool, with snapshots and copy-on-write clones.

    from blockstore import Pool
    with Pool.create("/tmp/pool", "10G") as pool:
        with pool.create_lu("disk0", "4G") as lu:
            lu.write(0, b"hello")
            lu.flush()
"""
from .device import BlockDevice
from .errors import (AlreadyExists, BlockstoreError, Busy, InvalidArgument, NotAPool, NotFound,
                     OutOfRange, PoolCorrupt, PoolFull, ReadOnly)
from .lu import LU
from .pool import Pool
from .sizes import format_size, parse_size

__version__ = "0.1.0"
__all__ = ["Pool", "LU", "BlockDevice", "parse_size", "format_size", "BlockstoreError", "InvalidArgument",
           "OutOfRange", "NotFound", "NotAPool", "AlreadyExists", "ReadOnly", "Busy", "PoolFull", "PoolCorrupt"]
