"""What makes pool creation, growth and a new failure group survive a power loss: the order of
the system calls (extend the data file, fsync it, fsync its directory, and only then the metadata
commit), read off the real commands with strace; and a failed fsync that must keep failing (the
kernel may drop pages it could not write and call them clean), injected by a FUSE passthrough
under the data file; and a power cut (a disk whose unsynced writes are lost, faultfs.py) while
threads write and flush at once."""
from __future__ import annotations

import errno
import os
import shutil
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from blockstore.check import check
from blockstore.extents import UNMAPPED
from blockstore.pool import Pool
from blockstore.scrub import scrub
from conftest import daemon_pid, direct_counts, run_cli, start_faultfs, wait_for



def traced(pool: str, *args: str) -> list[str]:
    """The file system calls of one CLI command, each with the path of its descriptor."""
    cmd = ["strace", "-f", "-y", "-qq", "-e", "trace=ftruncate,fsync,fdatasync,pwrite64,pwritev,writev",
           sys.executable, "-m", "blockstore", "--pool", pool, *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return [line for line in r.stderr.splitlines() if "/locks/" not in line]


def first(lines: list[str], *needles: str, after: int = -1) -> int:
    for i, line in enumerate(lines):
        if i > after and all(n in line for n in needles):
            return i
    raise AssertionError(f"no {needles} after line {after} in:\n" + "\n".join(lines))


def check_order(lines: list[str], data: str, directory: str) -> None:
    """extend ``data``, fsync it, fsync ``directory`` (when the file is new), then commit."""
    grow = first(lines, "ftruncate(", f"<{data}>")
    synced = first(lines, "fsync(", f"<{data}>", after=grow)
    commit = first(lines, "meta/data.mdb>", after=grow)
    assert synced < commit, "\n".join(lines)
    if directory:
        assert first(lines, "fsync(", f"<{directory}>", after=synced) < commit, "\n".join(lines)


def test_create_grow_and_failgrp_add_make_the_data_file_durable_before_the_commit(tmp_path):
    pool = str(tmp_path / "pool")
    lines = traced(pool, "pool", "create", "--size", "64M")
    check_order(lines, f"{pool}/fg0/data", f"{pool}/fg0")
    assert first(lines, "fsync(", f"<{pool}>") < first(lines, "meta/data.mdb>")
    check_order(traced(pool, "pool", "grow", "--size", "128M"), f"{pool}/fg0/data", "")
    mirror = str(tmp_path / "M")
    check_order(traced(pool, "pool", "failgrp", "add", mirror), f"{mirror}/data", mirror)
    check_order(traced(pool, "pool", "grow", "--size", "192M"), f"{mirror}/data", "")


def pool_on(pool: str, disk: str, backing: str, mirrored: bool = False, first_too: bool = True) -> None:
    """A new pool at ``pool`` whose data file is ``disk``/data (and with ``mirrored`` a second
    failure group's, ``disk``/data1; ``first_too`` False: only that one), put there by moving it
    into ``backing`` (the directory a faultfs.py at ``disk`` serves)."""
    with Pool.create(pool, "64M", extent_size="64K", mirror_dir=f"{pool}-fg1" if mirrored else None) as p:
        with p.meta.read() as txn:
            cfg = p.meta.config(txn)
        names = ["data", "data1"][:len(cfg["groups"])]
        moved = {i: (p.groups.path(cfg, i), n) for i, n in enumerate(names) if i or first_too}
        p.meta.set_config(groups=[{**g, "path": f"{disk}/{moved[i][1]}"} if i in moved else g
                                  for i, g in enumerate(cfg["groups"])])
    for old, n in moved.values():
        shutil.move(old, f"{backing}/{n}")


def copies_of(pool: str, backing: str, name: str, size: int) -> list[bytes]:
    """The bytes of LU ``name`` as each copy of a mirror holds them in the files in ``backing``
    (what the disk kept), by the pool's committed map, read before any recovery settles them."""
    with Pool.open(pool, readonly=True) as p, p.lu(name, writable=False) as lu:
        E, m = p.extent_size, lu.extent_map
        out = []
        for n in ("data", "data1"):
            with open(f"{backing}/{n}", "rb") as f:
                out.append(b"".join(bytes(E) if m.get(e) == UNMAPPED else os.pread(f.fileno(), E, m.get(e) * E)
                                    for e in range(size // E)))
        return out


def test_a_failed_fsync_fails_the_flush_and_every_flush_after_it(tmp_path, faulty):
    mnt, ctl = faulty
    pool = str(tmp_path / "pool")
    pool_on(pool, mnt, mnt)
    p = Pool.open(pool)
    lu = p.create_lu("d", "1M")
    lu.write(0, b"a" * 4096)
    lu.flush()
    ctl.touch()
    lu.write(4096, b"b" * 4096)
    with pytest.raises(OSError) as e:
        lu.flush()
    assert e.value.errno == errno.EIO
    ctl.unlink()  # the device "works" again, but what it dropped is gone
    for _ in range(2):
        with pytest.raises(OSError, match="earlier sync"):
            lu.flush()
    with pytest.raises(OSError, match="earlier sync"):
        p.close()  # close flushes too; the pool is shut all the same
    with Pool.open(pool) as p:  # a new open starts from the last commit
        with p.lu("d", writable=False) as lu:
            assert lu.read(0, 4096) == b"a" * 4096
    r = run_cli("pool", "check", pool=pool)
    assert b"clean" in r.stdout


def test_a_failed_fsync_through_a_mount_fails_every_fsync_after_it(tmp_path, faulty):
    """The same through a mount, where an fsync of overwrites in place is the data file's sync
    done in C (native/fastpath.h): the failure it meets stands for the engine's own syncs too."""
    disk, ctl = faulty
    pool, lus = str(tmp_path / "pool"), str(tmp_path / "lus")
    pool_on(pool, disk, disk)
    with Pool.open(pool) as p:
        p.create_lu("d", "1M").close()
    os.mkdir(lus)
    run_cli("mount", lus, pool=pool)
    fd = os.open(f"{lus}/d", os.O_RDWR)
    try:
        # a hole filled (a commit), overwritten (the engine's data sync: the commit word moved), and
        # again (the data file's sync, in C)
        for data in (b"a", b"b", b"c"):
            os.pwrite(fd, data * 4096, 0)
            os.fsync(fd)
        ctl.touch()
        os.pwrite(fd, b"d" * 4096, 0)
        with pytest.raises(OSError) as e:
            os.fsync(fd)
        assert e.value.errno == errno.EIO
        ctl.unlink()  # the device "works" again, but what it dropped is gone
        for data in (b"e", b""):  # an overwrite (C would serve its fsync), nothing at all
            os.pwrite(fd, data * 4096, 0)
            with pytest.raises(OSError) as e:
                os.fsync(fd)
            assert e.value.errno == errno.EIO
    finally:
        os.close(fd)
        run_cli("umount", lus, pool=pool, check_rc=None)
    counts = direct_counts(pool)
    assert counts["fsync direct"] >= 2 and counts["fsync passed"] >= 4, counts  # "c", "d"; "a", "b", the refused
    assert b"clean" in run_cli("pool", "check", pool=pool).stdout


def test_a_mirror_copy_whose_sync_fails_through_a_mount_leaves_service(tmp_path, faulty):
    """A mirrored LU through a mount, its second copy on a disk whose fsync fails: the fsync C
    serves (both copies' syncs) hands the failure to the engine, which takes that copy out of
    service and answers from the other: the client's fsync succeeds, its data reads back."""
    disk, ctl = faulty
    pool, lus = str(tmp_path / "pool"), str(tmp_path / "lus")
    pool_on(pool, disk, disk, mirrored=True, first_too=False)
    with Pool.open(pool) as p:
        p.create_lu("d", "1M", mirrored=True).close()
    os.mkdir(lus)
    run_cli("mount", lus, pool=pool)
    fd = os.open(f"{lus}/d", os.O_RDWR)
    try:
        for data in (b"a", b"b", b"c"):  # a commit, then the copies' syncs (in C from the second on)
            os.pwrite(fd, data * 4096, 0)
            os.fsync(fd)
        ctl.touch()
        for data in (b"d", b"e"):  # the failure, then a degraded mirror's flush
            os.pwrite(fd, data * 4096, 0)
            os.fsync(fd)
        ctl.unlink()
        assert os.pread(fd, 4096, 0) == b"e" * 4096
    finally:
        os.close(fd)
        run_cli("umount", lus, pool=pool, check_rc=None)
    counts = direct_counts(pool)
    assert counts["fsync direct"] >= 1, counts
    with Pool.open(pool) as p:
        assert [g["state"] for g in p.failure_groups()] == ["ok", "failed"]
        with p.lu("d", writable=False) as lu:
            assert lu.read(0, 4096) == b"e" * 4096
        found = check(p)
        assert not found["errors"] and not found["leaks"], found


BLOCK, BLOCKS, THREADS = 4096, 256, 4

FLUSHER = textwrap.dedent("""
    import os, sys, threading, random
    target, threads, blocks, block, how = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    if how == "api":  # target: the pool; one handle, flushes grouped by the journal
        from blockstore.pool import Pool
        lu = Pool.open(target).open_lu("d")
        def put(data, at):
            lu.write(at, data)
            lu.flush()
    else:  # target: the LU's file in a mount; a descriptor per thread
        local = threading.local()
        def put(data, at):
            if not hasattr(local, "fd"):
                local.fd = os.open(target, os.O_RDWR)
            os.pwrite(local.fd, data, at)
            os.fsync(local.fd)
    said = threading.Lock()
    def say(*words):
        with said:
            print(*words, flush=True)
    def run(t):
        rng, seq = random.Random(t), 0
        mine = [b for b in range(blocks) if b % threads == t]
        while True:
            seq += 1
            b = rng.choice(mine)
            say("I", b, seq)
            put(f"{b}/{seq}".encode().ljust(block, b"."), b * block)
            say("A", b, seq)
    for t in range(threads):
        threading.Thread(target=run, args=(t,), daemon=True).start()
    threading.Event().wait()
""")


def _version(b: int, seq: int) -> bytes:
    return f"{b}/{seq}".encode().ljust(BLOCK, b".")


def _stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` has stopped: kill(SIGSTOP) returns once the signal is
    queued, and a thread that has not taken it yet could still see its disk go."""
    tasks = os.listdir(f"/proc/{pid}/task")
    states = []
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/stat") as f:
                states.append(f.read().rsplit(")", 1)[1].split()[0])
        except FileNotFoundError:
            continue  # a thread that ended meanwhile
    return all(s in "Tt" for s in states)


@pytest.mark.parametrize("through, mirrored", [("api", False), ("mount", False), ("mount", True)],
                         ids=["api", "mount", "mount-mirrored"])
def test_a_power_cut_during_concurrent_flushes_loses_no_acknowledged_write(tmp_path, through, mirrored):
    """Four threads write blocks of one LU (each thread its own blocks) and flush after every
    write: through the API in one process, so their flushes are grouped (journal.py), or each
    with a write and an fsync of the LU's file through a mount (most fsyncs of overwrites then
    served by the mount's C path, native/fastpath.h). Half the LU was written before
    (overwrites in place: a flush syncs the data file only), half is holes (a commit). The data
    file lies on a disk that loses what was not fsynced when its power is cut (faultfs.py
    volatile, killed; the mount is killed with it). After each cut: every block holds the last
    version whose flush returned, or one written after it, and the pool checks clean. A mirrored
    LU has both copies on the disk, and each of them must hold such a version before the next
    open settles them (a flush syncs both); after it, a scrub finds every checksum true."""
    backing, mnt, ctl, lus = tmp_path / "backing", tmp_path / "disk", tmp_path / "ctl", tmp_path / "lus"
    backing.mkdir()
    mnt.mkdir()
    pool = str(tmp_path / "pool")
    pool_on(pool, str(mnt), str(backing), mirrored)  # on the disk, as if synced (the cache holds no size change)
    held = [_version(b, 0) if b < BLOCKS // 2 else bytes(BLOCK) for b in range(BLOCKS)]
    rng, acked = random.Random(5), 0
    fs = start_faultfs(str(backing), str(mnt), str(ctl), volatile=True)
    try:
        with Pool.open(pool) as p, p.create_lu("d", BLOCKS * BLOCK, mirrored=mirrored) as lu:
            lu.write(0, b"".join(held[:BLOCKS // 2]))
            lu.flush()
        for k in range(4):
            if through == "mount":
                os.makedirs(lus, exist_ok=True)
                run_cli("mount", str(lus), pool=pool)
            writer = subprocess.Popen([sys.executable, "-c", FLUSHER, f"{lus}/d" if through == "mount" else pool,
                                       str(THREADS), str(BLOCKS), str(BLOCK), through],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            time.sleep(rng.uniform(0.5, 1.5))
            # the power cut, everything at once: the engine stopped first, so that it does not see
            # its disk go (it would record a copy failed), then the disk's cache gone, then the engine
            engine = daemon_pid(pool) if through == "mount" else writer.pid
            os.kill(engine, signal.SIGSTOP)
            wait_for(lambda: _stopped(engine), timeout=5.0, step=0.001)  # the signal is only queued
            fs.send_signal(signal.SIGKILL)
            fs.wait()
            os.kill(engine, signal.SIGKILL)
            writer.kill()
            # a line the kill cut short (the text after the last newline) is left out: an "I" line is
            # printed before its write begins, and an "A" line's version stays allowed by its "I" line
            lines = [line.split() for line in writer.communicate(timeout=30)[0].split("\n")[:-1]]
            subprocess.run(["fusermount3", "-uz", str(mnt)], check=True)
            if through == "mount":
                subprocess.run(["fusermount3", "-uz", str(lus)], check=True)
            fs = start_faultfs(str(backing), str(mnt), str(ctl), volatile=True)
            allowed: list[list[bytes]] = [[h] for h in held]
            for kind, b, seq in lines:
                v = _version(int(b), int(seq))
                allowed[int(b)] = [v] if kind == "A" else allowed[int(b)] + [v]
            acked += sum(1 for line in lines if line[0] == "A")
            for i, copy in enumerate(copies_of(pool, str(backing), "d", BLOCKS * BLOCK) if mirrored else []):
                for b in range(BLOCKS):
                    got = copy[b * BLOCK:(b + 1) * BLOCK]
                    assert got in allowed[b], (k, i, b, got[:16], [a[:16] for a in allowed[b]])
            with Pool.open(pool) as p:
                with p.lu("d", writable=False) as lu:
                    now = lu.read(0, BLOCKS * BLOCK)
                for b in range(BLOCKS):
                    got = now[b * BLOCK:(b + 1) * BLOCK]
                    assert got in allowed[b], (k, b, got[:16], [a[:16] for a in allowed[b]])
                    held[b] = got
                report = check(p)
                assert report["clean"], report
                if mirrored:
                    rep = scrub(p)
                    assert rep["clean"] and rep["bad"] == [], rep
        assert acked > 40, acked  # flushes went through between the cuts
    finally:
        if os.path.ismount(lus):
            subprocess.run(["fusermount3", "-uz", str(lus)], check=False)
        subprocess.run(["fusermount3", "-uz", str(mnt)], check=False)
        fs.kill()
        fs.wait()


def test_a_pool_is_private_to_its_owner(tmp_path):
    """The metadata names every LU (and the image dedup digests), the data files hold their bytes:
    nothing of a pool is readable by other local users, whatever the umask."""
    pool, mirror = str(tmp_path / "pool"), str(tmp_path / "M")
    old = os.umask(0o022)
    try:
        run_cli("pool", "create", "--size", "64M", "--mirror-dir", mirror, pool=pool)
        run_cli("cluster", "create", "c1", pool=pool)
        run_cli("lu", "create", "secret-name", "--size", "1M", "--mirrored", pool=pool)  # an event
        from blockstore.cluster.bridge import report_fault
        report_fault(pool, "io_error", {"lu": "secret-name"})
        run_cli("ffdc", "capture", "--reason", "look", pool=pool)
    finally:
        os.umask(old)
    for path in (pool, f"{pool}/meta", f"{pool}/fg0", f"{pool}/locks", mirror):
        assert os.stat(path).st_mode & 0o777 == 0o700, path
    for path in (f"{pool}/meta/data.mdb", f"{pool}/meta/lock.mdb", f"{pool}/fg0/data", f"{mirror}/data"):
        assert os.stat(path).st_mode & 0o077 == 0, path
    opened = [os.path.join(d, n) for d, dirs, files in os.walk(pool) for n in dirs + files]
    assert any("payloads" in p for p in opened) and any("faults" in p for p in opened)
    assert not [p for p in opened if os.lstat(p).st_mode & 0o077], [
        (p, oct(os.lstat(p).st_mode)) for p in opened if os.lstat(p).st_mode & 0o077]


def test_another_user_is_told_the_pool_is_private(tmp_path):
    """`cluster status` by a user without access failed with lmdb.ReadonlyError, and `lu list`
    said there was no pool: it is there, and it is not theirs."""
    import tempfile
    base = tempfile.mkdtemp(prefix="bs-private-")  # pytest's own directory is root's alone
    try:
        os.chmod(base, 0o755)
        pool = os.path.join(base, "pool")
        run_cli("pool", "create", "--size", "64M", pool=pool)
        run_cli("cluster", "create", "c1", pool=pool)
        for mode in (0o700, 0o755):  # the pool as made, and opened up by its owner but for meta/
            os.chmod(pool, mode)
            for args in (("cluster", "status"), ("lu", "list"), ("pool", "status")):
                r = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                                    sys.executable, "-m", "blockstore", "--pool", pool, *args],
                                   capture_output=True, cwd=base)
                assert r.returncode == 1 and r.stderr.decode().splitlines() == [
                    f"blockstore: no access to the pool at {pool}: permission denied (a pool is private to its owner)"], r
    finally:
        shutil.rmtree(base, ignore_errors=True)
