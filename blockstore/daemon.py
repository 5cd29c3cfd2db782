"""Running a long-lived service (a mount, a cluster node) as a daemon with a readiness handshake:
the caller returns only once the service says it is ready, or with the reason it could not start."""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from .errors import BlockstoreError
from .pooldir import open_file


def daemonize(serve: Callable[[Callable[[], None]], None], logfile: str, what: str, *, root: str) -> None:
    """Run ``serve(ready)`` in a detached grandchild whose output goes to ``logfile`` (in the pool
    at ``root``, opened as pooldir.open_file opens); return once it calls ``ready()``, or raise
    with the first line it reported (or its exit) before that.

    Forking twice leaves no zombie for a long-lived caller (one that starts several) to reap.
    Nothing that holds an LMDB environment may be opened before this call: the child must open
    its own after the fork.
    """
    try:
        log_start = os.path.getsize(logfile)
    except OSError:
        log_start = 0
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        out = open_file(root, logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s",
                            force=True)
        code = 0
        try:
            serve(lambda: _tell(w, b"ok\n"))
        except BaseException as e:  # tell the waiting parent why, then leave
            logging.getLogger("blockstore").error("%s stopped: %s", what, e)
            os.write(w, f"{e}\n".encode(errors="replace"))
            code = 1
        os._exit(code)
    os.close(w)
    os.waitpid(pid, 0)
    with os.fdopen(r, "rb") as pipe:
        answer = pipe.readline().strip()
    if answer != b"ok":
        why = answer.decode(errors="replace") or f"the {what} exited before it was ready"
        said = _said(root, logfile, log_start)
        raise BlockstoreError(f"{what} failed: {why}" + (f" ({said}; log: {logfile})" if said else f" (log: {logfile})"))


def _said(root: str, logfile: str, start: int) -> str:
    """What the service (or a library it uses, such as libfuse) wrote to its log while starting,
    besides our own report of the failure: usually the cause, e.g. "/dev/fuse: Permission denied"."""
    try:
        with os.fdopen(open_file(root, logfile, os.O_RDONLY), "rb") as f:
            f.seek(start)
            lines = f.read(64 << 10).decode(errors="replace").splitlines()
    except (OSError, BlockstoreError):
        return ""
    return "; ".join(line.strip() for line in lines if line.strip() and " stopped: " not in line)[-400:]


def _tell(fd: int, what: bytes) -> None:
    os.write(fd, what)
