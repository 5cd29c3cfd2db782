"""LUs in use: snapshots, clones and growth of an LU a mount holds open (asked of the mount over
its control channel), discard through the mount (fstrim, blkdiscard), an unmount that says why
it cannot, and no LU left behind by a create that failed. Real clients: fio, a loop device,
mkfs.ext4, fsfreeze, fstrim, blkdiscard, e2fsck."""
from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import SLOW, cli_json, run_cli, sh

MiB = 1 << 20
B = 4096


@pytest.fixture
def pool_path(tmp_path):
    p = str(tmp_path / "pool")
    # room for every snapshot of the prefix test to hold the whole region fio rewrites (256 MiB
    # each: random writes copy every extent again after each snapshot); the files are sparse
    run_cli("pool", "create", "--size", "8G", "--mirror-dir", str(tmp_path / "fg1"), pool=p)
    run_cli("lu", "create", "vol", "--size", "512M", pool=p)
    return p


@pytest.fixture
def loop(mnt):
    """A loop device over MNT/vol (direct I/O off: the page cache of the loop device is the
    kernel's, the LU file's is the mount's)."""
    dev = sh("losetup", "--find", "--show", f"{mnt}/vol").stdout.decode().strip()
    yield dev
    subprocess.run(["losetup", "-d", dev], capture_output=True)


@pytest.fixture
def ext4(loop, tmp_path):
    """An ext4 made on the loop device and mounted; unmounted after."""
    sh("mkfs.ext4", "-q", "-F", loop)
    fs = tmp_path / "fs"
    fs.mkdir()
    sh("mount", loop, str(fs))
    try:
        yield fs
    finally:
        if os.path.ismount(fs):
            sh("umount", str(fs))


def allocated(pool_path: str, name: str) -> int:
    """The LU's allocated bytes as the holder sees them now (its status, over the control channel)."""
    return cli_json("lu", "status", name, pool=pool_path)["allocated"]


# -- live snapshots, clones, grow, status --------------------------------------------------------

SEQ_WRITER = textwrap.dedent("""
    import mmap, os, struct, sys
    path, count, acked = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, 4096)
    ack = os.open(acked, os.O_WRONLY | os.O_CREAT, 0o600)
    for i in range(count):
        buf.seek(0)
        buf.write(struct.pack("<Q", i + 1) * 512)
        os.pwrite(fd, buf, i * 4096)      # acknowledged when it returns (O_DIRECT)
        os.pwrite(ack, struct.pack("<Q", i + 1), 0)
    os.close(fd)
""")


def test_live_snapshots_hold_a_prefix_of_the_acknowledged_writes(mnt, pool_path, tmp_path):
    """A writer writes blocks 1, 2, 3... in order through the mount, each acknowledged before
    the next; another process takes 20 snapshots meanwhile (the mount holds the LU open: each is
    taken by the mount, asked over its control channel). Each snapshot holds exactly blocks 1..k
    and zeros after, with k at least what was acknowledged before the snapshot was asked for and
    at most what was acknowledged when it returned. fio with crc32c verify writes the LU's second
    half all along (every snapshot makes its extents copy on write again)."""
    acked = tmp_path / "acked"
    acked.write_bytes(bytes(8))
    count = 60000
    writer = subprocess.Popen([sys.executable, "-c", SEQ_WRITER, f"{mnt}/vol", str(count), str(acked)],
                              stderr=subprocess.PIPE)
    fio = subprocess.Popen(["fio", "--name=v", f"--filename={mnt}/vol", "--offset=256M", "--size=256M",
                            "--rw=randwrite", "--bs=4k",
                            "--direct=1", "--ioengine=libaio", "--iodepth=8", "--verify=crc32c", "--verify_state_save=0", "--time_based",
                            "--runtime=8", "--output-format=terse"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    bounds = []
    try:
        for i in range(20 if SLOW else 8):  # each is read back whole (240 MB) below
            lo = struct.unpack("<Q", acked.read_bytes()[:8])[0]
            t = time.monotonic()
            run_cli("lu", "snapshot", "vol", f"s{i}", pool=pool_path)
            bounds.append((lo, struct.unpack("<Q", acked.read_bytes()[:8])[0], time.monotonic() - t))
            time.sleep(0.1)
    finally:
        _, werr = writer.communicate(timeout=300)
        out, err = fio.communicate(timeout=300)
    assert writer.returncode == 0, (werr.decode()[-2000:], run_cli("pool", "status", pool=pool_path).stdout.decode(),
                                    run_cli("lu", "du", pool=pool_path).stdout.decode()[-3000:])
    assert fio.returncode == 0, err.decode()[-2000:]
    assert bounds[-1][0] > bounds[0][0], bounds  # the writer went on meanwhile
    span = count * B
    for i, (lo, hi, _) in enumerate(bounds):
        data = run_cli("lu", "read", f"vol@s{i}", "--length", str(span), pool=pool_path).stdout
        seqs = [struct.unpack_from("<Q", data, j * B)[0] for j in range(count)]
        k = next((j for j, s in enumerate(seqs) if s != j + 1), count)
        assert all(s == 0 for s in seqs[k:]), (i, k)  # nothing after the prefix
        assert lo <= k <= hi, (i, lo, k, hi)
        assert data[:k * B] == b"".join(struct.pack("<Q", j + 1) * 512 for j in range(k))


def test_live_clone_grow_and_status(mnt, pool_path):
    with open(f"{mnt}/vol", "r+b") as f:
        f.write(b"live data")
        f.flush()
        os.fsync(f.fileno())
        st = cli_json("lu", "status", "vol", pool=pool_path)
        assert st["holder"]["pid"] > 0 and "blockstore" in st["holder"]["command"] and st["open_handles"] == 1 and st["writable"] and st["bytes_written"] >= 9
        run_cli("lu", "snapshot", "vol", "x", pool=pool_path)
        for refused in (["lu", "resize", "vol", "--size", "256M", "--force"], ["lu", "rollback", "vol", "x"],
                        ["lu", "rm", "vol", "-r"]):
            r = run_cli(*refused, pool=pool_path, check_rc=None)  # what cannot be done live: the holder named
            assert r.returncode != 0 and "open for writing by pid" in r.stderr.decode(), (refused, r.stderr)
            assert len(r.stderr.decode().strip().splitlines()) == 1
        run_cli("lu", "clone", "vol", "kid", pool=pool_path)       # a clone of the LU in use
        run_cli("lu", "resize", "vol", "--size", "1G", pool=pool_path)  # grows it
        assert cli_json("lu", "show", "vol", pool=pool_path)["size"] == 1 << 30
        deadline = time.monotonic() + 5  # the kernel's attribute cache lets go within a second
        while os.fstat(f.fileno()).st_size != 1 << 30 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert os.fstat(f.fileno()).st_size == 1 << 30
        f.seek((1 << 30) - 5)
        f.write(b"tail!")  # the new end is writable at once
        f.flush()
    run_cli("lu", "snapshot", "kid", "k1", pool=pool_path)
    assert run_cli("lu", "read", "kid", "--length", "9", pool=pool_path).stdout == b"live data"


def test_the_control_channel_refuses_bad_requests_and_strangers(mnt, pool_path):
    with open(f"{mnt}/vol", "rb"):
        ctl = os.path.join(pool_path, "control")
        socks = os.listdir(ctl)
        assert len(socks) == 1 and os.stat(ctl).st_mode & 0o777 == 0o700
        path = os.path.join(ctl, socks[0])
        assert os.stat(path).st_mode & 0o777 == 0o600

        def ask(raw: bytes) -> dict:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
                s.sendall(raw)
                return json.loads(s.makefile().readline())
        assert ask(b"{not json\n")["ok"] is False
        r = ask(b'{"op": "explode"}\n')
        assert r["ok"] is False and "unknown op" in r["error"]
        r = ask(b'{"op": "grow", "lu": "vol", "size": 1}\n')
        assert r["ok"] is False and "shrink" in r["error"]
        assert ask(b'{"op": "status", "lu": "vol"}\n')["ok"] is True
        # another user is refused (run as nobody, when we can switch users)
        if os.getuid() == 0:
            script = textwrap.dedent(f"""
                import json, os, socket
                os.setgid(65534); os.setuid(65534)
                s = socket.socket(socket.AF_UNIX)
                try:
                    s.connect({path!r})
                except PermissionError:
                    print("refused by the file mode")
                else:
                    s.sendall(b'{{"op": "status", "lu": "vol"}}\\n')
                    print(json.loads(s.makefile().readline())["error"])
            """)
            out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
            assert "refused" in out.stdout or "may not" in out.stdout, out


def test_snapshot_of_a_mounted_ext4_in_use(mnt, pool_path, ext4):
    """ext4 on a loop device over the LU file, mounted and written; fsfreeze gives a clean file
    system point, a live snapshot is taken there, and a clone of it passes e2fsck -fn."""
    for i in range(20):
        (ext4 / f"f{i}").write_bytes(os.urandom(100_000 * (i + 1)))
    sh("fsfreeze", "-f", str(ext4))
    try:
        run_cli("lu", "snapshot", "vol", "frozen", pool=pool_path)
    finally:
        sh("fsfreeze", "-u", str(ext4))
    (ext4 / "after").write_bytes(os.urandom(1 << 20))  # still in use after
    run_cli("lu", "clone", "vol@frozen", "check", pool=pool_path)
    sh("e2fsck", "-fn", f"{mnt}/check")


# -- discard ---------------------------------------------------------------------------------------

def test_fstrim_gives_the_space_of_deleted_files_back(mnt, pool_path, loop, ext4):
    for i in range(20):
        (ext4 / f"f{i}").write_bytes(os.urandom(10 * MiB))
    sh("sync", "-f", str(ext4 / "f0"))
    full = allocated(pool_path, "vol")
    for i in range(20):
        (ext4 / f"f{i}").unlink()
    sh("sync", "-f", str(ext4))
    sh("fstrim", str(ext4))
    trimmed = allocated(pool_path, "vol")
    assert full - trimmed >= 0.9 * 200 * MiB, (full, trimmed)
    sh("umount", str(ext4))
    sh("e2fsck", "-fn", loop)


def test_blkdiscard_and_punching_holes_in_the_file(mnt, pool_path, loop):
    with open(f"{mnt}/vol", "r+b") as f:
        f.write(os.urandom(64 * MiB))
        f.flush()
        os.fsync(f.fileno())
    assert allocated(pool_path, "vol") == 64 * MiB
    sh("blkdiscard", "-o", str(16 * MiB), "-l", str(32 * MiB), loop)
    assert allocated(pool_path, "vol") == 32 * MiB
    sh("fallocate", "-p", "-o", str(1 * MiB + 512), "-l", str(2 * MiB), f"{mnt}/vol")  # partial extents zeroed
    assert allocated(pool_path, "vol") == 31 * MiB
    with open(f"{mnt}/vol", "rb") as f:
        f.seek(MiB + 512)
        assert f.read(2 * MiB) == bytes(2 * MiB)
        assert os.lseek(f.fileno(), 16 * MiB, os.SEEK_DATA) == 48 * MiB  # the hole shows at once
    assert os.stat(f"{mnt}/vol").st_blocks * 512 == 31 * MiB  # and so does du
    r = subprocess.run(["fallocate", "-o", "0", "-l", str(1 << 40), f"{mnt}/vol"], capture_output=True)
    assert r.returncode != 0  # an LU does not grow by fallocate


def test_discard_on_a_mirrored_lu_frees_both_copies(mnt, pool_path):
    run_cli("lu", "create", "m", "--size", "64M", "--mirrored", pool=pool_path)
    with open(f"{mnt}/m", "r+b") as f:
        f.write(os.urandom(32 * MiB))
        f.flush()
        os.fsync(f.fileno())
        sh("fallocate", "-p", "-o", "0", "-l", str(32 * MiB), f"{mnt}/m")
        os.fsync(f.fileno())
        assert allocated(pool_path, "m") == 0
        f.seek(0)
        assert f.read(MiB) == bytes(MiB)
    run_cli("umount", mnt)
    assert cli_json("pool", "scrub", pool=pool_path)["clean"]
    assert cli_json("pool", "check", pool=pool_path)["clean"]


def test_lu_discard_on_the_command_line(pool_path):
    run_cli("lu", "write", "vol", pool=pool_path, stdin=os.urandom(8 * MiB))
    out = cli_json("lu", "discard", "vol", "--offset", "1M", "--length", "4M", pool=pool_path)
    assert out["allocated_before"] == 8 * MiB and out["allocated"] == 4 * MiB
    r = run_cli("lu", "discard", "vol", "--offset", "511M", "--length", "2M", pool=pool_path, check_rc=None)
    assert r.returncode != 0 and "--length" in r.stderr.decode() and len(r.stderr.decode().strip().splitlines()) == 1


# -- unmount and failed creates -------------------------------------------------------------------

def test_a_busy_mount_is_refused_at_once_naming_who_holds_it(mnt):
    with open(f"{mnt}/vol", "rb"):
        t = time.monotonic()
        r = run_cli("umount", mnt, check_rc=None)
        took = time.monotonic() - t
        assert r.returncode != 0 and took < 1.0, (r, took)
        assert "busy" in r.stderr.decode() and "vol" in r.stderr.decode() and f"pid {os.getpid()}" in r.stderr.decode()
        assert os.path.ismount(mnt)
    assert b"unmounted" in run_cli("umount", mnt).stdout


def test_lazy_unmount_detaches_and_the_daemon_finishes_later(mnt, pool_path):
    f = open(f"{mnt}/vol", "r+b")
    f.write(b"lazy")
    out = run_cli("umount", "--lazy", mnt).stdout.decode()
    assert "detached" in out and not os.path.ismount(mnt)
    f.write(b" still writable")
    f.close()
    deadline = time.monotonic() + 30
    while os.listdir(os.path.join(pool_path, "control")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert run_cli("lu", "read", "vol", "--length", "19", pool=pool_path).stdout == b"lazy still writable"


def test_a_failed_create_leaves_no_lu(mnt, pool_path):
    r = subprocess.run(["truncate", "-s", "1001", f"{mnt}/new2"], capture_output=True)
    assert r.returncode != 0
    src = f"{os.path.dirname(mnt)}/f"
    with open(src, "wb") as f:
        f.write(os.urandom(MiB))
    r = subprocess.run(["cp", src, f"{mnt}/copied"], capture_output=True)
    assert r.returncode != 0
    names = {row["name"] for row in cli_json("lu", "list", pool=pool_path)}
    assert "new2" not in names and "copied" not in names
    assert sorted(os.listdir(mnt)) == [".snapshots", "vol"]
    sh("touch", f"{mnt}/empty")  # an empty LU made on purpose stays
    assert "empty" in os.listdir(mnt)
