"""Which Python FUSE binding serves the mount.

Both speak fusepy's API. mfusepy drives libfuse 3 (requests up to 1 MiB, ``lseek``); fusepy
drives libfuse 2 (128 KiB requests at most). ``BLOCKSTORE_FUSE=fusepy`` picks the latter; the
default is the one ``blockstore bench`` measured faster (README, "FUSE").
"""
from __future__ import annotations

import os

NAME = os.environ.get("BLOCKSTORE_FUSE", "mfusepy")

if NAME == "fusepy":
    import fuse as _fusemod  # fusepy's module; this folder is no package named fuse, so no shadowing
    LIBFUSE = 2
else:
    NAME = "mfusepy"
    # mfusepy prefers libfuse 2 when both are installed; libfuse 3 is what makes it worth having.
    os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
    import mfusepy as _fusemod  # type: ignore[import-not-found, no-redef]
    LIBFUSE = _fusemod.fuse_version_major

FUSE = _fusemod.FUSE
Operations = _fusemod.Operations
FuseOSError = _fusemod.FuseOSError
