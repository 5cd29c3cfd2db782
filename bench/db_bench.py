"""The ``db`` group of ``blockstore bench``: an LU under what a database or a VM does to it (many
synchronous writers, an fsync after every write, QEMU's flushes, PostgreSQL's pgbench on ext4),
against the same work on a plain file on the same filesystem, and a mirrored LU against an
unmirrored one. Beside them, the bound FUSE itself sets: the plain file served by the least a
FUSE file system can do (bench/floor/passthrough.c, C, an fsync that is one fdatasync), so a
ratio below a target reads against what any FUSE file system reaches on the machine. Each round
sets every target up fresh and fills it; the order of the targets rotates by round; rows are
medians of the rounds."""
from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .fuse_bench import fill, mounted_pool, plain_target

#: fio workloads: name -> (jobs, fsync after every write); 4K random overwrites of a filled file,
#: synchronous writes (psync), O_DIRECT.
FIO = {
    "1 sync writer": (1, False),
    "16 sync writers": (16, False),
    "write+fsync, 1 writer": (1, True),
    "write+fsync, 4 writers": (4, True),
}
TARGETS = ("plain file", "LU", "mirrored LU")
#: the fio and qemu-img workloads run on these too
SYNC_TARGETS = TARGETS + ("FUSE floor",)
FLOOR_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "floor", "passthrough.c")


def missing_tools() -> list[str]:
    return [t for t in ("fio", "qemu-img", "mkfs.ext4", "losetup", "cc", "pkg-config") if not shutil.which(t)]


def floor_binary(workdir: str) -> str:
    """bench/floor/passthrough.c built against libfuse 3 (Debian's libfuse3-dev) in ``workdir``."""
    out = os.path.join(workdir, "floor-passthrough")
    if not os.path.exists(out):
        flags = _sh("pkg-config", "--cflags", "--libs", "fuse3").split()
        _sh("cc", "-O2", "-Wall", "-o", out, FLOOR_SOURCE, *flags)
    return out


@contextmanager
def floor_target(workdir: str, size: int) -> Iterator[str]:
    """A plain file of ``size`` bytes served by the C passthrough, mounted in ``workdir``."""
    binary = floor_binary(workdir)
    with plain_target(workdir, size) as backing:
        mp = os.path.join(workdir, "floor-mnt")
        os.makedirs(mp, exist_ok=True)
        proc = subprocess.Popen([binary, backing, mp, "-f"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 30
            while not os.path.ismount(mp):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the FUSE floor did not mount: {proc.stderr.read().decode()[-500:]}"
                                       if proc.poll() is not None else "the FUSE floor did not mount in 30 s")
                time.sleep(0.05)
            yield os.path.join(mp, "file")
        finally:
            subprocess.run(["fusermount3", "-u", mp], capture_output=True)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            os.rmdir(mp)


def postgres_bin() -> str | None:
    """The directory of PostgreSQL's server programs (Debian keeps them per version), or None."""
    base = "/usr/lib/postgresql"
    versions = sorted((v for v in os.listdir(base) if v.isdigit()), key=int) if os.path.isdir(base) else []
    for v in reversed(versions):
        if os.path.exists(os.path.join(base, v, "bin", "pgbench")):
            return os.path.join(base, v, "bin")
    return None


def fio_sync(path: str, size: int, jobs: int, fsync: bool, runtime: int) -> float:
    """IOPS of ``jobs`` synchronous 4K random writers over the whole file, each write followed by
    an fsync of the file if ``fsync``."""
    r = subprocess.run(["fio", "--name=db", f"--filename={path}", f"--size={size}", "--rw=randwrite", "--bs=4k",
                        "--direct=1", "--ioengine=psync", f"--numjobs={jobs}", "--thread", "--group_reporting",
                        f"--fsync={1 if fsync else 0}", "--time_based", f"--runtime={runtime}", "--randrepeat=0",
                        "--output-format=json"], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"fio on {path}: {r.stderr.strip()[-500:]}")
    return float(json.loads(r.stdout[r.stdout.index("{"):])["jobs"][0]["write"]["iops"])


def qemu_img_bench(path: str, count: int) -> float:
    """Requests per second of ``qemu-img bench -t none``: 4K writes at depth 1, a flush after
    each (QEMU's cache=none: the guest's flushes reach the file as fdatasync)."""
    r = subprocess.run(["qemu-img", "bench", "-f", "raw", "-t", "none", "-w", "-s", "4096", "-d", "1",
                        "-c", str(count), "--flush-interval=1", path], capture_output=True, text=True, timeout=600)
    m = re.search(r"Run completed in ([\d.]+) seconds", r.stdout)
    if r.returncode != 0 or not m:
        raise RuntimeError(f"qemu-img bench on {path}: {(r.stderr or r.stdout).strip()[-500:]}")
    return count / float(m.group(1))


@contextmanager
def target(kind: str, workdir: str, size: int) -> Iterator[str]:
    """A plain file, the plain file through the FUSE floor, or an LU (mirrored or not) in a
    fresh pool through the mount."""
    if kind in ("plain file", "FUSE floor"):
        with (plain_target if kind == "plain file" else floor_target)(workdir, size) as path:
            yield path
        return
    with mounted_pool(workdir, size, {"disk": kind == "mirrored LU"}) as files:
        yield files["disk"]


def sync_run(workdir: str, quick: bool) -> dict[str, dict[str, list[float]]]:
    """{target: {workload: [each round]}} for the fio workloads and qemu-img bench."""
    size = (256 if quick else 1024) << 20
    runtime = 2 if quick else 5
    count = 2000 if quick else 10000
    out: dict[str, dict[str, list[float]]] = {t: {} for t in SYNC_TARGETS}
    n = len(SYNC_TARGETS)
    for r in range(2 if quick else 3):
        for kind in SYNC_TARGETS[r % n:] + SYNC_TARGETS[:r % n]:
            with target(kind, workdir, size) as path:
                fill(path, size)
                for name, (jobs, fsync) in FIO.items():
                    out[kind].setdefault(name, []).append(fio_sync(path, size, jobs, fsync, runtime))
                out[kind].setdefault("qemu-img bench -t none, write+flush", []).append(qemu_img_bench(path, count))
    return out


# -- PostgreSQL ----------------------------------------------------------------------------------

def _sh(*argv: str, user: str | None = None, timeout: float = 900, env: dict[str, str] | None = None) -> str:
    if user:
        argv = ("runuser", "-u", user, "--", *argv)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {r.returncode}: {(r.stderr or r.stdout).strip()[-800:]}")
    return r.stdout


@contextmanager
def ext4_on(path: str, mountpoint: str) -> Iterator[str]:
    """ext4 made in the file at ``path`` through a loop device (direct I/O where the file takes
    it), mounted at ``mountpoint``."""
    dev = _sh("losetup", "--find", "--show", "--direct-io=on", path).strip()
    try:
        _sh("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", dev)
        os.makedirs(mountpoint, exist_ok=True)
        _sh("mount", dev, mountpoint)
        try:
            yield mountpoint
        finally:
            _sh("umount", mountpoint)
    finally:
        _sh("losetup", "-d", dev)


def pgbench(bindir: str, where: str, scale: int, clients: int, seconds: int) -> float:
    """Transactions per second of pgbench's default (TPC-B like) run, ``clients`` clients for
    ``seconds``, on a PostgreSQL cluster made in directory ``where`` (its server listening on a
    socket there only), run as user postgres (the server refuses root)."""
    data, sock = os.path.join(where, "data"), os.path.join(where, "sock")
    os.makedirs(sock, exist_ok=True)
    shutil.chown(where, "postgres", "postgres")
    shutil.chown(sock, "postgres", "postgres")
    pg = lambda prog, *a, **kw: _sh(os.path.join(bindir, prog), *a, user="postgres", **kw)  # noqa: E731
    pg("initdb", "-A", "trust", "-D", data)
    pg("pg_ctl", "-s", "-w", "-D", data, "-l", os.path.join(where, "log"), "-o",
       f"-c listen_addresses='' -c unix_socket_directories={sock} -c shared_buffers=128MB", "start")
    try:
        pg("pgbench", "-h", sock, "-i", "-q", "-s", str(scale), "postgres")
        pg("psql", "-h", sock, "-q", "-c", "CHECKPOINT", "postgres")
        out = pg("pgbench", "-h", sock, "-c", str(clients), "-j", str(clients), "-T", str(seconds), "postgres")
    finally:
        pg("pg_ctl", "-s", "-w", "-D", data, "-m", "fast", "stop")
    m = re.search(r"tps = ([\d.]+)", out)
    if not m:
        raise RuntimeError(f"pgbench printed no tps: {out[-500:]}")
    return float(m.group(1))


def pgbench_run(workdir: str, quick: bool) -> dict[str, list[float]]:
    """{target: [tps each round]}: pgbench (scale 20, 4 clients) on ext4 in each target."""
    bindir = postgres_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL's programs are missing (Debian's postgresql package)")
    size = 2 << 30
    seconds = 10 if quick else 30
    out: dict[str, list[float]] = {t: [] for t in TARGETS}
    os.chmod(workdir, 0o711)  # the server's user reaches its directory through it
    for r in range(1 if quick else 2):
        for kind in TARGETS[r % 3:] + TARGETS[:r % 3]:
            with target(kind, workdir, size) as path, \
                    ext4_on(path, tempfile.mkdtemp(prefix="pg-", dir=workdir)) as fs:
                out[kind].append(pgbench(bindir, fs, 20, 4, seconds))
    return out


def medians(runs: dict[str, Any]) -> dict[str, Any]:
    return {k: medians(v) if isinstance(v, dict) else statistics.median(v) for k, v in runs.items()}


def spread(values: list[float]) -> str:
    return f"{min(values):,.0f}-{max(values):,.0f}"
