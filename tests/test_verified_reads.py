"""Reads of a mirrored LU verify every block against its checksum and heal from the good copy
(mirror.py): through the API and through the mount (the C direct path verifies too). A block bad
in both copies is an I/O error, never wrong bytes."""
from __future__ import annotations

import errno
import os
import time

import pytest

from blockstore.pool import Pool
from blockstore.scrub import scrub

from conftest import direct_counts, flip, mount_log, mounted, run_cli

E = 64 << 10


def _copies(pool: str, mirror: str, pos: int, n: int) -> tuple[bytes, bytes]:
    out = []
    for path in (os.path.join(pool, "fg0", "data"), os.path.join(mirror, "data")):
        with open(path, "rb") as f:
            f.seek(pos)
            out.append(f.read(n))
    return out[0], out[1]


def _phys(p: Pool, name: str, ext: int) -> int:
    with p.lu(name, writable=False) as lu:
        return int(lu.extent_map.phys_range(ext, ext)[0])


def _mirrored(tmp_path, extents: int) -> tuple[str, str, bytes]:
    """A pool with a second failure group and a mirrored LU ``m`` of random data (pool, mirror
    directory, the data)."""
    pool, mirror = str(tmp_path / "pool"), str(tmp_path / "M")
    data = os.urandom(extents * E)
    with Pool.create(pool, "16M", extent_size=E, mirror_dir=mirror) as p:
        with p.create_lu("m", "1M", mirrored=True) as lu:
            lu.write(0, data)
    return pool, mirror, data


def test_a_flipped_byte_is_never_read_and_is_healed(tmp_path):
    pool, mirror, data = _mirrored(tmp_path, 4)
    with Pool.open(pool) as p:
        e = _phys(p, "m", 1)
        events = []
        p.listeners.append(lambda kind, info: events.append((kind, info)))
        flip(os.path.join(pool, "fg0", "data"), e * E + 5000)       # block 1 of copy 0
        flip(os.path.join(mirror, "data"), e * E + 3 * 4096 + 7)    # block 3 of copy 1
        with p.lu("m") as lu:
            assert lu.read(E + 4990, 20) == data[E + 4990:E + 5010]  # a partial block, healed
            assert lu.read(E, E) == data[E:2 * E]
        p.listeners.drain()
        healed = [i for k, i in events if k == "checksum_mismatch" and i.get("by") == "read"]
        assert healed and healed[0]["bad"] == [{"extent": e, "copy": 0, "blocks": 1}]
        a, b = _copies(pool, mirror, e * E + 4096, 4096)
        assert a == b == data[E + 4096:E + 8192]                      # copy 0 rewritten
        rep = scrub(p)
        assert rep["bad"] == [{"extent": e, "copy": 1, "blocks": 1}]  # never read: copy 0 served
        flip(os.path.join(mirror, "data"), e * E + 4096 + 9)           # now block 1 bad in both
        flip(os.path.join(pool, "fg0", "data"), e * E + 4096 + 9)
        flip(os.path.join(pool, "fg0", "data"), e * E + 4096 + 11)
        with p.lu("m") as lu, pytest.raises(OSError) as err:
            lu.read(E + 4096, 100)
        assert err.value.errno == errno.EIO
    r = run_cli("lu", "read", "m", "--offset", str(E + 4096), "--length", "4096", pool=pool, check_rc=None)
    assert r.returncode != 0 and r.stdout == b"" and b"checksum" in r.stderr


def test_through_the_mount_the_direct_path_verifies_and_heals(tmp_path):
    pool, mirror, data = _mirrored(tmp_path, 8)
    with Pool.open(pool) as p:
        phys = [_phys(p, "m", x) for x in range(8)]
    with mounted(pool, str(tmp_path / "mnt")) as mp:
        with open(f"{mp}/m", "rb", buffering=0) as f:
            assert f.read(8 * E) == data                     # the C path has every truth now
            for x in range(8):
                flip(os.path.join(pool, "fg0", "data"), phys[x] * E + x * 512)
            for x in range(8):                                # aligned and partial reads
                f.seek(x * E)
                assert f.read(4096) == data[x * E:x * E + 4096]
            f.seek(3 * E + 100)
            assert f.read(50) == data[3 * E + 100:3 * E + 150]
    counts = direct_counts(pool)
    assert counts["read direct"] > 0 and counts["read passed"] >= 8, counts
    assert "repaired from the other copy" in mount_log(pool)
    for x in range(8):
        a, b = _copies(pool, mirror, phys[x] * E, 4096)
        assert a == b == data[x * E:x * E + 4096]


def test_a_reader_that_does_not_know_the_truth_reads_unverified(tmp_path):
    """Another process writes the LU in place (its checksums not committed yet): a read-only
    handle here reads without verifying, never an EIO for bytes that are only newer."""
    pool, _, _ = _mirrored(tmp_path, 1)
    import subprocess
    import sys
    writer = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
from blockstore.pool import Pool
p = Pool.open({pool!r}); lu = p.open_lu("m"); lu.write(0, b"b" * {E}); lu.write(0, b"c" * 4096)
print("written", flush=True); sys.stdin.read()
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert writer.stdout.readline() == b"written\n"
        with Pool.open(pool, readonly=True) as p, p.lu("m", writable=False) as lu:
            assert lu.read(0, 4096) == b"c" * 4096
    finally:
        writer.stdin.close()
        writer.wait(30)
    time.sleep(0.1)
