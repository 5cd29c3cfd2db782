"""``blockstore bench``: the engine against a plain file on the same filesystem, in one run.

Every figure is a median over repetitions, and every speed is also given as a ratio to its
baseline measured in the same run (the machines are shared and noisy; only same-run ratios
mean anything). Page caches are warm for both sides: this measures the engine's own cost.
Results: a table on stdout, JSON (``--json``; shape below) and a PNG chart of the ratios.

JSON shape (version 1):
  {"version": 1, "quick": bool, "when": ISO time, "machine": {...}, "params": {...},
   "results": [{"name", "group", "unit", "ours", "baseline", "ratio", "target", "ok", "note"}],
   "fuse": {target: {pattern: median}} or null when fio or qemu-storage-daemon is missing,
   "fuse_samples": {target: {pattern: [the figure of each round]}} or null,
   "fuse_mirror_samples": {"mirrored" | "unmirrored": {pattern: [each round]}} or null,
   "first_write_samples": {target: {pattern: [each round]}} or null}
``ratio`` is baseline-time / our-time for speeds (higher is better) and is null where there is
no baseline; ``target`` is the ratio (or bound) the issue sets, ``ok`` whether it was met.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from blockstore.pool import Pool
from blockstore.errors import InvalidArgument
from blockstore.sizes import format_size

MiB = 1 << 20


#: The measurements (Bench methods) by group, in the order they run; ``--only`` picks groups.
GROUPS: dict[str, tuple[str, ...]] = {
    "core": ("sequential", "random4k", "metadata", "cow", "snapshots", "many_lus"),
    "mirror": ("mirror", "checksum_cost"), "services": ("services",), "cluster": ("cluster",), "serving": ("serving",),
    "etcd": ("etcd",),
    "fuse": ("fuse",), "fuse-mirror": ("fuse_mirror",),
    "first-writes": ("first_writes",), "live": ("live_snapshots", "diffs"), "db": ("db",),
}


def row(name: str, group: str, unit: str, ours: float, baseline: float | None = None,
        target: float | None = None, higher_is_better: bool = True, note: str = "") -> dict[str, Any]:
    """One result: ``ratio`` is ours against the baseline (higher is better), ``ok`` whether it
    meets ``target`` (a ratio, or a bound on ``ours`` when there is no baseline)."""
    ratio = None
    if baseline is not None and ours > 0:
        ratio = ours / baseline if higher_is_better else baseline / ours
    ok = None if target is None else (ratio if ratio is not None else ours) >= target \
        if higher_is_better or ratio is not None else ours <= target
    return {"name": name, "group": group, "unit": unit, "ours": ours, "baseline": baseline,
            "ratio": ratio, "target": target, "ok": ok, "note": note}


def fuse_rows(res: dict[str, dict[str, float]], samples: dict[str, dict[str, list[float]]]) -> list[dict[str, Any]]:
    """The FUSE group's results from fuse_bench.run's medians and rounds, grouped by comparison."""
    from .fuse_bench import PATTERNS
    ours, qemu, plain = res["blockstore mount"], res["qemu fuse export"], res["plain file"]
    units = {bs: "MiB/s" if bs == "1M" else "IOPS" for _, _, bs in PATTERNS}

    def spread(target: str, name: str) -> str:
        v = samples[target][name]
        return f"{min(v):,.0f}-{max(v):,.0f}"
    out = [row(f"fuse {name} vs qemu", "fuse", units[bs], ours[name], qemu[name], 1.5 if bs == "1M" else 1.0,
               note="fio, direct, iodepth 16, 2 jobs; qemu-storage-daemon FUSE export of qcow2; rounds: "
                    f"ours {spread('blockstore mount', name)}, qemu {spread('qemu fuse export', name)}")
           for name, _, bs in PATTERNS]
    out += [row(f"fuse {name} vs plain", "fuse", units[bs], ours[name], plain[name], 0.5 if bs == "1M" else None,
                note="plain file with O_DIRECT on the same filesystem") for name, _, bs in PATTERNS]
    pwrite = res.get("blockstore mount, writes by pwrite")
    out += [row(f"fuse {name}, mapped writes vs pwrite", "fuse", units[bs], ours[name], pwrite[name], None,
                note="the default mount against mount --no-write-map; rounds: ours "
                     f"{spread('blockstore mount', name)}, pwrite {spread('blockstore mount, writes by pwrite', name)}")
            for name, rw, bs in PATTERNS if pwrite and "write" in rw]
    for variant, note in (("one thread", "mount --threads 0"),
                          ("Python only", "mount --threads 0 --no-direct: no C direct path")):
        other = res.get(f"blockstore mount, {variant}")
        out += [row(f"fuse {name}, {variant} vs qemu", "fuse", units[bs], other[name], qemu[name], None, note=note)
                for name, _, bs in PATTERNS if other]
    return out


def db_rows(runs: dict[str, dict[str, list[float]]]) -> list[dict[str, Any]]:
    """The db group's rows from db_bench.sync_run's rounds: each workload on an LU against a plain
    file, and on a mirrored LU against the unmirrored one."""
    from . import db_bench
    out = []
    targets = {"16 sync writers": 1.0, "write+fsync, 1 writer": 0.8, "write+fsync, 4 writers": 0.8,
               "qemu-img bench -t none, write+flush": 0.8, "1 sync writer": None}
    for name, target in targets.items():
        plain, lu, mirrored = (runs[t][name] for t in db_bench.TARGETS)
        how = ("qemu-img bench -t none -w -s 4096 -d 1 --flush-interval=1" if name.startswith("qemu") else
               "fio 4K randwrite psync O_DIRECT over a filled 1 GiB file" + (", fsync=1" if "fsync" in name else ""))
        out.append(row(f"db {name} vs plain", "db", "IOPS", statistics.median(lu), statistics.median(plain), target,
                       note=f"{how}; rounds: LU {db_bench.spread(lu)}, plain {db_bench.spread(plain)}"))
        out.append(row(f"db {name}, mirrored vs unmirrored", "db", "IOPS", statistics.median(mirrored),
                       statistics.median(lu), None, note=f"rounds: mirrored {db_bench.spread(mirrored)}"))
        floor = runs["FUSE floor"][name]
        out.append(row(f"db {name}, FUSE floor vs plain", "db", "IOPS", statistics.median(floor),
                       statistics.median(plain), None,
                       note=f"the bound of any FUSE file system here: a C passthrough of the plain file "
                            f"(bench/floor/passthrough.c); rounds: {db_bench.spread(floor)}"))
    one, many = runs["LU"]["1 sync writer"], runs["LU"]["16 sync writers"]
    out.append(row("db 16 sync writers vs 1, LU", "db", "IOPS", statistics.median(many), statistics.median(one), 1.0,
                   note="the same LU through the mount: 16 threads at least as fast as one"))
    return out


def pgbench_rows(runs: dict[str, list[float]]) -> list[dict[str, Any]]:
    """The db group's pgbench rows from db_bench.pgbench_run's rounds."""
    from . import db_bench
    plain, lu, mirrored = (runs[t] for t in db_bench.TARGETS)
    version = os.path.basename(os.path.dirname(db_bench.postgres_bin() or ""))
    return [row("db pgbench tps vs plain", "db", "tps", statistics.median(lu), statistics.median(plain), 0.9,
                note=f"PostgreSQL {version}, pgbench scale 20, 4 clients, on ext4 on a loop device over the file; "
                     f"rounds: LU {db_bench.spread(lu)}, plain {db_bench.spread(plain)}"),
            row("db pgbench tps, mirrored vs unmirrored", "db", "tps", statistics.median(mirrored),
                statistics.median(lu), None, note=f"rounds: mirrored {db_bench.spread(mirrored)}")]


class Bench:
    def __init__(self, workdir: str, quick: bool) -> None:
        self.dir, self.quick = workdir, quick
        self.reps = 5 if quick else 9
        self.seq_total = (256 if quick else 1024) * MiB
        self.rand_ops = 20_000 if quick else 100_000
        self.rand_span = (128 if quick else 512) * MiB
        self.results: list[dict[str, Any]] = []
        self.pool = Pool.create(os.path.join(workdir, "pool"), 4 * self.seq_total)
        self.buf = os.urandom(MiB)
        rng = random.Random(7)
        self.offsets = [rng.randrange(self.rand_span // 4096) * 4096 for _ in range(self.rand_ops)]

    def add(self, name: str, group: str, unit: str, ours: float, baseline: float | None = None,
            target: float | None = None, higher_is_better: bool = True, note: str = "") -> None:
        self.results.append(row(name, group, unit, ours, baseline, target, higher_is_better, note))
        print(_row(self.results[-1]), flush=True)

    # -- helpers ---------------------------------------------------------------------------

    def plain(self) -> int:
        path = os.path.join(self.dir, "plain.img")
        if os.path.exists(path):
            os.unlink(path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(fd, max(self.seq_total, self.rand_span))
        return fd

    def fresh_lu(self, size: int):
        if any(r["name"] == "bench" for r in self.pool.list_lus()):
            self.pool.remove("bench")
        return self.pool.create_lu("bench", size)

    def median(self, fn: Callable[[], float]) -> float:
        return statistics.median(fn() for _ in range(self.reps))

    # -- the measurements ------------------------------------------------------------------

    def _pair(self, plain: Callable[[int], tuple[float, float]], ours: Callable[[Any], tuple[float, float]],
              lu_size: int) -> tuple[list[float], ...]:
        """Run a (write, read) pattern on a fresh plain file and a fresh thin LU, alternating
        which goes first so writeback of one does not always land on the other."""
        w_plain, r_plain, w_lu, r_lu = [], [], [], []
        for rep in range(-1, self.reps):  # rep -1 warms up both sides and is not counted
            for side in ((0, 1) if rep % 2 == 0 else (1, 0)):
                if side == 0:
                    fd = self.plain()
                    w, r = plain(fd)
                    os.close(fd)
                    if rep >= 0:
                        w_plain.append(w)
                        r_plain.append(r)
                else:
                    lu = self.fresh_lu(lu_size)
                    w, r = ours(lu)
                    lu.close()
                    if rep >= 0:
                        w_lu.append(w)
                        r_lu.append(r)
        return w_plain, r_plain, w_lu, r_lu

    def sequential(self) -> None:
        total, buf = self.seq_total, self.buf

        def plain(fd: int) -> tuple[float, float]:
            t = time.perf_counter()
            for pos in range(0, total, MiB):
                os.pwrite(fd, buf, pos)
            os.fsync(fd)
            w = total / (time.perf_counter() - t)
            t = time.perf_counter()
            for pos in range(0, total, MiB):
                os.pread(fd, MiB, pos)
            return w, total / (time.perf_counter() - t)

        def ours(lu: Any) -> tuple[float, float]:
            t = time.perf_counter()
            for pos in range(0, total, MiB):
                lu.write(pos, buf)
            lu.flush()
            w = total / (time.perf_counter() - t)
            t = time.perf_counter()
            for pos in range(0, total, MiB):
                lu.read(pos, MiB)
            return w, total / (time.perf_counter() - t)

        w_plain, r_plain, w_lu, r_lu = self._pair(plain, ours, total)
        med = statistics.median
        self.add("seq write 1M", "core", "MiB/s", med(w_lu) / MiB, med(w_plain) / MiB, 0.9,
                 note=f"{format_size(total)} into a fresh thin LU, then flush")
        self.add("seq read 1M", "core", "MiB/s", med(r_lu) / MiB, med(r_plain) / MiB, 0.9)

    def metadata(self) -> None:
        """Metadata bytes per allocated extent on a pool of 64 KiB extents, half of them used."""
        path = os.path.join(self.dir, "meta-pool")
        n = 16384 if self.quick else 65536
        E = 64 << 10
        with Pool.create(path, 2 * n * E, extent_size=E) as p:
            with p.create_lu("m", n * E) as lu:
                for i in range(n):
                    lu.write(i * E, b"x")  # one byte allocates a whole (sparse) extent
            with p.meta.read() as txn:
                pages = sum(sum(txn.stat(db)[k] for k in ("branch_pages", "leaf_pages", "overflow_pages"))
                            for db in p.meta.db.values())
                psize = txn.stat(p.meta.db["maps"])["psize"]
        shutil.rmtree(path)
        self.add("metadata per allocated extent", "core", "bytes", pages * psize / n, None, 64,
                 higher_is_better=False,
                 note=f"LMDB pages in use / {n} allocated extents; pool twice that size, 64K extents")

    def random4k(self) -> None:
        block = self.buf[:4096]
        offs = self.offsets

        def plain(fd: int) -> tuple[float, float]:
            t = time.perf_counter()
            for off in offs:
                os.pwrite(fd, block, off)
            os.fsync(fd)
            w = len(offs) / (time.perf_counter() - t)
            t = time.perf_counter()
            for off in offs:
                os.pread(fd, 4096, off)
            return w, len(offs) / (time.perf_counter() - t)

        def ours(lu: Any) -> tuple[float, float]:
            t = time.perf_counter()
            for off in offs:
                lu.write(off, block)
            lu.flush()
            w = len(offs) / (time.perf_counter() - t)
            t = time.perf_counter()
            for off in offs:
                lu.read(off, 4096)
            return w, len(offs) / (time.perf_counter() - t)

        w_plain, r_plain, w_lu, r_lu = self._pair(plain, ours, self.rand_span)
        med = statistics.median
        self.add("rand write 4K", "core", "IOPS", med(w_lu), med(w_plain), 0.7,
                 note=f"{len(offs)} first writes over {format_size(self.rand_span)} of a fresh thin LU")
        self.add("rand read 4K", "core", "IOPS", med(r_lu), med(r_plain), 0.7)

    def cow(self) -> None:
        n = 64 if self.quick else 256
        E = self.pool.extent_size
        lu = self.fresh_lu(n * E)
        for i in range(n):
            lu.write(i * E, self.buf[:E] if E <= MiB else self.buf * (E // MiB))
        lu.close()
        block = os.urandom(4096)
        cows, inplace = [], []
        for rep in range(self.reps):
            name = f"bench-clone{rep}"
            self.pool.clone("bench", name)
            with self.pool.lu(name) as c:
                t = time.perf_counter()
                for i in range(n):
                    c.write(i * E + 4096, block)
                cows.append((time.perf_counter() - t) / n)
                t = time.perf_counter()
                for i in range(n):
                    c.write(i * E + 8192, block)
                inplace.append((time.perf_counter() - t) / n)
            self.pool.remove(name)
        med = statistics.median
        self.add("first write into cloned extent", "core", "us", med(cows) * 1e6, med(inplace) * 1e6, None,
                 higher_is_better=False,
                 note=f"4K write into a shared {format_size(E)} extent (its copy deferred: the filler or the "
                      "next flush completes it, untimed here); baseline: the next 4K write in place")

    def snapshots(self) -> None:
        times: dict[str, dict[str, float]] = {}
        for label, size in (("1G", 1 << 30), ("1T", 1 << 40)):
            lu = self.fresh_lu(size)
            for pos in range(0, 64 * MiB, MiB):
                lu.write(pos, self.buf)
            lu.flush()
            snap, clone = [], []
            for rep in range(self.reps):
                t = time.perf_counter()
                self.pool.snapshot("bench", f"s{rep}")
                snap.append(time.perf_counter() - t)
                t = time.perf_counter()
                self.pool.clone(f"bench@s{rep}", f"bc{rep}")
                clone.append(time.perf_counter() - t)
            lu.close()
            for rep in range(self.reps):
                self.pool.remove(f"bc{rep}")
            self.pool.remove("bench", recursive=True)
            times[label] = {"snapshot": statistics.median(snap), "clone": statistics.median(clone)}
        for op in ("snapshot", "clone"):
            self.add(f"{op} 1T LU vs 1G LU", "core", "ms", times["1T"][op] * 1e3, times["1G"][op] * 1e3,
                     0.5, higher_is_better=False,
                     note="64 MiB written in each; ratio = 1G time / 1T time, near 1 when O(1) in size")

    def many_lus(self) -> None:
        count = 10_000
        path = os.path.join(self.dir, "many")
        with Pool.create(path, "1T") as p:
            t = time.perf_counter()
            for i in range(count):
                p.create_lu(f"lu{i:05d}", "10G").close()
            created = time.perf_counter() - t

        def open_close() -> float:
            t = time.perf_counter()
            Pool.open(path).close()
            return time.perf_counter() - t
        opened = self.median(open_close)
        with Pool.open(path) as p:
            def listing() -> float:
                t = time.perf_counter()
                assert len(p.list_lus()) == count
                return time.perf_counter() - t
            listed = self.median(listing)
            big = self._lifecycle_ops(p)
        with Pool.create(os.path.join(self.dir, "few"), "1T") as q:
            for i in range(10):
                q.create_lu(f"lu{i:05d}", "10G").close()
            small = self._lifecycle_ops(q)
        shutil.rmtree(path)
        shutil.rmtree(os.path.join(self.dir, "few"))
        self.add(f"pool open, {count} LUs", "core", "ms", opened * 1e3, note=f"created in {created:.1f}s")
        self.add(f"lu list, {count} LUs", "core", "ms", listed * 1e3)
        for op in ("create", "remove", "snapshot", "clone"):
            self.add(f"lu {op} at {count} LUs vs at 10", "core", "ms", big[op] * 1e3, small[op] * 1e3, 0.8,
                     higher_is_better=False, note="median of 15; API, every handle closed")

    def _lifecycle_ops(self, p: Pool) -> dict[str, float]:
        """Seconds per create, snapshot, clone and remove in ``p`` (medians of 15 each)."""
        times: dict[str, list[float]] = {"create": [], "snapshot": [], "clone": [], "remove": []}
        for k in range(15):
            steps = [("create", lambda: p.create_lu(f"b{k}", "1G").close()),
                     ("snapshot", lambda: p.snapshot(f"b{k}", "s")),
                     ("clone", lambda: p.clone(f"b{k}@s", f"c{k}")),
                     ("remove", lambda: (p.remove(f"c{k}"), p.remove(f"b{k}", recursive=True)))]
            for op, fn in steps:
                t = time.perf_counter()
                fn()
                times[op].append(time.perf_counter() - t)
        out = {op: statistics.median(v) for op, v in times.items()}
        out["remove"] /= 2  # two removals per round
        return out

    def mirror(self) -> None:
        """Mirrored writes (C, both copies from one buffer in one call) against the plain file and
        against the same two writes in pure Python; scrub and verify against xxhsum."""
        from blockstore.scrub import scrub, verify
        total, buf = self.seq_total // 2, self.buf
        path = os.path.join(self.dir, "mpool")
        mp = Pool.create(path, 2 * total, mirror_dir=os.path.join(self.dir, "mfg1"))
        files = [os.path.join(self.dir, f"py{i}.img") for i in (0, 1)]
        plain, ours, python = [], [], []
        for rep in range(-1, self.reps):
            for f in files:
                if os.path.exists(f):
                    os.unlink(f)
            fds = [os.open(f, os.O_RDWR | os.O_CREAT, 0o600) for f in files]
            t = time.perf_counter()
            for pos in range(0, total, MiB):
                os.pwrite(fds[0], buf, pos)
            os.fsync(fds[0])
            t_plain = time.perf_counter() - t
            t = time.perf_counter()
            for pos in range(0, total, MiB):
                os.pwrite(fds[0], buf, pos)
                os.pwrite(fds[1], buf, pos)
            os.fsync(fds[0])
            os.fsync(fds[1])
            t_py = time.perf_counter() - t
            for fd in fds:
                os.close(fd)
            if any(r["name"] == "m" for r in mp.list_lus()):
                mp.remove("m")
            with mp.create_lu("m", total, mirrored=True) as lu:
                t = time.perf_counter()
                for pos in range(0, total, MiB):
                    lu.write(pos, buf)
                lu.flush()
                t_ours = time.perf_counter() - t
            if rep >= 0:
                plain.append(total / t_plain)
                python.append(total / t_py)
                ours.append(total / t_ours)
        med = statistics.median
        self.add("mirrored seq write 1M vs plain", "mirror", "MiB/s", med(ours) / MiB, med(plain) / MiB, 0.45,
                 note="two copies, checksums of 4 KiB blocks as written; one plain copy is the limit x0.5")
        self.add("mirrored seq write 1M vs pure Python", "mirror", "MiB/s", med(ours) / MiB, med(python) / MiB,
                 None, note="baseline: os.pwrite to each of two files, fsync both (no checksums)")
        scr = [scrub(mp)["mib_per_s"] for _ in range(self.reps)]
        ver = [verify(mp, "m")["mib_per_s"] for _ in range(self.reps)]
        xx = []
        if shutil.which("xxhsum"):
            for _ in range(self.reps):
                t = time.perf_counter()
                subprocess.run(["xxhsum", "-H3", files[0], files[1]], check=True, capture_output=True)
                xx.append(2 * total / MiB / (time.perf_counter() - t))
        base = med(xx) if xx else None
        self.add("scrub vs xxhsum", "mirror", "MiB/s", med(scr), base, None,
                 note="bytes of both copies checked; xxhsum -H3 of two plain files of the same size")
        self.add("verify vs xxhsum", "mirror", "MiB/s", med(ver), base, None, note="MiB of one LU's extents")
        mp.close()
        shutil.rmtree(path)
        shutil.rmtree(os.path.join(self.dir, "mfg1"))
        for f in files:
            os.unlink(f)

    def checksum_cost(self) -> None:
        """What the mirror's checksums cost on the write path: the same mirrored writes with them
        and without (the mirror's measurement switch), alternating which goes first each round.
        Seq 1M writes into a fresh LU (allocating, then flushed); random 4K writes in place."""
        total = self.seq_total // 2
        path = os.path.join(self.dir, "cpool")
        cp = Pool.create(path, 3 * total, mirror_dir=os.path.join(self.dir, "cfg1"))
        mirror = cp.mirror  # the measurement switch lives on the pool's mirror layer
        span, ops = min(self.rand_span, total), self.offsets
        ops = [o % span for o in ops]
        blob = self.buf[:4096]
        res: dict[tuple[str, bool], list[float]] = {}

        def seq() -> float:
            if any(r["name"] == "s" for r in cp.list_lus()):
                cp.remove("s")
            with cp.create_lu("s", total, mirrored=True) as lu:
                os.sync()  # the last round's writeback must not land on this one
                t = time.perf_counter()
                for pos in range(0, total, MiB):
                    lu.write(pos, self.buf)
                lu.flush()
                return total / MiB / (time.perf_counter() - t)

        with cp.create_lu("r", span, mirrored=True) as lu:
            for pos in range(0, span, MiB):
                lu.write(pos, self.buf)
            lu.flush()

        def rand() -> float:
            with cp.lu("r") as lu:
                os.sync()
                t = time.perf_counter()
                for o in ops:
                    lu.write(o, blob)
                lu.flush()
                return len(ops) / (time.perf_counter() - t)

        for rep in range(-1, 2 * self.reps):  # twice the rounds: the effect is near the noise
            for on in ((True, False) if rep % 2 == 0 else (False, True)):
                mirror.checksums = on
                for name, fn in (("seq", seq), ("rand", rand)):
                    v = fn()
                    if rep >= 0:
                        res.setdefault((name, on), []).append(v)
        mirror.checksums = True
        cp.close()
        shutil.rmtree(path)
        shutil.rmtree(os.path.join(self.dir, "cfg1"))
        med = statistics.median

        def spread(name: str) -> str:
            # each round ran both sides back to back: the median of the rounds' own ratios is
            # less at the mercy of the machine's drift than the ratio of the two medians
            paired = med(a / b for a, b in zip(res[name, True], res[name, False]))
            return ("; rounds " + " vs ".join(f"{min(res[name, on]):,.0f}-{max(res[name, on]):,.0f}" for on in (True, False))
                    + f"; median of the rounds' ratios {paired:.3f}")
        self.add("mirrored seq write 1M, checksums vs none", "mirror", "MiB/s", med(res["seq", True]),
                 med(res["seq", False]), 0.95, note="fresh LU, flushed, in-process" + spread("seq"))
        self.add("mirrored rand write 4K, checksums vs none", "mirror", "IOPS", med(res["rand", True]),
                 med(res["rand", False]), 0.95, note="in place, flushed, in-process" + spread("rand"))

    def services(self) -> None:
        """Image import against cp --sparse=always and qemu-img convert -O qcow2 of the same file;
        the space a second, near-identical import costs; deploy time for 1 GiB against 1 TiB."""
        from blockstore.services import images
        src = os.path.join(self.dir, "image")
        os.makedirs(src)
        size = self.seq_total // 2
        with open(os.path.join(src, "disk.raw"), "wb") as f:  # half data, half holes
            for pos in range(0, size, 2 * MiB):
                f.seek(pos)
                f.write(self.buf)
            f.truncate(size)
        path = os.path.join(self.dir, "ipool")
        ip = Pool.create(path, 4 * size)
        ours, cp, qemu = [], [], []
        out = os.path.join(self.dir, "copy")
        for rep in range(self.reps):
            t = time.perf_counter()
            images.import_image(ip, src, f"i{rep}")
            ours.append(size / (time.perf_counter() - t))
            images.remove_image(ip, f"i{rep}")
            t = time.perf_counter()
            subprocess.run(["cp", "--sparse=always", os.path.join(src, "disk.raw"), out], check=True)
            os.sync()
            cp.append(size / (time.perf_counter() - t))
            os.unlink(out)
            if shutil.which("qemu-img"):
                t = time.perf_counter()
                subprocess.run(["qemu-img", "convert", "-O", "qcow2", os.path.join(src, "disk.raw"), out], check=True)
                os.sync()
                qemu.append(size / (time.perf_counter() - t))
                os.unlink(out)
        med = statistics.median
        self.add("image import vs cp --sparse", "services", "MiB/s", med(ours) / MiB, med(cp) / MiB, 0.8,
                 note="logical MiB/s; a raw disk half data, half holes; cp followed by sync")
        if qemu:
            self.add("image import vs qemu-img convert", "services", "MiB/s", med(ours) / MiB, med(qemu) / MiB, 1.0,
                     note="qemu-img convert -O qcow2, followed by sync")
        images.import_image(ip, src, "base")
        used = ip.status()["allocated"]
        with open(os.path.join(src, "disk.raw"), "r+b") as f:  # a near-identical capture: 1 MiB changed
            f.seek(size // 2)
            f.write(os.urandom(MiB))
        images.import_image(ip, src, "next")
        extra = ip.status()["allocated"] - used
        self.add("second near-identical import", "services", "MiB", extra / MiB, None, None,
                 note=f"space a second capture with 1 MiB changed added; the first took {used / MiB:.0f} MiB")
        times = {}
        for label, vsize in (("1G", 1 << 30), ("1T", 1 << 40)):
            d = os.path.join(self.dir, f"img{label}")
            os.makedirs(d)
            with open(os.path.join(d, "disk.raw"), "wb") as f:
                f.write(self.buf)
                f.truncate(vsize)
            images.import_image(ip, d, f"size{label}")
            deploys = []
            for rep in range(self.reps):
                t = time.perf_counter()
                images.create_partition(ip, f"p{label}{rep}", f"size{label}")
                deploys.append(time.perf_counter() - t)
            times[label] = med(deploys)
            shutil.rmtree(d)
        self.add("deploy 1T image vs 1G image", "services", "ms", times["1T"] * 1e3, times["1G"] * 1e3, 0.5,
                 higher_is_better=False, note="partition create (a clone per image LU); ratio near 1 when O(1)")
        ip.close()
        shutil.rmtree(path)
        shutil.rmtree(src)

    def fuse(self) -> None:
        from . import fuse_bench
        missing = fuse_bench.missing_tools()
        if missing:
            print(f"FUSE runs skipped: {', '.join(missing)} not installed (make deps)")
            return
        res, self.fuse_samples = fuse_bench.run(self.dir, self.quick)
        self.fuse_results = res
        for r in fuse_rows(res, self.fuse_samples):
            self.results.append(r)
            print(_row(r), flush=True)

    def fuse_mirror(self) -> None:
        """Mirrored against unmirrored LUs through one mount (fio, same run, medians of rounds)."""
        from . import fuse_bench
        if "fio" in fuse_bench.missing_tools():
            print("FUSE mirror runs skipped: fio is not installed (make deps)")
            return
        runs = fuse_bench.mirror_run(self.dir, self.quick)
        targets = {"rand read 4K": 0.9, "seq read 1M": 0.9, "rand write 4K": 0.6, "seq write 1M, in place": 0.6,
                   "seq write 1M, first write": 0.5}
        for name, _, bs in fuse_bench.MIRROR_PATTERNS:
            m, u = runs["mirrored"][name], runs["unmirrored"][name]
            self.add(f"fuse mirrored {name} vs unmirrored", "fuse", "MiB/s" if bs == "1M" else "IOPS",
                     statistics.median(m), statistics.median(u), targets[name],
                     note=f"same mount, fio direct iodepth 16; rounds: mirrored {min(m):,.0f}-{max(m):,.0f}, "
                          f"unmirrored {min(u):,.0f}-{max(u):,.0f}")
        self.fuse_mirror_samples = runs
        v = fuse_bench.verify_run(self.dir, self.quick)
        on, off = v["verified"], v["unverified"]
        self.add("fuse mirrored rand read 4K, verified vs not", "fuse", "IOPS", statistics.median(on),
                 statistics.median(off), 0.9,
                 note=f"every block checked against its checksum (C) vs the check off; fio direct iodepth 16; "
                      f"rounds: verified {min(on):,.0f}-{max(on):,.0f}, unverified {min(off):,.0f}-{max(off):,.0f}")

    def first_writes(self) -> None:
        """Fresh targets' first writes through the mount against a fresh plain file, and a fresh
        clone's against a qcow2 overlay (fio, same run, medians of rounds)."""
        from . import fuse_bench
        missing = fuse_bench.missing_tools()
        if missing:
            print(f"first-write runs skipped: {', '.join(missing)} not installed (make deps)")
            return
        runs = fuse_bench.first_writes_run(self.dir, self.quick)
        ours = runs["blockstore mount"]
        for name, unit, base, target in (("seq write 1M", "MiB/s", "plain file", 0.8),
                                         ("rand write 4K", "IOPS", "plain file", 0.8),
                                         ("rand write 4K into a clone", "IOPS", "qemu fuse export", 1.5)):
            o, b = ours[name], runs[base][name]
            what = "a fresh plain sparse file, O_DIRECT" if base == "plain file" else "a qcow2 overlay on a written base"
            self.add(f"fuse first {name} vs {'plain' if base == 'plain file' else 'qcow2 overlay'}", "fuse", unit,
                     statistics.median(o), statistics.median(b), target,
                     note=f"fresh targets, fio O_DIRECT iodepth 16, end_fsync; baseline {what}; rounds: "
                          f"ours {min(o):,.0f}-{max(o):,.0f}, baseline {min(b):,.0f}-{max(b):,.0f}")
        self.first_write_samples = runs

    def db(self) -> None:
        """What a database or a VM asks of an LU through the mount (synchronous writers, an fsync
        after every write, QEMU's flushes; PostgreSQL's pgbench on ext4 in it) against a plain
        file, and mirrored against not."""
        from . import db_bench
        missing = db_bench.missing_tools()
        if missing:
            print(f"db runs skipped: {', '.join(missing)} not installed (make deps)")
            return
        self.db_samples = db_bench.sync_run(self.dir, self.quick)
        rows = db_rows(self.db_samples)
        if db_bench.postgres_bin() is None:
            print("pgbench runs skipped: PostgreSQL is not installed (make bench installs it)")
        else:
            self.pgbench_samples = db_bench.pgbench_run(self.dir, self.quick)
            rows += pgbench_rows(self.pgbench_samples)
        for r in rows:
            self.results.append(r)
            print(_row(r), flush=True)

    def live_snapshots(self) -> None:
        """Snapshots of an LU in use, asked of the mount that holds it, while fio writes it."""
        from . import fuse_bench
        if "fio" in fuse_bench.missing_tools():
            print("live snapshot runs skipped: fio is not installed (make deps)")
            return
        runs = fuse_bench.live_snapshot_run(self.dir, self.quick)
        lat = runs["latency"]
        self.add("live snapshot while fio writes", "live", "ms", statistics.median(lat) * 1e3, None, None,
                 higher_is_better=False,
                 note=f"{len(lat)} snapshots of an LU a mount holds open, asked over its control channel while fio "
                      f"writes it (rand 4K, iodepth 16); {min(lat) * 1e3:,.0f}-{max(lat) * 1e3:,.0f} ms")
        w, wo = runs["with"], runs["without"]
        self.add("fio rand write 4K with live snapshots vs without", "live", "IOPS", statistics.median(w),
                 statistics.median(wo), None,
                 note=f"a snapshot every 0.5 s; rounds with {min(w):,.0f}-{max(w):,.0f}, "
                      f"without {min(wo):,.0f}-{max(wo):,.0f}")
        self.live_samples = runs

    def diffs(self) -> None:
        """lu diff of two snapshots with 1% of the extents changed, 1 TiB against 1 GiB; and
        export-diff against a full export of the same LU."""
        from blockstore.diff import diff, export_diff
        from blockstore.transfer import export_file
        path = os.path.join(self.dir, "diff-pool")
        E = MiB
        times = {}
        with Pool.create(path, 64 << 30) as p:
            rng = random.Random(3)
            for label, size in (("1G", 1 << 30), ("1T", 1 << 40)):
                n = size // E
                with p.create_lu(label, size) as lu:
                    for e in rng.sample(range(n), max(1, n // 100)):
                        lu.write(e * E, self.buf[:4096])
                p.snapshot(label, "a")
                with p.lu(label) as lu:
                    for e in rng.sample(range(n), max(1, n // 100)):
                        lu.write(e * E + 4096, self.buf[:4096])
                p.snapshot(label, "b")
                t = []
                for _ in range(self.reps):
                    t0 = time.perf_counter()
                    d = diff(p, f"{label}@a", f"{label}@b")
                    t.append(time.perf_counter() - t0)
                times[label] = (statistics.median(t), len(d["ranges"]))
                p.remove(label, recursive=True)
            self.add("lu diff, 1% changed: 1T LU vs 1G LU", "live", "ms", times["1T"][0] * 1e3, times["1G"][0] * 1e3,
                     None, higher_is_better=False,
                     note=f"from the extent maps only; {times['1T'][1]:,} ranges on 1 TiB, {times['1G'][1]} on 1 GiB "
                          "(a map 1024 times longer: the cost follows the map, no data is read)")
            size = self.seq_total
            with p.create_lu("x", size) as lu:
                for pos in range(0, size, MiB):
                    lu.write(pos, self.buf)
            p.snapshot("x", "a")
            with p.lu("x") as lu:
                for e in rng.sample(range(size // MiB), size // MiB // 4):
                    lu.write(e * MiB, self.buf)
            p.snapshot("x", "b")
            out = os.path.join(self.dir, "diff.out")
            inc, full = [], []
            for rep in range(self.reps):
                for what in (("inc", "full") if rep % 2 == 0 else ("full", "inc")):
                    t0 = time.perf_counter()
                    if what == "inc":
                        with open(out, "wb") as f:
                            export_diff(p, "x@b", "a", f)
                            f.flush()
                            os.fsync(f.fileno())
                        inc.append(time.perf_counter() - t0)
                    else:
                        with p.lu("x@b", writable=False) as lu:
                            export_file(lu, out)
                        full.append(time.perf_counter() - t0)
                    os.unlink(out)
        changed = size // 4
        self.add("export-diff (25% changed) vs full export", "live", "ms", statistics.median(inc) * 1e3,
                 statistics.median(full) * 1e3, None, higher_is_better=False,
                 note=f"{format_size(changed)} changed of {format_size(size)}: export-diff "
                      f"{changed / MiB / statistics.median(inc):,.0f} MiB/s of changes, full export "
                      f"{size / MiB / statistics.median(full):,.0f} MiB/s; both fsynced")
        shutil.rmtree(path)

    def cluster(self) -> None:
        from . import cluster_bench
        cluster_bench.run(self, self.dir, self.quick)

    def serving(self) -> None:
        from . import serving_bench
        serving_bench.run(self, self.dir, self.quick)

    def etcd(self) -> None:
        from . import etcd_bench
        etcd_bench.run(self, self.dir, self.quick)

    def run(self, only: list[str] | None = None) -> None:
        for group, steps in GROUPS.items():
            if only is None or group in only:
                for step in steps:
                    getattr(self, step)()

    def close(self) -> None:
        self.pool.close()


def _row(r: dict[str, Any]) -> str:
    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:,.1f}" if abs(x) < 1e5 else f"{x:,.0f}"
    ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
    target = "-" if r["target"] is None else (f">={r['target']}" if r["ratio"] is not None or r["unit"] != "bytes"
                                              else f"<={r['target']}")
    mark = {True: "ok", False: "MISS", None: ""}[r["ok"]]
    return f"{r['name']:<42} {num(r['ours']):>12} {num(r['baseline']):>12} {r['unit']:<6} {ratio:>7} {target:>7} {mark}"


#: What a row is measured against when its name does not say (" vs ..."), by group.
DEFAULT_BASELINE = {"core": "a plain file", "fuse": "a plain file"}


def baseline_of(r: dict[str, Any]) -> str:
    """The baseline a row's ratio is against, in words: what its name says after " vs ", else
    its group's; rows with no baseline are absolute figures."""
    if r["ratio"] is None:
        return "absolute figures (no baseline)"
    if " vs " in r["name"]:
        said = r["name"].rsplit(" vs ", 1)[1]
        return {"plain": "a plain file", "qemu": "QEMU's FUSE export", "none": "the same without checksums",
                "without": "the same without snapshots", "unmirrored": "an unmirrored LU"}.get(said, said)
    return DEFAULT_BASELINE.get(r["group"], "a baseline the row names")


def _figure(x: float | None, unit: str) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f} {unit}" if abs(x) >= 100 else f"{x:,.2f} {unit}"


def chart(results: list[dict[str, Any]], path: str, title: str = "blockstore bench") -> str | None:
    """Every measured row: the ratio to its same-run baseline as a bar (log scale), with both
    absolute figures beside it, rows grouped under the baseline they were measured against;
    rows without a baseline listed with their figure. ``title`` names the run (date, commit)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no chart (pip install 'blockstore[bench]')"
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(baseline_of(r), []).append(r)
    order = sorted(groups, key=lambda g: (g.startswith("absolute"), g))
    lines: list[tuple[str, dict[str, Any] | None]] = []
    for g in order:
        lines.append((g, None))
        lines += [(r["name"], r) for r in groups[g]]
    fig, ax = plt.subplots(figsize=(13, 0.26 * len(lines) + 1.3))
    ratios = [r["ratio"] for _, r in lines if r is not None and r["ratio"] is not None]
    lo, hi = min(ratios + [0.5]) / 1.5, max(ratios + [2.0]) * 8
    for i, (label, r) in enumerate(lines):
        if r is None:
            continue
        if r["ratio"] is None:
            ax.text(lo * 1.05, i, _figure(r["ours"], r["unit"]), va="center", fontsize=8)
            continue
        color = "tab:green" if r["ok"] else "tab:red" if r["ok"] is False else "tab:gray"
        ax.barh(i, r["ratio"], left=lo, color=color, height=0.6)
        if r["target"] is not None:
            ax.plot([r["target"]] * 2, [i - 0.35, i + 0.35], color="black", linewidth=2)
        ax.text(r["ratio"], i, f" {r['ratio']:.2f}x   {_figure(r['ours'], r['unit'])} vs "
                              f"{_figure(r['baseline'], r['unit'])}", va="center", fontsize=8)
    ax.set_yticks(range(len(lines)))
    ax.set_yticklabels([label if r is not None else ("against " + label if not label.startswith("absolute")
                                                     else label) for label, r in lines], fontsize=8)
    for tick, (_, r) in zip(ax.get_yticklabels(), lines):
        if r is None:
            tick.set_fontweight("bold")
    ax.set_ylim(len(lines) - 0.5, -0.5)
    ax.set_xscale("log")  # ratios: 0.5x and 2x sit equally far from 1x
    ax.set_xlim(lo, hi)
    ax.axvline(1.0, color="gray", linestyle=":")
    ax.set_xlabel("ours / the baseline measured in the same run (log scale; right is better)\n"
                  "green: target met, red: missed, black tick: the target; both figures beside each bar")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


def replot(json_path: str, png_path: str | None = None) -> int:
    """Draw the chart of an earlier run from its JSON (nothing is measured)."""
    with open(json_path) as f:
        doc = json.load(f)
    png_path = png_path or os.path.splitext(json_path)[0] + ".png"
    why = chart(doc["results"], png_path, title_of(doc))
    print(why or f"wrote {png_path}")
    return 1 if why else 0


def title_of(doc: dict[str, Any]) -> str:
    """A chart's title: what ran, when, on which commit."""
    return (f"blockstore bench ({'quick' if doc.get('quick') else 'full'}; {', '.join(doc.get('groups') or [])}), "
            f"{doc.get('when', '?')}, commit {doc.get('commit', 'unknown')}; medians")


def _commit() -> str:
    """The checkout's commit (short), or "unknown" outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def main(quick: bool = False, json_path: str | None = None, png_path: str | None = None,
         workdir: str | None = None, only: list[str] | None = None, as_json: bool = False) -> int:
    """Run the groups ``only`` (default: all); ``json_path``: save the results there;
    ``as_json``: print them as JSON on stdout (the table goes to stderr then)."""
    unknown = sorted(set(only or ()) - set(GROUPS))
    if unknown:
        raise InvalidArgument(f"unknown bench group {', '.join(unknown)} (groups: {', '.join(GROUPS)})")
    if as_json:
        with contextlib.redirect_stdout(sys.stderr):
            doc = _run(quick, json_path, png_path, workdir, only)
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _run(quick, json_path, png_path, workdir, only)
    return 0


def _run(quick: bool, json_path: str | None, png_path: str | None, workdir: str | None,
         only: list[str] | None) -> dict:
    base = workdir or os.getcwd()
    os.makedirs(base, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".blockstore-bench-", dir=base)
    print(f"blockstore bench ({'quick' if quick else 'full'}) in {tmp}; medians, warm page cache")
    print(f"{'measure':<42} {'ours':>12} {'baseline':>12} {'unit':<6} {'ratio':>7} {'target':>7}")
    b = Bench(tmp, quick)
    started = time.time()
    try:
        b.run(only)
    finally:
        b.close()
        shutil.rmtree(tmp, ignore_errors=True)
    doc = {"version": 1, "quick": quick, "groups": only or list(GROUPS),
           "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
           "seconds": round(time.time() - started, 1), "commit": _commit(),
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "system": platform.platform()},
           "params": {"reps": b.reps, "seq_bytes": b.seq_total, "rand_ops": b.rand_ops, "rand_span": b.rand_span,
                      "extent_size": b.pool.extent_size},
           "results": b.results, "fuse": getattr(b, "fuse_results", None),
           "fuse_samples": getattr(b, "fuse_samples", None),
           "fuse_mirror_samples": getattr(b, "fuse_mirror_samples", None),
           "first_write_samples": getattr(b, "first_write_samples", None),
           "db_samples": getattr(b, "db_samples", None), "pgbench_samples": getattr(b, "pgbench_samples", None)}
    if json_path:
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with open(json_path, "w") as f:
            json.dump(doc, f, indent=2)
        print(f"wrote {json_path}")
        png_path = png_path or os.path.splitext(json_path)[0] + ".png"
    if png_path:
        why = chart(b.results, png_path, title_of(doc))
        print(why or f"wrote {png_path}")
    return doc
