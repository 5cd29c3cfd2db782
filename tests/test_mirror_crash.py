"""SIGKILL of the mount daemon while a client writes a mirrored LU through the mount with O_DIRECT
and fsync. After every kill: each acknowledged (fsynced) write reads back; each 4 KiB block holds
one whole version a client wrote (or what it held before); what a read returns right after the
restart never changes afterwards (not by scrub --repair, verify --repair, a remount, nor the
next round's untouched blocks); every snapshot's sha256 stays as it was; ``pool scrub`` exits 0.

The slow run (BLOCKSTORE_SLOW=1) kills 200 times; the ordinary one 8."""
from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from blockstore.pool import Pool
from blockstore.check import check
from blockstore.scrub import scrub, verify
from conftest import SLOW, daemon_pid, run_cli

KILLS = 200 if SLOW else 8
MiB = 1 << 20
LU_SIZE = 32 * MiB
PIECE = 256 << 10
BLOCK = 4096
KEEP_SNAPSHOTS = 4

# Writer w of W writes pieces c with c % W == w, numbering its versions w + W, w + 2W, ...
WRITER = textwrap.dedent("""
    import mmap, os, random, sys
    path, seed, piece, size, w, W = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    rng = random.Random(f"{seed}/{w}")
    fd = os.open(path, os.O_RDWR | os.O_DIRECT)
    buf = mmap.mmap(-1, piece)  # page-aligned, as O_DIRECT wants
    seq = w
    while True:
        seq += W
        c = rng.randrange(size // piece // W) * W + w
        buf[:] = random.Random(f"{seed}/{c}/{seq}").randbytes(piece)
        print("I", c, seq, flush=True)
        os.pwrite(fd, buf, c * piece)
        if rng.random() < 0.7:
            os.fsync(fd)
            print("A", c, seq, flush=True)
""")


def version(seed: int, c: int, seq: int) -> bytes:
    return random.Random(f"{seed}/{c}/{seq}").randbytes(PIECE)


def read_all(pool: Pool, name: str) -> bytes:
    with pool.lu(name, writable=False) as lu:
        return lu.read(0, lu.size)


def allowed(before: bytes, seed: int, lines: list[str]) -> list[list[bytes]]:
    """Per piece, the versions each of its blocks may hold: the last fsynced one (or what it held
    before the round) and any written after it (not yet fsynced)."""
    options = [[before[c * PIECE:(c + 1) * PIECE]] for c in range(LU_SIZE // PIECE)]
    for line in lines:
        kind, c, seq = line.split()
        data = version(seed, int(c), int(seq))
        if kind == "A":
            options[int(c)] = [data]
        else:
            options[int(c)].append(data)
    return options


def run_and_kill(pool_dir: str, mnt: str, seed: int, writers: int, rng: random.Random) -> list[str]:
    """Mount, start ``writers`` writer processes of LU d, SIGKILL the mount at a random instant,
    end the writers, clear the stale mount; returns every line the writers printed."""
    run_cli("mount", mnt, pool=pool_dir)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, f"{mnt}/d", str(seed), str(PIECE), str(LU_SIZE),
                               str(w), str(writers)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for w in range(writers)]
    time.sleep(rng.uniform(0.05, 0.6))
    os.kill(daemon_pid(pool_dir), signal.SIGKILL)
    time.sleep(0.05)
    lines = []
    for writer in procs:
        writer.kill()
        lines += writer.communicate(timeout=30)[0].splitlines()
    run_cli("umount", mnt)  # clears the stale mount
    return lines


def check_acked(now: bytes, before: bytes, seed: int, lines: list[str], k: int) -> None:
    """Each piece of ``now`` holds, block by block, a version its writer wrote (or what it held
    ``before``), and exactly the last fsynced version where nothing was written after it."""
    for c, opts in enumerate(allowed(before, seed, lines)):
        got = now[c * PIECE:(c + 1) * PIECE]
        for b in range(0, PIECE, BLOCK):
            assert any(got[b:b + BLOCK] == o[b:b + BLOCK] for o in opts), (k, c, b)
        if len(opts) == 1:  # fsynced last (or untouched): exactly that
            assert got == opts[0], (k, c)


def test_sigkill_of_the_mount_during_mirrored_writes(tmp_path):
    pool_dir, mnt = str(tmp_path / "pool"), str(tmp_path / "mnt")
    os.mkdir(mnt)
    run_cli("pool", "create", "--size", "1G", "--mirror-dir", str(tmp_path / "M"), pool=pool_dir)
    run_cli("lu", "create", "d", "--size", str(LU_SIZE), "--mirrored", pool=pool_dir)
    held = bytes(LU_SIZE)  # what the LU reads as now
    snaps: dict[str, str] = {}
    rng = random.Random(7)
    acked_total = 0
    for k in range(KILLS):
        seed = 1000 + k
        lines = run_and_kill(pool_dir, mnt, seed, 1, rng)
        acked_total += sum(1 for line in lines if line.startswith("A"))

        with Pool.open(pool_dir) as p:  # the open settles the dead daemon's regions
            now = read_all(p, "d")
            check_acked(now, held, seed, lines, k)
            for name, digest in snaps.items():
                assert hashlib.sha256(read_all(p, name)).hexdigest() == digest, (k, name)
            name = f"d@k{k}"
            p.snapshot("d", f"k{k}")
            snaps[name] = hashlib.sha256(now).hexdigest()
            rep = scrub(p, repair=True)
            assert rep["clean"] and rep["bad"] == [] and rep["repaired"] == 0, rep
            v = verify(p, "d", repair=True)
            assert v["mismatched"] == [] and v["repaired"] == 0
            assert read_all(p, "d") == now
            if len(snaps) > KEEP_SNAPSHOTS:
                old = sorted(snaps, key=lambda s: int(s.split("@k")[1]))[0]
                p.remove(old)
                del snaps[old]
            assert check(p)["clean"]
        r = run_cli("pool", "scrub", pool=pool_dir)
        assert b"stale" not in r.stdout
        held = now
    assert acked_total > KILLS  # the client got fsyncs through, not only kills
    run_cli("mount", mnt, pool=pool_dir)
    try:
        with open(f"{mnt}/d", "rb") as f:
            assert f.read() == held  # a remount reads what the last check read
    finally:
        run_cli("umount", mnt)


@pytest.mark.parametrize("mirrored", [False, True], ids=["unmirrored", "mirrored"])
def test_sigkill_of_the_mount_during_concurrent_fsyncs(tmp_path, mirrored):
    """Four writers of one LU, each its own pieces, each write followed by an fsync, so their
    fsyncs share flushes (journal.py: a flush that arrives during another waits for the next);
    the first half of the LU written before (fsyncs of overwrites in place: a data sync alone
    where the LU is unmirrored), the rest holes (a metadata commit). SIGKILL of the mount at
    random instants: every fsynced piece reads back exactly, the others hold a version written."""
    pool_dir, mnt = str(tmp_path / "pool"), str(tmp_path / "mnt")
    os.mkdir(mnt)
    run_cli("pool", "create", "--size", "256M", *(["--mirror-dir", str(tmp_path / "M")] if mirrored else []),
            pool=pool_dir)
    run_cli("lu", "create", "d", "--size", str(LU_SIZE), *(["--mirrored"] if mirrored else []), pool=pool_dir)
    held = os.urandom(LU_SIZE // 2) + bytes(LU_SIZE // 2)
    run_cli("lu", "write", "d", pool=pool_dir, stdin=held[:LU_SIZE // 2])
    rng = random.Random(11)
    acked = 0
    for k in range(KILLS // 2):
        seed = 2000 + k
        lines = run_and_kill(pool_dir, mnt, seed, 4, rng)
        acked += sum(1 for line in lines if line.startswith("A"))
        with Pool.open(pool_dir) as p:
            now = read_all(p, "d")
            check_acked(now, held, seed, lines, k)
            assert check(p)["clean"]
            if mirrored:  # checksums a flush left in memory were rebuilt from the copies at this open
                rep = scrub(p)
                assert rep["clean"] and rep["bad"] == [], rep
        held = now
    assert acked > KILLS  # fsyncs got through between the kills
