"""Which Python FUSE binding serves the mount.

Both speak fusepy's API. mfusepy drives libfuse 3 (requests up to 1 MiB, ``lseek``); fusepy
drives libfuse 2 (128 KiB requests at most). ``BLOCKSTORE_FUSE=fusepy`` picks the latter; the
default is the one ``blockstore bench`` measured faster (docs/fuse.md).
"""
from __future__ import annotations

import ctypes
import os
import signal as _signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

NAME = os.environ.get("BLOCKSTORE_FUSE", "mfusepy")

if NAME == "fusepy":
    import fuse as _fusemod  # fusepy's module; this folder is no package named fuse, so no shadowing
    LIBFUSE = 2
else:
    NAME = "mfusepy"
    # mfusepy prefers libfuse 2 when both are installed; libfuse 3 is what makes it worth having.
    os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
    # before libfuse loads: the engine answers opens (parallel writes to one file, no flush on close)
    from blockstore.native import offer_open_reply
    offer_open_reply()
    import mfusepy as _fusemod  # type: ignore[import-not-found, no-redef]
    LIBFUSE = _fusemod.fuse_version_major

FUSE = _fusemod.FUSE
Operations = _fusemod.Operations
FuseOSError = _fusemod.FuseOSError


def caller_uid() -> int:
    """The user id of the process whose request is being served (inside a callback)."""
    return int(_fusemod.fuse_get_context()[0])


@contextmanager
def callbacks_replaced(install: Callable[[dict[str, int]], dict[str, int]]) -> Iterator[None]:
    """While mounting, let ``install`` swap callbacks in the operations table the binding hands
    to libfuse: it gets the addresses of the binding's own read, write and fsync callbacks and returns
    the addresses to register instead (mfusepy only; with fusepy nothing is swapped)."""
    if NAME != "mfusepy":
        yield
        return
    real = _fusemod.fuse_main_real
    kept: list[object] = []  # the binding's callbacks must outlive the mount: C calls them

    def main(argc, argv, ops_p, size, data):  # type: ignore[no-untyped-def]
        ops = ops_p.contents
        types = dict(type(ops)._fields_)
        originals = {}
        for name in ("read", "write", "fsync"):
            kept.append(getattr(ops, name))
            originals[name] = ctypes.cast(getattr(ops, name), ctypes.c_void_p).value or 0
        for name, address in install(originals).items():
            setattr(ops, name, types[name](address))
        return real(argc, argv, ops_p, size, data)

    _fusemod.fuse_main_real = main
    try:
        yield
    finally:
        _fusemod.fuse_main_real = real


#: Where libfuse's fuse_file_info keeps the file handle.
FH_OFFSET = _fusemod.fuse_file_info.fh.offset


def current_session() -> int:
    """Inside a callback: the address of the libfuse instance serving it (for ``stop_session``)."""
    return int(_fusemod._libfuse.fuse_get_context().contents.fuse or 0)


def stop_session(address: int) -> None:
    """Make the loop of libfuse instance ``address`` return, as libfuse's own SIGTERM handler
    does but with a clean exit code; it returns once one more request has been served."""
    _fusemod._libfuse.fuse_exit(ctypes.c_void_p(address))


@contextmanager
def signals_kept() -> Iterator[None]:
    """While mounting, keep the binding from setting SIGINT's handler to the default (both
    bindings do, so that libfuse installs its own, which ends the loop with an error code): the
    caller's handler stays (fuse/mount.py)."""
    real = _fusemod.signal

    def keep(sig, handler):  # type: ignore[no-untyped-def]
        return _signal.getsignal(sig)

    _fusemod.signal = keep
    try:
        yield
    finally:
        _fusemod.signal = real
