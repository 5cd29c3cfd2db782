"""The FUSE mount with real clients: dd, fio with verify, mkfs.ext4 on a loop device, e2fsck,
qemu-img; and the mount's own life: daemon, SIGTERM, SIGKILL and a stale mount."""
from __future__ import annotations

import errno
import filecmp
import mmap
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from blockstore.pool import Pool
from blockstore.check import check
from blockstore_fuse.mount import BACKGROUND
from conftest import cli_json, daemon_pid, direct_counts, mount_log, run_cli, sh

MiB = 1 << 20


@pytest.fixture
def pool_path(tmp_path):
    p = str(tmp_path / "pool")
    run_cli("pool", "create", "--size", "2G", pool=p)
    run_cli("lu", "create", "disk", "--size", "256M", pool=p)
    return p


def test_dd_roundtrip_and_export_agree(mnt, pool_path, tmp_path):
    src = tmp_path / "src"
    src.write_bytes(os.urandom(40 * MiB + 4096))
    sh("dd", f"if={src}", f"of={mnt}/disk", "bs=1M", "seek=3", "conv=notrunc,fsync", "status=none")
    out = tmp_path / "out"
    sh("dd", f"if={mnt}/disk", f"of={out}", "bs=1M", "skip=3", "count=41", "status=none")
    assert out.read_bytes()[: len(src.read_bytes())] == src.read_bytes()
    assert os.stat(f"{mnt}/disk").st_size == 256 * MiB
    assert os.stat(f"{mnt}/disk").st_blocks * 512 == 41 * MiB  # du: what is allocated
    run_cli("umount", mnt)
    run_cli("lu", "export", "disk", str(tmp_path / "exp"), pool=pool_path)
    run_cli("mount", mnt, pool=pool_path)
    sh("cmp", f"{mnt}/disk", str(tmp_path / "exp"))


def test_holes_are_visible(mnt):
    with open(f"{mnt}/disk", "r+b") as f:
        f.seek(5 * MiB)
        f.write(b"x" * 100)
        f.flush()
        os.fsync(f.fileno())
        fd = f.fileno()
        assert os.lseek(fd, 0, os.SEEK_DATA) == 5 * MiB
        assert os.lseek(fd, 5 * MiB, os.SEEK_HOLE) == 6 * MiB
        with pytest.raises(OSError) as e:
            os.lseek(fd, 7 * MiB, os.SEEK_DATA)
        assert e.value.errno == errno.ENXIO


@pytest.mark.parametrize("rw,bs", [("write", "1M"), ("randwrite", "4k")])
def test_fio_verify(mnt, rw, bs):
    r = sh("fio", "--name=v", f"--filename={mnt}/disk", f"--rw={rw}", f"--bs={bs}", "--direct=1",
           "--ioengine=libaio", "--iodepth=16", "--numjobs=2", "--size=64M", "--offset_increment=96M",
           "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0",
           "--group_reporting", "--output-format=json")
    import json
    job = json.loads(r.stdout[r.stdout.index(b"{"):])["jobs"][0]
    assert job["error"] == 0
    assert job["write"]["io_bytes"] >= 2 * 64 * MiB and job["read"]["io_bytes"] >= 2 * 64 * MiB


def test_fio_verify_all_in_python(pool_path, tmp_path):
    """The same verify on a mount that serves every request in Python on one thread."""
    mp = str(tmp_path / "py")
    os.mkdir(mp)
    run_cli("mount", mp, "--threads", "0", "--no-direct", pool=pool_path)
    try:
        test_fio_verify(mp, "randwrite", "4k")
    finally:
        run_cli("umount", mp)
    assert "requests:" not in mount_log(pool_path)  # no direct path was installed to count them


def fuse_connection(mp: str) -> str:
    """The kernel's control folder of the FUSE connection behind ``mp`` (fusectl, mounted here
    if the machine has not)."""
    ctl = "/sys/fs/fuse/connections"
    if not os.listdir(ctl):
        sh("mount", "-t", "fusectl", "none", ctl)
    return os.path.join(ctl, str(os.minor(os.stat(mp).st_dev)))


def test_kernel_got_the_request_settings(mnt):
    """What init asked for is what the kernel uses: queued requests past its default of 12."""
    conn = fuse_connection(mnt)
    with open(os.path.join(conn, "max_background")) as f:
        assert int(f.read()) == BACKGROUND > 12
    with open(os.path.join(conn, "congestion_threshold")) as f:
        assert 12 < int(f.read()) < BACKGROUND


def test_direct_path_serves_in_place_writes(mnt, pool_path, tmp_path):
    """First writes fill holes in Python; rewrites and reads are served in C; a whole extent of
    zeros still goes to the engine, which unmaps it."""
    data = os.urandom(8 * MiB)
    for _ in range(2):
        with open(f"{mnt}/disk", "r+b", buffering=0) as f:
            f.write(data)
            os.fsync(f.fileno())
    with open(f"{mnt}/disk", "rb", buffering=0) as f:
        assert f.read(8 * MiB) == data
    with open(f"{mnt}/disk", "r+b", buffering=0) as f:
        f.seek(2 * MiB)
        f.write(mmap.mmap(-1, MiB))  # one whole (1 MiB) extent, page-aligned so one request
        os.fsync(f.fileno())
    assert cli_json("lu", "show", "disk", pool=pool_path)["allocated"] == 7 * MiB
    assert data_file_mapped(pool_path)  # for in-place writes of whole pieces
    run_cli("umount", mnt)
    counts = direct_counts(pool_path)
    assert counts["write passed"] >= 8 and counts["write direct"] >= 8 and counts["read direct"] >= 8, counts
    out = tmp_path / "out"
    run_cli("lu", "export", "disk", str(out), pool=pool_path)
    expect = bytearray(data)
    expect[2 * MiB:3 * MiB] = bytes(MiB)
    assert out.read_bytes()[:8 * MiB] == bytes(expect)


def test_writers_of_one_file_run_at_once_and_lose_nothing(mnt, pool_path):
    """The mount answers opens allowing parallel writes (native/fastpath.h), so the kernel sends
    one file's writes at once instead of one at a time: eight writers of one LU, each its own
    region in random order (filling holes in Python and rewriting in C), then every region
    read back and checked; and the mount says it allowed them."""
    for _ in range(2):  # first into holes, then in place
        sh("fio", "--name=w", f"--filename={mnt}/disk", "--rw=randwrite", "--bs=4k", "--numjobs=8", "--size=4M",
           "--offset_increment=4M", "--direct=1", "--ioengine=psync", "--verify=crc32c", "--verify_fatal=1",
           "--do_verify=1", "--randrepeat=0", "--verify_state_save=0")
    run_cli("umount", mnt)
    log = mount_log(pool_path)
    assert "opens answered with: parallel writes, no flush on close" in log, log[-2000:]
    assert re.search(r"opens answered with the engine's flags: [1-9]", log), log[-2000:]


def test_a_close_does_not_wait_for_a_stopped_mount(mnt, pool_path):
    """Opens are answered with no flush on close (native/fastpath.h): with the mount stopped
    (SIGSTOP), a process holding one of its files forks a child, whose closes before exec would
    otherwise wait for the mount's answer to FLUSH; and the holder's own close returns too."""
    fd = os.open(f"{mnt}/disk", os.O_RDWR)
    os.pwrite(fd, b"x" * 4096, 0)
    pid = daemon_pid(pool_path)
    os.kill(pid, signal.SIGSTOP)
    try:
        os.set_inheritable(fd, True)
        subprocess.run(["true"], close_fds=False, timeout=10, check=True)  # the child closes fd at exit
        subprocess.run(["true"], timeout=10, check=True)                   # and here before exec
        os.close(fd)
    finally:
        os.kill(pid, signal.SIGCONT)
    with open(f"{mnt}/disk", "rb") as f:
        assert f.read(4096) == b"x" * 4096
    with Pool.open(pool_path) as p:
        assert check(p)["clean"]


def data_file_mapped(pool_path: str) -> bool:
    """Whether the mount daemon has the pool's data file mapped."""
    data = os.path.realpath(os.path.join(pool_path, "fg0", "data"))
    with open(f"/proc/{daemon_pid(pool_path)}/maps") as f:
        return any(line.rstrip("\n").endswith(" " + data) for line in f)


def test_writes_by_pwrite_when_asked(pool_path, tmp_path):
    """--no-write-map: in-place writes are pwritten; the data file is never mapped."""
    mp = str(tmp_path / "pw")
    os.mkdir(mp)
    run_cli("mount", mp, "--no-write-map", pool=pool_path)
    try:
        data = os.urandom(4 * MiB)
        for _ in range(2):  # the second time in place, by the direct path
            with open(f"{mp}/disk", "r+b", buffering=0) as f:
                f.write(data)
                os.fsync(f.fileno())
        assert not data_file_mapped(pool_path)
    finally:
        run_cli("umount", mp)
    with Pool.open(pool_path) as p, p.lu("disk", writable=False) as lu:
        assert lu.read(0, len(data)) == data


def test_ext4_on_a_loop_device(mnt, pool_path, tmp_path):
    img = f"{mnt}/disk"
    sh("mkfs.ext4", "-q", "-F", img)
    inner = tmp_path / "ext4"
    inner.mkdir()
    tree = tmp_path / "tree"
    for i in range(30):
        d = tree / f"d{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(os.urandom(1000 * i + 7))
    sh("mount", "-o", "loop", img, str(inner))
    try:
        shutil.copytree(tree, inner / "tree")
    finally:
        sh("umount", str(inner))
    sh("e2fsck", "-fn", img)
    run_cli("umount", mnt)
    run_cli("mount", mnt, pool=pool_path)
    sh("e2fsck", "-fn", img)
    sh("mount", "-o", "loop,ro", img, str(inner))
    try:
        cmp = filecmp.dircmp(tree, inner / "tree")
        assert not cmp.diff_files and not cmp.left_only and not cmp.right_only
        for sub in cmp.subdirs.values():
            assert not sub.diff_files and not sub.left_only and not sub.right_only
            _, mismatch, errs = filecmp.cmpfiles(sub.left, sub.right, sub.common_files, shallow=False)
            assert not mismatch and not errs
    finally:
        sh("umount", str(inner))


def test_qemu_img_reads_an_lu_file(mnt, tmp_path):
    data = tmp_path / "data.raw"
    data.write_bytes(os.urandom(256 * MiB))
    sh("dd", f"if={data}", f"of={mnt}/disk", "bs=1M", "conv=notrunc,fsync", "status=none")
    r = sh("qemu-img", "info", "--output=json", f"{mnt}/disk")
    assert b'"virtual-size": 268435456' in r.stdout
    sh("qemu-img", "compare", "-f", "raw", "-F", "raw", f"{mnt}/disk", str(data))


def test_files_make_resize_rename_and_remove_lus(mnt, pool_path):
    sh("truncate", "-s", "10G", f"{mnt}/new")
    info = cli_json("lu", "show", "new", pool=pool_path)
    assert info["size"] == 10 << 30 and info["allocated"] == 0
    sh("truncate", "-s", "20G", f"{mnt}/new")
    assert os.stat(f"{mnt}/new").st_size == 20 << 30
    os.rename(f"{mnt}/new", f"{mnt}/renamed")
    assert sorted(os.listdir(mnt)) == [".snapshots", "disk", "renamed"]
    run_cli("lu", "clone", "disk", "kid", pool=pool_path)
    with pytest.raises(OSError) as e:
        os.unlink(f"{mnt}/disk")
    assert e.value.errno == errno.EBUSY
    os.unlink(f"{mnt}/renamed")
    assert "renamed" not in os.listdir(mnt)
    st = os.statvfs(mnt)
    assert st.f_blocks * st.f_frsize == 2 << 30


def test_snapshots_are_read_only_files(mnt, pool_path):
    with open(f"{mnt}/disk", "r+b") as f:
        f.write(b"before")
    run_cli("umount", mnt)  # a snapshot needs the LU's writer: the mount holds it while open
    run_cli("lu", "snapshot", "disk", "s1", pool=pool_path)
    run_cli("mount", mnt, pool=pool_path)
    with open(f"{mnt}/disk", "r+b") as f:
        f.write(b"after!")
    assert os.listdir(f"{mnt}/.snapshots") == ["disk"]
    assert os.listdir(f"{mnt}/.snapshots/disk") == ["s1"]
    with open(f"{mnt}/.snapshots/disk/s1", "rb") as f:
        assert f.read(6) == b"before"
    with pytest.raises(OSError) as e:
        open(f"{mnt}/.snapshots/disk/s1", "r+b")
    assert e.value.errno in (errno.EROFS, errno.EACCES)


def test_bad_input(mnt, pool_path, tmp_path):
    r = run_cli("mount", str(tmp_path / "nowhere"), pool=pool_path, check_rc=1)
    assert "not an existing directory" in r.stderr.decode()
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    assert "not empty" in run_cli("mount", str(full), pool=pool_path, check_rc=1).stderr.decode()
    assert "already a mount point" in run_cli("mount", mnt, pool=pool_path, check_rc=1).stderr.decode()
    empty = tmp_path / "empty"
    empty.mkdir()
    run_cli("mount", str(empty), pool=str(tmp_path / "nopool"), check_rc=1)
    assert run_cli("umount", str(empty), check_rc=1).stderr
    with open(f"{mnt}/disk", "r+b", buffering=0) as f:
        f.seek(256 * MiB)
        with pytest.raises(OSError) as e:
            f.write(b"past the end")
        assert e.value.errno == errno.ENOSPC
        f.seek(256 * MiB - 4)
        assert f.write(b"past the end") == 4  # a write across the end is cut short
    for bad in ("a b", "x" * 65):
        with pytest.raises(OSError) as e:
            open(f"{mnt}/{bad}", "wb")
        assert e.value.errno in (errno.EINVAL, errno.ENAMETOOLONG)
    assert sorted(os.listdir(mnt)) == [".snapshots", "disk"]


def test_read_only_mount(pool_path, tmp_path):
    mp = str(tmp_path / "ro")
    os.mkdir(mp)
    run_cli("mount", mp, "--read-only", pool=pool_path)
    try:
        with pytest.raises(OSError) as e:
            open(f"{mp}/disk", "r+b")
        assert e.value.errno in (errno.EROFS, errno.EACCES)
        with open(f"{mp}/disk", "rb") as f:
            assert f.read(10) == bytes(10)
    finally:
        run_cli("umount", mp)


def test_fsync_survives_sigkill_and_stale_mount_is_cleared(mnt, pool_path):
    for _ in range(2):  # the first write fills holes (the engine), the second is in place (C)
        blob = os.urandom(3 * MiB)
        with open(f"{mnt}/disk", "r+b") as f:
            f.seek(MiB)
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
    assert data_file_mapped(pool_path)
    os.kill(daemon_pid(pool_path), signal.SIGKILL)
    time.sleep(0.5)
    with pytest.raises(OSError):
        os.listdir(mnt)  # the stale mount: transport endpoint not connected
    run_cli("umount", mnt)
    assert not os.path.ismount(mnt)
    with Pool.open(pool_path) as p:
        with p.lu("disk", writable=False) as lu:
            assert lu.read(MiB, len(blob)) == blob
        assert check(p)["clean"]
    run_cli("mount", mnt, pool=pool_path)
    with open(f"{mnt}/disk", "rb") as f:
        f.seek(MiB)
        assert f.read(len(blob)) == blob


def test_sigterm_unmounts_with_everything_flushed(mnt, pool_path):
    blob = os.urandom(2 * MiB)
    with open(f"{mnt}/disk", "r+b") as f:  # no fsync: the daemon must flush on its way out
        f.write(blob)
    pid = daemon_pid(pool_path)
    os.kill(pid, signal.SIGTERM)
    for _ in range(200):
        if not os.path.ismount(mnt) and not os.path.exists(f"/proc/{pid}"):
            break
        time.sleep(0.05)
    assert not os.path.ismount(mnt)
    with Pool.open(pool_path) as p:
        with p.lu("disk", writable=False) as lu:
            assert lu.read(0, len(blob)) == blob
        assert check(p)["clean"]


def test_removing_an_open_lu_file_is_refused_as_busy(mnt, pool_path):
    with open(f"{mnt}/disk", "rb"):
        with pytest.raises(OSError) as e:
            os.unlink(f"{mnt}/disk")
        assert e.value.errno == errno.EBUSY
    assert "disk" in os.listdir(mnt) and not [n for n in os.listdir(mnt) if n.startswith(".fuse_hidden")]
    os.unlink(f"{mnt}/disk")  # closed: removed
    assert "disk" not in os.listdir(mnt)


NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]


def test_allow_other_gives_other_users_what_uid_gid_and_mode_say(pool_path):
    """Issue 14, item 6: with --allow-other every LU was 0644 to every local user, and any of them
    holding a file open for reading kept root from writing or snapshotting the LU."""
    import tempfile
    base = tempfile.mkdtemp(prefix="bs-other-")  # under /tmp: pytest's own directory is root's alone
    os.chmod(base, 0o755)
    mp = os.path.join(base, "mnt")
    os.mkdir(mp, 0o755)
    try:
        run_cli("lu", "write", "disk", pool=pool_path, stdin=b"first!")
        run_cli("mount", mp, "--allow-other", pool=pool_path)
        assert os.stat(f"{mp}/disk").st_mode & 0o777 == 0o600 and os.stat(mp).st_mode & 0o777 == 0o700
        r = subprocess.run(NOBODY + ["cat", f"{mp}/disk"], capture_output=True)
        assert r.returncode != 0 and b"Permission denied" in r.stderr
        run_cli("umount", mp)

        run_cli("mount", mp, "--allow-other", "--mode", "0644", pool=pool_path)
        assert os.stat(f"{mp}/disk").st_mode & 0o777 == 0o644 and os.stat(mp).st_mode & 0o777 == 0o755
        reader = subprocess.Popen(NOBODY + ["/usr/bin/python3", "-c",
                                            f"f = open({mp + '/disk'!r}, 'rb', buffering=0); print(f.read(6), flush=True); "
                                            "input(); f.seek(0); print(f.read(6), flush=True)"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert reader.stdout.readline().strip() == "b'first!'"
            # the other user's open file keeps the LU from no one
            run_cli("lu", "write", "disk", pool=pool_path, stdin=b"second")
            run_cli("lu", "snapshot", "disk", "s2", pool=pool_path)
            out, _ = reader.communicate("\n", timeout=60)
            assert out.strip() == "b'second'"  # and it reads what was committed since
        finally:
            reader.kill()
        r = subprocess.run(NOBODY + ["sh", "-c", f"echo x > {mp}/disk"], capture_output=True)
        assert r.returncode != 0 and b"Permission denied" in r.stderr
        with pytest.raises(OSError) as e:
            os.chmod(f"{mp}/disk", 0o666)
        assert e.value.errno == errno.EPERM
        run_cli("umount", mp)

        run_cli("mount", mp, "--allow-other", "--uid", "65534", "--gid", "65534", pool=pool_path)
        st = os.stat(f"{mp}/disk")
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (65534, 65534, 0o600)
        subprocess.run(NOBODY + ["sh", "-c", f"printf third > {mp}/disk"], check=True)
        run_cli("umount", mp)
        assert run_cli("lu", "read", "disk", "--length", "6", pool=pool_path).stdout == b"thirdd"
        for bad, message in ((("--mode", "0999"), "octal"), (("--uid", "no-such-user-x"), "no user named")):
            r = run_cli("mount", mp, "--allow-other", *bad, pool=pool_path, check_rc=2)
            assert message in r.stderr.decode() and not os.path.ismount(mp)
    finally:
        if os.path.ismount(mp):
            run_cli("umount", mp, check_rc=None)
        shutil.rmtree(base, ignore_errors=True)


def test_o_trunc_keeps_the_size_and_shared_mappings_are_refused(mnt, pool_path):
    """Issue 14, item 12, as decided: LU files keep their size under O_TRUNC as block devices do,
    and a shared mapping is refused with ENODEV (docs/fuse.md says why)."""
    with open(f"{mnt}/disk", "r+b") as f:
        f.write(b"0123456789")
    subprocess.run(["sh", "-c", f"echo hi > {mnt}/disk"], check=True)
    assert os.path.getsize(f"{mnt}/disk") == 256 * MiB
    with open(f"{mnt}/disk", "rb") as f:
        assert f.read(10) == b"hi\n3456789"
    sh("dd", "if=/dev/zero", f"of={mnt}/disk", "bs=4096", "count=1", "status=none")  # no conv=notrunc
    assert os.path.getsize(f"{mnt}/disk") == 256 * MiB
    with open(f"{mnt}/disk", "r+b") as f:
        with pytest.raises(OSError) as e:
            mmap.mmap(f.fileno(), 4096, mmap.MAP_SHARED)
        assert e.value.errno == errno.ENODEV
        f.seek(8192)
        f.write(b"private view")
        f.flush()
        m = mmap.mmap(f.fileno(), 16384, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)
        assert m[8192:8204] == b"private view"
        m[8192:8199] = b"changed"  # a private copy: the LU keeps its bytes
        m.close()
    assert run_cli("lu", "read", "disk", "--offset", "8192", "--length", "12", pool=pool_path).stdout == b"private view"


@pytest.mark.parametrize("sig,binding", [(signal.SIGTERM, "mfusepy"), (signal.SIGINT, "mfusepy"),
                                         (signal.SIGTERM, "fusepy")])
def test_a_foreground_mount_stopped_by_a_signal_exits_0_with_every_write_kept(tmp_path, sig, binding):
    """What systemd (SIGTERM) and Ctrl-C (SIGINT) do to `mount --foreground`: an unmount, exit 0
    (with either binding: fusepy calls init, mfusepy init_with_config)."""
    import sys
    pool = str(tmp_path / "pool")
    run_cli("pool", "create", "--size", "256M", pool=pool)
    run_cli("lu", "create", "a", "--size", "8M", pool=pool)
    mp = tmp_path / "mnt"
    mp.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "blockstore", "--pool", pool, "mount", "--foreground", str(mp)],
                            stderr=subprocess.PIPE, env={**os.environ, "BLOCKSTORE_FUSE": binding})
    try:
        for _ in range(200):
            if os.path.ismount(mp):
                break
            time.sleep(0.05)
        data = os.urandom(3 << 20)
        with open(mp / "a", "r+b") as f:
            f.write(data)  # written, not flushed: the stop flushes it
        proc.send_signal(sig)
        err = proc.communicate(timeout=60)[1].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "error" not in err, err
    assert not os.path.ismount(mp)
    r = subprocess.run([sys.executable, "-m", "blockstore", "--pool", pool, "lu", "read", "a", "--length", "3M"],
                       capture_output=True, check=True)
    assert r.stdout == data
