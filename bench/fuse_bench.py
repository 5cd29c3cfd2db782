"""FUSE runs of ``blockstore bench``: the same fio patterns (bench/fio/pattern.fio) against
1. a plain file on the same filesystem (the limit), 2. an LU through our mount, and 3. QEMU's own
FUSE export of a qcow2 image (qemu-storage-daemon), the peer a user would pick instead."""
from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
JOB = os.path.join(HERE, "fio", "pattern.fio")
PATTERNS = [("seq write 1M", "write", "1M"), ("seq read 1M", "read", "1M"),
            ("rand write 4K", "randwrite", "4k"), ("rand read 4K", "randread", "4k")]


def missing_tools() -> list[str]:
    return [t for t in ("fio", "qemu-img", "qemu-storage-daemon") if not shutil.which(t)]


def fio(path: str, rw: str, bs: str, size: int, runtime: int) -> float:
    """MiB/s for 1M patterns, IOPS for 4K ones."""
    env = dict(os.environ, FILE=path, SIZE=str(size // 2), RW=rw, BS=bs, RUNTIME=str(runtime))
    r = subprocess.run(["fio", "--output-format=json", JOB], env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"fio {rw} on {path}: {r.stderr.strip()[-500:]}")
    job = json.loads(r.stdout[r.stdout.index("{"):])["jobs"][0]
    side = job["read"] if "read" in rw else job["write"]
    return side["iops"] if bs == "4k" else side["bw_bytes"] / (1 << 20)


def first_write(path: str, rw: str, bs: str, size: int, runtime: int) -> float:
    """A fresh target's first writes: fio over ``size`` bytes once (at most ``runtime`` seconds,
    never wrapping around), fsynced at the end, one job; MiB/s for 1M, IOPS for 4K."""
    r = subprocess.run(["fio", "--name=first", f"--filename={path}", f"--size={size}", f"--rw={rw}", f"--bs={bs}",
                        "--direct=1", "--ioengine=libaio", "--iodepth=16", "--end_fsync=1", f"--runtime={runtime}",
                        "--randrepeat=0", "--output-format=json"], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"fio {rw} on {path}: {r.stderr.strip()[-500:]}")
    side = json.loads(r.stdout[r.stdout.index("{"):])["jobs"][0]["write"]
    return side["iops"] if bs == "4k" else side["bw_bytes"] / (1 << 20)


def fill(path: str, size: int) -> None:
    """Write every byte once, untimed: all targets are then measured in the same steady state
    (allocated, data to read), not on first-allocation costs that differ by who ran first."""
    subprocess.run(["fio", "--name=fill", f"--filename={path}", f"--size={size}", "--rw=write", "--bs=1M",
                    "--direct=1", "--ioengine=libaio", "--iodepth=8", "--output-format=terse"],
                   check=True, capture_output=True, timeout=600)


@contextmanager
def plain_target(workdir: str, size: int) -> Iterator[str]:
    path = os.path.join(workdir, "plain.img")
    with open(path, "wb") as f:
        f.truncate(size)
    try:
        yield path
    finally:
        os.unlink(path)


@contextmanager
def mounted_pool(workdir: str, size: int, lus: dict[str, bool], capacity: int | None = None,
                 **options: Any) -> Iterator[dict[str, str]]:
    """A fresh pool (with a second failure group when an LU is mirrored) holding ``lus`` (name:
    mirrored), each ``size`` bytes, mounted; yields name -> file in the mount. ``capacity``:
    the pool's (default: room for the LUs and one more)."""
    from blockstore.pool import Pool
    from blockstore_fuse.mount import mount, umount

    pool = os.path.join(workdir, "fuse-pool")
    mirror = os.path.join(workdir, "fuse-pool-fg1") if any(lus.values()) else None
    with Pool.create(pool, capacity or len(lus) * size + size, mirror_dir=mirror) as p:
        for name, mirrored in lus.items():
            p.create_lu(name, size, mirrored=mirrored).close()
    mp = os.path.join(workdir, "mnt")
    os.mkdir(mp)
    mount(pool, mp, **options)
    try:
        yield {name: os.path.join(mp, name) for name in lus}
    finally:
        umount(mp)
        os.rmdir(mp)
        shutil.rmtree(pool)
        if mirror:
            shutil.rmtree(mirror)


@contextmanager
def blockstore_target(workdir: str, size: int, **options: Any) -> Iterator[str]:
    with mounted_pool(workdir, size, {"disk": False}, **options) as files:
        yield files["disk"]


@contextmanager
def qemu_target(workdir: str, size: int, base: str | None = None) -> Iterator[str]:
    """qemu-storage-daemon's FUSE export of a fresh qcow2 image (an overlay on the qcow2 image
    ``base`` if given)."""
    img = os.path.join(workdir, "qemu.qcow2")
    export = os.path.join(workdir, "qemu-export")
    backing = ["-b", base, "-F", "qcow2"] if base else []
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *backing, img, str(size)], check=True)
    open(export, "w").close()
    proc = subprocess.Popen(
        ["qemu-storage-daemon",
         "--blockdev", f"driver=file,node-name=file,filename={img},cache.direct=off",
         "--blockdev", "driver=qcow2,node-name=disk,file=file",
         "--export", f"type=fuse,id=exp,node-name=disk,mountpoint={export},writable=on"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while os.stat(export).st_size != size:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"qemu-storage-daemon did not export: {proc.stdout.read().decode()[-500:]}")
            time.sleep(0.05)
        yield export
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        os.unlink(export)
        os.unlink(img)


TARGETS: dict[str, Callable[[str, int], Any]] = {
    "plain file": plain_target,
    "blockstore mount": blockstore_target,
    "blockstore mount, writes by pwrite": lambda d, n: blockstore_target(d, n, map_writes=False),
    "blockstore mount, one thread": lambda d, n: blockstore_target(d, n, threads=0),
    "blockstore mount, Python only": lambda d, n: blockstore_target(d, n, threads=0, direct=False),
    "qemu fuse export": qemu_target,
}


# The three targets the issue compares; the other mounts only explain the default.
MAIN = ("plain file", "blockstore mount", "qemu fuse export")


def run(workdir: str, quick: bool) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, list[float]]]]:
    """({target: {pattern: median}}, {target: {pattern: [each run]}}). Each target is set up
    fresh and filled once per round. The main targets run 5 rounds (QEMU's sequential write
    alone varies by half between rounds here), the explaining mounts 3; the order rotates each
    round so no target always follows the same one. --quick: one round of the main targets."""
    size = (512 if quick else 2048) << 20
    runtime = 2 if quick else 5
    rounds = {t: (1 if t in MAIN else 0) if quick else (5 if t in MAIN else 3) for t in TARGETS}
    out: dict[str, dict[str, list[float]]] = {t: {p[0]: [] for p in PATTERNS} for t in TARGETS if rounds[t]}
    for r in range(max(rounds.values())):
        now = [t for t in TARGETS if rounds[t] > r]
        for target in now[r % len(now):] + now[:r % len(now)]:
            with TARGETS[target](workdir, size) as path:
                fill(path, size)
                for name, rw, bs in PATTERNS:
                    out[target][name].append(fio(path, rw, bs, size, runtime))
    medians = {t: {p: statistics.median(v) for p, v in pats.items()} for t, pats in out.items()}
    return medians, out


#: The mirror's rows: the first write of a fresh LU, then the patterns in place.
MIRROR_PATTERNS = [("seq write 1M, first write", "write", "1M")] + [
    (name.replace("seq write 1M", "seq write 1M, in place"), rw, bs) for name, rw, bs in PATTERNS]


def mirror_run(workdir: str, quick: bool) -> dict[str, dict[str, list[float]]]:
    """A mirrored LU against an unmirrored one in the same pool and the same mount: each round
    a fresh pool; the first write (fio over the whole LU, fsynced) and then each pattern, the two
    LUs in turn, who goes first alternating by round and pattern. {"mirrored" | "unmirrored":
    {pattern: [each round]}}."""
    size = (512 if quick else 1024) << 20
    runtime = 2 if quick else 4
    out: dict[str, dict[str, list[float]]] = {k: {p[0]: [] for p in MIRROR_PATTERNS} for k in ("mirrored", "unmirrored")}
    for r in range(3 if quick else 5):
        with mounted_pool(workdir, size, {"mirrored": True, "unmirrored": False}) as files:
            for k, (name, rw, bs) in enumerate(MIRROR_PATTERNS):
                order = ["mirrored", "unmirrored"][::(-1) ** (r + k)]
                for who in order:
                    out[who][name].append(first_write(files[who], rw, bs, size, 60) if k == 0 else
                                          fio(files[who], rw, bs, size, runtime))
    return out


def verify_run(workdir: str, quick: bool) -> dict[str, list[float]]:
    """Random 4K reads of a filled mirrored LU through the mount, with every block checked
    against its checksum and without (mount(verify_reads=False)): each round both, a fresh pool
    each, who goes first alternating by round. {"verified" | "unverified": [IOPS each round]}."""
    size = (256 if quick else 1024) << 20
    runtime = 2 if quick else 4
    out: dict[str, list[float]] = {"verified": [], "unverified": []}
    for r in range(3 if quick else 5):
        for who in ["verified", "unverified"][::(-1) ** r]:
            with mounted_pool(workdir, size, {"m": True}, verify_reads=who == "verified") as files:
                fill(files["m"], size)
                out[who].append(fio(files["m"], "randread", "4k", size, runtime))
    return out


def first_writes_run(workdir: str, quick: bool) -> dict[str, dict[str, list[float]]]:
    """First writes into fresh targets, each round a fresh one, the order alternating by round:
    a fresh thin LU through the mount against a fresh sparse plain file (fio O_DIRECT, fsynced at
    the end: seq 1M over the whole, rand 4K for a few seconds), and random 4K first writes into
    a fresh clone of a written LU against a qcow2 overlay on a written qcow2 base through QEMU's
    FUSE export. {target: {pattern: [each round]}}."""
    size = (512 if quick else 1024) << 20
    runtime = 2 if quick else 4
    rounds = 3 if quick else 5
    out: dict[str, dict[str, list[float]]] = {"blockstore mount": {}, "plain file": {}, "qemu fuse export": {}}
    for r in range(rounds):
        for who in (["blockstore mount", "plain file"] if r % 2 == 0 else ["plain file", "blockstore mount"]):
            for name, rw, bs in (("seq write 1M", "write", "1M"), ("rand write 4K", "randwrite", "4k")):
                target = plain_target if who == "plain file" else blockstore_target
                with target(workdir, size) as path:
                    out[who].setdefault(name, []).append(first_write(path, rw, bs, size, 60 if bs == "1M" else runtime))
        for who in (["blockstore mount", "qemu fuse export"] if r % 2 == 0 else ["qemu fuse export", "blockstore mount"]):
            with clone_target(workdir, size, who) as path:
                out[who].setdefault("rand write 4K into a clone", []).append(
                    first_write(path, "randwrite", "4k", size, runtime))
    return out


@contextmanager
def clone_target(workdir: str, size: int, who: str) -> Iterator[str]:
    """A fresh copy-on-write child of ``size`` bytes of random data: a clone of a written LU
    through our mount, or a qcow2 overlay on a written qcow2 image through QEMU's export."""
    raw = os.path.join(workdir, "base.raw")
    with open(raw, "wb") as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20))
    try:
        if who == "qemu fuse export":
            base = os.path.join(workdir, "base.qcow2")
            subprocess.run(["qemu-img", "convert", "-q", "-O", "qcow2", raw, base], check=True)
            try:
                with qemu_target(workdir, size, base) as path:
                    yield path
            finally:
                os.unlink(base)
            return
        from blockstore.pool import Pool
        from blockstore.transfer import import_file
        from blockstore_fuse.mount import mount, umount

        pool = os.path.join(workdir, "clone-pool")
        with Pool.create(pool, 3 * size) as p:
            import_file(p, "base", raw).close()
            p.snapshot("base", "s")
            p.clone("base@s", "child")
        mp = os.path.join(workdir, "mnt")
        os.mkdir(mp)
        mount(pool, mp)
        try:
            yield os.path.join(mp, "child")
        finally:
            umount(mp)
            os.rmdir(mp)
            shutil.rmtree(pool)
    finally:
        os.unlink(raw)


def live_snapshot_run(workdir: str, quick: bool) -> dict[str, Any]:
    """Snapshots of an LU a mount holds open while fio writes it at full speed (random 4 KiB,
    iodepth 16): each taken from this process through ``Pool.snapshot``, which asks the mount
    over its control channel. Each round runs fio once with snapshots every half second and once
    without, the order alternating; {"latency": [s each snapshot], "with": [IOPS each round],
    "without": [IOPS each round]}."""
    from blockstore.pool import Pool

    size = 256 << 20
    runtime = 4 if quick else 8
    out: dict[str, Any] = {"latency": [], "with": [], "without": []}
    # every snapshot makes the extents the writer then touches copies: room for a round of them
    with mounted_pool(workdir, size, {"vol": False}, capacity=(4 * runtime + 4) * size) as files:
        pool_path = os.path.join(workdir, "fuse-pool")
        fill(files["vol"], size)
        k = 0
        for r in range(3 if quick else 5):
            if k:  # last round's snapshots go, so their extents come back
                with Pool.open(pool_path) as p:
                    for i in range(k):
                        p.remove(f"vol@s{i}")
                k = 0
            for snaps in ([True, False] if r % 2 == 0 else [False, True]):
                proc = subprocess.Popen(
                    ["fio", "--name=live", f"--filename={files['vol']}", f"--size={size}", "--rw=randwrite",
                     "--bs=4k", "--direct=1", "--ioengine=libaio", "--iodepth=16", "--time_based",
                     f"--runtime={runtime}", "--output-format=json"], stdout=subprocess.PIPE, text=True)
                if snaps:
                    with Pool.open(pool_path, readonly=True) as p:
                        time.sleep(1)
                        while proc.poll() is None and len(out["latency"]) < (r + 1) * 2 * runtime:
                            t = time.perf_counter()
                            p.snapshot("vol", f"s{k}")
                            out["latency"].append(time.perf_counter() - t)
                            k += 1
                            time.sleep(0.5)
                stdout, _ = proc.communicate(timeout=600)
                job = json.loads(stdout[stdout.index("{"):])["jobs"][0]
                out["with" if snaps else "without"].append(job["write"]["iops"])
    return out
