"""Mounting a pool: the daemon, its readiness handshake, and unmounting (also of a stale mount
left by a killed daemon). The pool's LMDB is opened only in the daemon, after the fork."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable

from blockstore import BlockstoreError, Busy, InvalidArgument, NotAPool, NotFound
from blockstore.pool import Pool
from blockstore.pooldir import open_file, opened_dir, read_file, subdir
from blockstore.cluster.bridge import attach
from blockstore.control import ControlServer
from blockstore.daemon import daemonize
from blockstore.native import fuse_open_flags

from . import binding
from .direct import DirectPath
from .ops import Access, LUFilesystem

log = logging.getLogger("blockstore.fuse")
PR_SET_IO_FLUSHER = 57
REQUEST = 1 << 20
#: libfuse threads by default: one per core (2 at least). Direct requests need no GIL, so they
#: run on every core at once; more threads than cores only spin on the data file's inode lock
#: (docs/fuse.md).
THREADS = max(2, min(8, os.cpu_count() or 2))
#: Asynchronous requests the kernel keeps queued for the daemon (its default is 12). A client with
#: more in flight (fio's 2 jobs at iodepth 16 are 32) otherwise sleeps in submission until a slot
#: frees, a sleep and a wake-up per request; 64 let 1 MiB writes run about 10% faster
#: (docs/fuse.md).
BACKGROUND = 64
#: Below this a copy costs less than making a view of libfuse's buffer.
SMALL = 64 << 10


def _mounts() -> dict[str, tuple[str, str]]:
    """mount point -> (filesystem type, source) from /proc/self/mountinfo."""
    out = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            mp = left.split()[4].replace("\\040", " ")
            fstype, source = right.split()[:2]
            out[mp] = (fstype, source)
    return out


def _state_path(pool_path: str, mountpoint: str, ext: str) -> str:
    key = hashlib.sha1(mountpoint.encode()).hexdigest()[:12]
    return os.path.join(pool_path, "mounts", f"{key}.{ext}")


def log_path(pool_path: str, mountpoint: str) -> str:
    """Where the mount daemon of ``mountpoint`` logs (inside the pool, one file per mount point)."""
    return _state_path(os.path.abspath(pool_path), os.path.abspath(mountpoint), "log")


def check_mountpoint(mountpoint: str) -> str:
    mp = os.path.abspath(mountpoint)
    if not os.path.isdir(mp):
        raise InvalidArgument(f"mount point {mp} is not an existing directory")
    if mp in _mounts():
        raise InvalidArgument(f"{mp} is already a mount point")
    if os.listdir(mp):
        raise InvalidArgument(f"mount point {mp} is not empty")
    return mp


def _steady_malloc() -> None:
    """Keep request-sized buffers (up to 1 MiB, allocated and freed per request by libfuse and
    Python) on the heap instead of fresh mmaps: each new mapping costs a page fault per 4 KiB,
    which cut 1 MiB reads to a third."""
    libc = ctypes.CDLL(None)
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
    libc.mallopt(M_TRIM_THRESHOLD, 256 << 20)


def _io_flusher() -> None:
    """Mark the daemon as an I/O flusher: it serves writeback (of a loop device on an LU file),
    so its own allocations must not wait on that writeback (the FUSE-over-loop deadlock)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) != 0:
        log.warning("PR_SET_IO_FLUSHER: %s (loop-mounting an LU file may deadlock under memory pressure)",
                    os.strerror(ctypes.get_errno()))


def _view(buf, size: int) -> memoryview:  # type: ignore[no-untyped-def]
    """libfuse's request buffer as a memoryview, without copying it."""
    return memoryview((ctypes.c_char * size).from_address(ctypes.cast(buf, ctypes.c_void_p).value)).cast("B")


class _FUSE(binding.FUSE):  # type: ignore[misc, valid-type]
    """The binding's FUSE with zero-copy read and write of large requests (the binding copies each
    request into or out of a Python bytes: a third of the time of a 1 MiB request; small ones are
    still copied, which is cheaper than a view), and the callback it lacks:
    lseek (SEEK_DATA / SEEK_HOLE, libfuse 3)."""

    def read(self, path: bytes, buf, size: int, offset: int, fip) -> int:  # type: ignore[no-untyped-def]
        if size <= SMALL:
            data = self.operations.read(None, size, offset, fip.contents.fh)
            ctypes.memmove(buf, data, len(data))
            return len(data)
        return self.operations.read_into(_view(buf, size), offset, fip.contents.fh)

    def write(self, path: bytes, buf, size: int, offset: int, fip) -> int:  # type: ignore[no-untyped-def]
        data = ctypes.string_at(buf, size) if size <= SMALL else _view(buf, size)
        return self.operations.write(None, data, offset, fip.contents.fh)

    def lseek(self, path: bytes, off: int, whence: int, fip) -> int:  # type: ignore[no-untyped-def]
        return self.operations.lseek(path.decode() if path else "", off, whence, fip.contents.fh)


def serve(pool_path: str, mountpoint: str, *, read_only: bool = False, allow_other: bool = False,
          threads: int = THREADS, direct: bool = True, map_writes: bool = True,
          access: Access | None = None, on_ready: Callable[[], None] | None = None,
          verify_reads: bool = True, metrics: str | None = None, node: str | None = None,
          hold: bool = False, parallel_writes: bool = True) -> None:
    """Mount and serve until unmounted (or SIGTERM); every write is flushed before it returns.

    ``threads`` N > 0 runs libfuse's multithreaded loop with up to N threads; 0 serves requests
    on one thread. ``direct`` serves reads and in-place writes in C (direct.py), without the
    GIL, so threads run them in parallel; without it every request is Python, where threads
    only help large requests (handing the GIL over costs more than a 4 KiB request).
    ``map_writes``: the direct path copies whole 64 KiB pieces of writes whose pages are in
    memory into a mapping of the data file (LU.direct_table). How the defaults were chosen:
    docs/fuse.md. ``access``: the files' owner, group and mode (default: the mounting user,
    0600), which the kernel enforces; ``allow_other`` lets other users reach them at all.
    ``verify_reads`` False: mirrored reads are not checked against their checksums (only to
    measure what the check costs: bench/). ``metrics``: HOST:PORT where Prometheus scrapes the
    mount's figures (metrics.py). ``node``: serve as that cluster node (cluster/serving.py):
    write only the LUs it owns, read the others redirected; ``hold``: a write the node may not
    make for want of a renewed lease waits for one instead of failing. ``parallel_writes``: the
    kernel may send several writes of one file at once (native/fastpath.h); False: one at a time.
    """
    stop = _StopSignals(mountpoint)
    try:
        _serve(stop, pool_path, mountpoint, read_only=read_only, allow_other=allow_other, threads=threads,
               direct=direct, map_writes=map_writes, access=access, on_ready=on_ready, verify_reads=verify_reads,
               metrics=metrics, node=node, hold=hold, parallel_writes=parallel_writes)
    finally:
        stop.close()


def _serve(stop: "_StopSignals", pool_path: str, mountpoint: str, *, read_only: bool, allow_other: bool,
           threads: int, direct: bool, map_writes: bool, access: Access | None,
           on_ready: Callable[[], None] | None, verify_reads: bool, metrics: str | None,
           node: str | None, hold: bool, parallel_writes: bool) -> None:
    _io_flusher()
    fuse_open_flags(parallel_writes=parallel_writes, noflush=True)  # ops.flush does nothing
    log.info("opens answered with: %sno flush on close", "parallel writes, " if parallel_writes else "")
    _steady_malloc()
    gate = None
    if node is not None:
        from blockstore.cluster.serving import Gate
        gate = Gate(pool_path, node, hold=hold)
    # a node's mount recovers what dead sessions left only as the owner of their LUs (serving.py)
    pool = Pool.open(pool_path, recover=node is None)
    pool.verify_reads(verify_reads)
    attach(pool, origin=f"mount {mountpoint}")
    subdir(pool.path, "mounts")
    pidfile = _state_path(pool.path, mountpoint, "pid")
    with os.fdopen(open_file(pool.path, pidfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w") as f:
        f.write(f"{os.getpid()}\n")
    fast = DirectPath(map_writes=map_writes) if direct and binding.LIBFUSE == 3 else None
    ops = LUFilesystem(pool, read_only=read_only, direct=fast, access=access, gate=gate)
    if gate is not None:
        gate.start()
    # Another process's snapshot, clone, grow or status of an LU this mount holds open comes
    # here instead of meeting Busy (control.py).
    ctl = ControlServer(pool, describe=ops.describe, let_go=ops.serving.let_go if ops.serving else None).start()
    scraped = None
    options: dict[str, object] = {
        "foreground": True, "fsname": f"blockstore:{pool.path}", "subtype": "blockstore",
        "default_permissions": True, "direct_io": True, "nothreads": threads == 0,
        # unlink an open file for real (the engine refuses: EBUSY), instead of libfuse renaming it
        # to ".fuse_hidden...", which is no LU name and came back as EINVAL
        "hard_remove": True,
    }
    if binding.LIBFUSE == 2:
        options.update(big_writes=True, max_write=128 << 10, max_read=128 << 10)
    if threads and binding.LIBFUSE == 3:
        options["max_threads"] = options["max_idle_threads"] = threads
    if allow_other:
        options["allow_other"] = True
    if read_only:
        options["ro"] = True

    def ready() -> None:  # both bindings call init, in a request's context
        stop.serving(binding.current_session())
        if on_ready:
            on_ready()
    ops.on_ready = ready

    def init_with_config(conn, config) -> None:  # type: ignore[no-untyped-def]
        if conn is not None and binding.LIBFUSE == 3:
            conn.max_write = REQUEST
            conn.max_readahead = REQUEST
            conn.max_background = BACKGROUND
            conn.congestion_threshold = BACKGROUND * 3 // 4
        ops.init("/")
    ops.init_with_config = init_with_config  # type: ignore[attr-defined]
    try:
        if metrics:
            from blockstore import metrics as figures
            scraped = figures.serve(metrics, [figures.lu_requests(ops.request_stats), figures.pool_figures(pool)])
        with binding.callbacks_replaced(fast.install) if fast else contextlib.nullcontext(), \
                binding.signals_kept():
            _FUSE(ops, mountpoint, **options)
    finally:
        if scraped is not None:
            scraped.shutdown()
            scraped.server_close()
        ctl.stop()
        if gate is not None:
            gate.close()
        try:
            with opened_dir(pool.path, os.path.dirname(pidfile)) as d:
                os.unlink(os.path.basename(pidfile), dir_fd=d)
        except (OSError, BlockstoreError):
            pass


class _StopSignals:
    """SIGTERM and SIGINT (a service stopped, Ctrl-C) end the mount as an unmount does: every
    write flushed, exit 0. libfuse's own handlers would end its loop with an error code, and they
    are installed only where a signal's handler is the default: ours are not (binding.py keeps the
    binding from resetting SIGINT's). Our handlers cannot run while the main thread is in
    libfuse's loop, but the interpreter writes each signal to a wakeup descriptor whichever thread
    takes it; one thread of ours reads it, asks libfuse to stop and sends one request to wake its
    loop."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, mountpoint: str) -> None:
        self.mountpoint = mountpoint
        self.session = 0
        self.received: int | None = None
        self._lock = threading.Lock()
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._handlers = {s: signal.signal(s, lambda *_: None) for s in self.SIGNALS}
        self._wakeup = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._wait, name="stop-signals", daemon=True)
        self._thread.start()

    def serving(self, session: int) -> None:
        """The loop of libfuse instance ``session`` serves now (a signal before it stops it now)."""
        with self._lock:
            self.session = session
            if self.received is not None:
                self._stop()

    def _wait(self) -> None:
        while True:
            select.select([self._r], [], [])
            try:
                got = os.read(self._r, 64)
            except BlockingIOError:
                continue
            if not got or 0 in got:  # closed, or close()'s own byte
                return
            sig = got[-1]
            log.info("%s: unmounting", signal.Signals(sig).name)
            with self._lock:
                self.received = sig
                if self.session:
                    self._stop()

    def _stop(self) -> None:
        binding.stop_session(self.session)
        threading.Thread(target=self._wake, daemon=True).start()  # never under our lock: it is served

    def _wake(self) -> None:
        try:
            os.listdir(self.mountpoint)
        except OSError:
            pass

    def close(self) -> None:
        signal.set_wakeup_fd(self._wakeup)
        for s, h in self._handlers.items():
            signal.signal(s, h)
        os.write(self._w, b"\0")
        self._thread.join()
        os.close(self._r)
        os.close(self._w)


def mount(pool_path: str, mountpoint: str, *, foreground: bool = False, read_only: bool = False,
          allow_other: bool = False, threads: int = THREADS, direct: bool = True,
          map_writes: bool = True, access: Access | None = None, verify_reads: bool = True,
          metrics: str | None = None, node: str | None = None, hold: bool = False,
          parallel_writes: bool = True) -> str:
    """Mount the pool at ``mountpoint``; as a daemon unless ``foreground``. Returns the mount point.
    ``threads``, ``direct``, ``map_writes``, ``access``, ``verify_reads``, ``node``, ``hold`` and
    ``parallel_writes``: see ``serve``."""
    pool_path = os.path.abspath(pool_path)
    if not os.path.exists(os.path.join(pool_path, "meta", "data.mdb")):
        raise NotAPool(f"no pool at {pool_path}")
    mp = check_mountpoint(mountpoint)
    run = functools.partial(serve, pool_path, mp, read_only=read_only, allow_other=allow_other, threads=threads,
                            direct=direct, map_writes=map_writes, access=access, verify_reads=verify_reads,
                            metrics=metrics, node=node, hold=hold, parallel_writes=parallel_writes)
    if foreground:
        run()
        return mp
    subdir(pool_path, "mounts")
    daemonize(lambda ready: run(on_ready=ready), log_path(pool_path, mp), "mount daemon", root=pool_path)
    return mp


def _daemon_pid(source: str, mp: str) -> int | None:
    pool_path = source.split(":", 1)[1] if ":" in source else ""
    try:
        return int(read_file(pool_path, _state_path(pool_path, mp, "pid"), 64).strip())
    except (OSError, ValueError, BlockstoreError):
        return None


def umount(mountpoint: str, timeout: float = 120.0, *, lazy: bool = False) -> str:
    """Unmount and wait for the daemon to flush and exit; a stale mount (daemon killed) is
    cleared. A mount still in use is refused at once (Busy, naming the files open in it and who
    holds them) unless ``lazy``: then it is detached now and its daemon flushes and exits when the
    last file closes. Returns what was done, in one line."""
    mp = os.path.abspath(mountpoint)
    entry = _mounts().get(mp)
    if entry is None or not entry[0].endswith("blockstore"):
        raise NotFound(f"{mp} is not a blockstore mount")
    pid = _daemon_pid(entry[1], mp)
    if lazy:
        users = open_in(mp)  # before: a detached mount's files no longer show under its path
        for cmd in (["fusermount3", "-uz", mp], ["fusermount", "-uz", mp], ["umount", "-l", mp]):
            if shutil.which(cmd[0]) and subprocess.run(cmd, capture_output=True).returncode == 0:
                return (f"detached {mp}; daemon {pid} flushes and exits when the last of {len(users)} open file(s) "
                        "closes" if users else f"unmounted {mp}")
        raise BlockstoreError(f"could not unmount {mp}")
    errors = []
    for cmd in (["fusermount3", "-u", mp], ["fusermount", "-u", mp], ["umount", mp]):
        if not shutil.which(cmd[0]):
            continue
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode == 0:
            break
        errors.append(r.stderr.strip())
    else:
        users = open_in(mp)
        if users or any("busy" in e for e in errors):
            raise Busy(f"{mp} is busy: " + (", ".join(users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")
                                             if users else "in use") + "; close them, or umount --lazy")
        if pid is None or not _alive(pid):  # the daemon is gone: clear what it left
            subprocess.run(["umount", "-l", mp], capture_output=True)
            return f"cleared stale mount {mp}"
        raise BlockstoreError(f"could not unmount {mp}: {errors[-1] if errors else 'no unmount command'}")
    deadline = time.monotonic() + timeout
    while pid and _alive(pid):
        if time.monotonic() > deadline:
            raise BlockstoreError(f"unmounted {mp}, but daemon {pid} has not exited after {timeout:.0f}s")
        time.sleep(0.02)
    return f"unmounted {mp}"


def open_in(mp: str) -> list[str]:
    """What holds files of mount ``mp`` open: ``'FILE (pid N, COMMAND)'`` for each open file
    descriptor /proc shows (other users' processes only when run as root), and ``'FILE (loop
    device /dev/loopN)'`` for each loop device backed by one."""
    out = []
    prefix = mp.rstrip("/") + "/"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith(prefix):
                try:
                    with open(f"/proc/{pid}/comm") as f:
                        comm = f.read().strip()
                except OSError:
                    comm = "?"
                out.append(f"{target[len(prefix):]} (pid {pid}, {comm})")
    with contextlib.suppress(OSError):
        for dev in os.listdir("/sys/block"):
            try:
                with open(f"/sys/block/{dev}/loop/backing_file") as f:
                    backing = f.read().strip()
            except OSError:
                continue
            if backing.startswith(prefix):
                out.append(f"{backing[len(prefix):]} (loop device /dev/{dev})")
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie of ours (foreground use in tests) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False

