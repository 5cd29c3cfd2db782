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

WRITER = textwrap.dedent("""
    import mmap, os, random, sys
    path, seed, piece, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    rng = random.Random(seed)
    fd = os.open(path, os.O_RDWR | os.O_DIRECT)
    buf = mmap.mmap(-1, piece)  # page-aligned, as O_DIRECT wants
    seq = 0
    while True:
        seq += 1
        c = rng.randrange(size // piece)
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
        run_cli("mount", mnt, pool=pool_dir)
        seed = 1000 + k
        writer = subprocess.Popen([sys.executable, "-c", WRITER, f"{mnt}/d", str(seed), str(PIECE), str(LU_SIZE)],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        time.sleep(rng.uniform(0.05, 0.6))
        os.kill(daemon_pid(pool_dir), signal.SIGKILL)
        time.sleep(0.05)
        writer.kill()
        out, _ = writer.communicate(timeout=30)
        lines = out.splitlines()
        acked_total += sum(1 for line in lines if line.startswith("A"))
        run_cli("umount", mnt)  # clears the stale mount

        with Pool.open(pool_dir) as p:  # the open settles the dead daemon's regions
            now = read_all(p, "d")
            options = allowed(held, seed, lines)
            for c, opts in enumerate(options):
                got = now[c * PIECE:(c + 1) * PIECE]
                for b in range(0, PIECE, BLOCK):
                    assert any(got[b:b + BLOCK] == o[b:b + BLOCK] for o in opts), (k, c, b)
                if len(opts) == 1:  # fsynced last (or untouched): exactly that
                    assert got == opts[0], (k, c)
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
