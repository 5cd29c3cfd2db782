"""A node's mount (``node start NAME --mount DIR``): the FUSE mount through which the node
serves LUs, run as a child process the node supervises (``blockstore mount DIR --node NAME``,
fuse/ and serving.py say what it serves and how).

The child gets SIGKILL when the node process dies (PR_SET_PDEATHSIG), so a node killed outright
never leaves a mount writing behind it; a mount that ends on its own is restarted (its stale
mount point unmounted first) while the node runs. A node leaving cleanly stops its mount with
SIGTERM, which unmounts after every write is flushed.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from ..errors import BlockstoreError, InvalidArgument
from .agent import this_process

log = logging.getLogger("blockstore.cluster.nodemount")
PR_SET_PDEATHSIG = 1
READY = 15.0    # seconds a mount has to appear


def _die_with_parent() -> None:  # runs in the child between fork and exec
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def is_mounted(path: str) -> bool:
    """Whether a blockstore FUSE mount sits at ``path`` (live or stale)."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            if left.split()[4].replace("\\040", " ") == path and right.startswith("fuse.blockstore"):
                return True
    return False


class NodeMount:
    """The mount of node ``node`` of the pool at ``pool_path`` at ``mountpoint``. ``hold``: the
    mount holds writes it may not make for want of a renewed lease (``--on-fence hold``)."""

    def __init__(self, pool_path: str, node: str, mountpoint: str, *, hold: bool = False) -> None:
        self.pool_path, self.node, self.hold = pool_path, node, hold
        self.mountpoint = os.path.abspath(mountpoint)
        if not (os.path.isdir(self.mountpoint) or is_mounted(self.mountpoint)):
            raise InvalidArgument(f"mount point {self.mountpoint} is not a directory")
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.on_started: Callable[[], None] = lambda: None   # the node re-registers its processes

    def start(self) -> None:
        """Start the mount and wait until it serves; BlockstoreError when it does not."""
        self._spawn()
        threading.Thread(target=self._supervise, name="mount", daemon=True).start()

    def _spawn(self) -> None:
        from blockstore_fuse.mount import umount
        if is_mounted(self.mountpoint):  # left by a mount process that died
            try:
                umount(self.mountpoint, lazy=True)
            except (BlockstoreError, OSError) as e:
                log.warning("stale mount at %s: %s", self.mountpoint, e)
        cmd = [sys.executable, "-m", "blockstore", "--pool", self.pool_path, "mount", self.mountpoint,
               "--foreground", "--node", self.node, *(["--on-fence", "hold"] if self.hold else [])]
        with self._lock:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        give_up = time.monotonic() + READY
        while not is_mounted(self.mountpoint):
            if self.proc.poll() is not None or time.monotonic() >= give_up:
                raise BlockstoreError(f"the mount of node {self.node} at {self.mountpoint} did not start "
                                      "(see the node's log)")
            time.sleep(0.02)
        log.info("node %s serves LUs at %s (mount pid %d)", self.node, self.mountpoint, self.proc.pid)
        self.on_started()

    def process(self) -> dict[str, int] | None:
        """{pid, start} of the mount process, for the node's registration (agent.py)."""
        with self._lock:
            return this_process(self.proc.pid) if self.proc is not None and self.proc.poll() is None else None

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            proc = self.proc
            assert proc is not None
            rc = proc.wait()
            if self._stopping.is_set():
                return
            self.restarts += 1
            log.error("the mount of node %s ended (exit %s); restarting it", self.node, rc)
            time.sleep(0.5)
            try:
                self._spawn()
            except BlockstoreError as e:
                log.error("%s", e)

    def stop(self, timeout: float = 30.0) -> None:
        """Unmount (every write flushed) and wait for the mount process to end."""
        self._stopping.set()
        with self._lock:
            proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("the mount of node %s did not end after SIGTERM; killing it", self.node)
            proc.kill()
            proc.wait()
