"""The processes through which a node serves LUs, each a child the node supervises:

- its FUSE mount (``node start N --mount DIR``): ``blockstore mount DIR --node N``; fuse/ and
  serving.py say what it serves and how;
- its NBD export (``--nbd HOST:PORT``, with a mount): nbdkit's file plugin over the mount's
  directory, each LU file one export named after the LU. It is a protocol adapter over the mount,
  so every NBD request meets the same gate and fences as a file request: the LUs the node owns
  read-write, the others read-only through their redundant copy (nbdkit opens those files
  read-only after the mount refused them for writing, and answers a client's write with EPERM);
  flush is fsync, trim a punched hole, zero a zeroed range, block status the LU's extent map
  (SEEK_DATA/SEEK_HOLE). nbdkit is a well-kept server with the clients' own semantics; a server of
  our own would save the hop through FUSE (bench/: NBD rows).

A child gets SIGKILL when the node process dies (PR_SET_PDEATHSIG), so a node killed outright
never leaves a server writing behind it; a child that ends on its own is restarted while the
node runs; a node leaving cleanly stops them with SIGTERM (the mount unmounts, flushing).
"""
from __future__ import annotations

import abc
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from ..errors import BlockstoreError, InvalidArgument
from .agent import this_process
from .protocol import parse_address

log = logging.getLogger("blockstore.cluster.servers")
PR_SET_PDEATHSIG = 1
READY = 15.0    # seconds a server has to come up


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


class Supervised(abc.ABC):
    """One child process of the node: started, waited for until ``ready()``, restarted when it
    ends on its own, stopped with SIGTERM. A kind of child says what it runs and when it is up."""

    what = "server"

    def __init__(self, node: str) -> None:
        self.node = node
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.on_started: Callable[[], None] = lambda: None   # the node re-registers its processes

    @abc.abstractmethod
    def command(self) -> list[str]:
        """The child's command line."""

    @abc.abstractmethod
    def ready(self) -> bool:
        """Whether the child serves yet."""

    def before(self) -> None:
        """What a start does first (clear what a dead predecessor left)."""

    def start(self) -> None:
        """Start the child and wait until it serves; BlockstoreError when it does not."""
        self._spawn()
        threading.Thread(target=self._supervise, name=self.what, daemon=True).start()

    def _spawn(self) -> None:
        self.before()
        with self._lock:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        give_up = time.monotonic() + READY
        while not self.ready():
            if self.proc.poll() is not None or time.monotonic() >= give_up:
                raise BlockstoreError(f"the {self.what} of node {self.node} did not start (see the node's log)")
            time.sleep(0.02)
        log.info("node %s: %s up (pid %d)", self.node, self.what, self.proc.pid)
        self.on_started()

    def process(self) -> dict[str, int] | None:
        """{pid, start} of the child, for the node's registration (agent.py)."""
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
            log.error("the %s of node %s ended (exit %s); restarting it", self.what, self.node, rc)
            time.sleep(0.5)
            try:
                self._spawn()
            except BlockstoreError as e:
                log.error("%s", e)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the child and wait for it to end (then SIGKILL)."""
        self._stopping.set()
        with self._lock:
            proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("the %s of node %s did not end after SIGTERM; killing it", self.what, self.node)
            proc.kill()
            proc.wait()


class NodeMount(Supervised):
    """The mount of node ``node`` of the pool at ``pool_path`` at ``mountpoint``. ``hold``: the
    mount holds writes it may not make for want of a renewed lease (``--on-fence hold``)."""

    what = "mount"

    def __init__(self, pool_path: str, node: str, mountpoint: str, *, hold: bool = False) -> None:
        super().__init__(node)
        self.pool_path, self.hold = pool_path, hold
        self.mountpoint = os.path.abspath(mountpoint)
        if not (os.path.isdir(self.mountpoint) or is_mounted(self.mountpoint)):
            raise InvalidArgument(f"mount point {self.mountpoint} is not a directory")

    def before(self) -> None:
        from blockstore_fuse.mount import umount
        if is_mounted(self.mountpoint):  # left by a mount process that died
            try:
                umount(self.mountpoint, lazy=True)
            except (BlockstoreError, OSError) as e:
                log.warning("stale mount at %s: %s", self.mountpoint, e)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "blockstore", "--pool", self.pool_path, "mount", self.mountpoint,
                "--foreground", "--node", self.node, *(["--on-fence", "hold"] if self.hold else [])]

    def ready(self) -> bool:
        return is_mounted(self.mountpoint)


class NodeExport(Supervised):
    """The NBD export of node ``node``'s mount at ``mountpoint``, listening on ``address``."""

    what = "NBD export"

    def __init__(self, node: str, mountpoint: str, address: str) -> None:
        super().__init__(node)
        self.mountpoint, self.address = mountpoint, address
        self.host, self.port = parse_address(address)
        if not self.port:
            raise InvalidArgument(f"--nbd {address}: name a port (NBD's own is 10809)")
        if shutil.which("nbdkit") is None:
            raise InvalidArgument("--nbd needs nbdkit (Debian package nbdkit)")

    def command(self) -> list[str]:
        return ["nbdkit", "--foreground", "--exit-with-parent", "--ipaddr", self.host, "--port", str(self.port),
                "file", f"dir={self.mountpoint}"]

    def ready(self) -> bool:
        try:
            socket.create_connection((self.host, self.port), timeout=0.5).close()
            return True
        except OSError:
            return False
