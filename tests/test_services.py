"""Paging LUs for client partitions, and captured images imported, deployed and removed."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import threading
import time

import pytest

from blockstore.pool import Pool
from blockstore.check import check
from blockstore.services import images, paging
from conftest import cli_json, fingerprint, run_cli

MiB = 1 << 20


@pytest.fixture
def spool(tmp_path):
    d = str(tmp_path / "pool")
    run_cli("pool", "create", "--size", "512M", "--extent-size", "64K", "--mirror-dir", str(tmp_path / "fg1"), pool=d)
    return d


# -- paging -------------------------------------------------------------------------------------

def test_paging_request_is_exact_idempotent_and_mirrored(spool):
    r = cli_json("paging", "request", "--lpar", "lpar1", "--min-size", "1000001", pool=spool)
    assert r["size"] == 1000448 and r["mirror"] == "in-sync" and r["lu"] == "paging.lpar1"
    assert cli_json("paging", "request", "--lpar", "lpar1", "--min-size", "4K", pool=spool)["size"] == 1000448
    assert cli_json("paging", "request", "--lpar", "lpar1", "--min-size", "2M", pool=spool)["size"] == 2 * MiB
    rows = cli_json("paging", "list", pool=spool)
    assert [(r["lpar"], r["cec"], r["node"]) for r in rows] == [("lpar1", "local", "local")]
    run_cli("lu", "write", "paging.lpar1", pool=spool, stdin=os.urandom(MiB))
    assert cli_json("pool", "status", pool=spool)["allocated"] == MiB
    run_cli("paging", "release", "--lpar", "lpar1", pool=spool)
    assert cli_json("paging", "list", pool=spool) == []
    assert cli_json("pool", "status", pool=spool)["allocated"] == 0


def test_paging_bad_input(spool, tmp_path):
    before = fingerprint(spool)
    assert run_cli("paging", "request", "--lpar", "x", "--min-size", "0", pool=spool, check_rc=None).returncode == 2
    r = run_cli("paging", "request", "--lpar", "x", "--min-size", "1T", pool=spool, check_rc=1)
    assert b"larger than the pool" in r.stderr
    run_cli("paging", "request", "--lpar", "x", "--min-size", "1M", "--node", "nosuch", pool=spool, check_rc=1)
    run_cli("paging", "request", "--lpar", "bad name", "--min-size", "1M", pool=spool, check_rc=1)
    run_cli("paging", "release", "--lpar", "nobody", pool=spool, check_rc=1)
    assert fingerprint(spool) == before
    run_cli("paging", "request", "--lpar", "x", "--min-size", "1M", pool=spool)
    r = run_cli("paging", "migrate", "--lpar", "x", "--to-cec", "nowhere", pool=spool, check_rc=1)
    assert b"unknown CEC" in r.stderr
    plain = str(tmp_path / "plain")
    run_cli("pool", "create", "--size", "64M", pool=plain)
    r = run_cli("paging", "request", "--lpar", "x", "--min-size", "1M", pool=plain, check_rc=1)
    assert b"second failure group" in r.stderr


def test_migration_reads_the_redundant_copy_then_hands_over(spool):
    run_cli("cec", "add", "cecA", "--node", "vios1", pool=spool)
    run_cli("cec", "add", "cecB", "--node", "vios2", pool=spool)
    run_cli("paging", "request", "--lpar", "lp", "--min-size", "4M", "--node", "vios1", pool=spool)
    import random
    first, second = random.Random(1).randbytes(MiB), random.Random(2).randbytes(MiB)
    source = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import random, sys
        from blockstore.pool import Pool
        with Pool.open({spool!r}) as p:
            lu = p.open_lu("paging.lp")
            lu.write(0, random.Random(1).randbytes(1 << 20)); lu.flush()
            print("wrote", flush=True); sys.stdin.readline()
            lu.write(1 << 20, random.Random(2).randbytes(1 << 20)); lu.flush()
            print("wrote", flush=True); sys.stdin.readline()
            lu.close()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert source.stdout.readline().strip() == "wrote"
        with Pool.open(spool) as p:
            with p.open_redundant("paging.lp") as target:  # the source still holds the primary
                assert target.read(0, MiB) == first
                done = {}
                t = threading.Thread(target=lambda: done.update(paging.migrate(p, "lp", "cecB", timeout=60)))
                t.start()
                time.sleep(0.3)
                assert paging.list_paging(p)[0]["state"] == "migrating"
                source.stdin.write("go\n")
                source.stdin.flush()
                assert source.stdout.readline().strip() == "wrote"
                assert target.read(MiB, MiB) == second  # still readable at the target, redirected
                source.stdin.write("go\n")
                source.stdin.flush()
                t.join(60)
            assert done["cec"] == "cecB" and done["node"] == "vios2" and done["state"] == "active"
            with p.lu("paging.lp") as lu:  # the target now owns it: nothing lost in the hand-over
                assert lu.read(0, 2 * MiB) == first + second
            assert check(p)["clean"]
    finally:
        source.communicate(timeout=30)
    assert source.returncode == 0


def test_migration_gives_up_while_the_source_holds_on(spool):
    run_cli("cec", "add", "cecB", "--node", "vios2", pool=spool)
    run_cli("paging", "request", "--lpar", "lp", "--min-size", "1M", pool=spool)
    holder = subprocess.Popen([sys.executable, "-c", f"from blockstore.pool import Pool\nimport sys\np = Pool.open({spool!r})\n"
                               "lu = p.open_lu('paging.lp')\nprint('ok', flush=True)\nsys.stdin.readline()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        r = run_cli("paging", "migrate", "--lpar", "lp", "--to-cec", "cecB", "--timeout", "0.5", pool=spool, check_rc=1)
        assert b"still holds" in r.stderr
        assert cli_json("paging", "list", pool=spool)[0]["cec"] == "local"
    finally:
        holder.communicate("\n", timeout=30)


# -- images -------------------------------------------------------------------------------------

def make_image(tmp_path, name="img", config=b"memory=4G\ncpus=2\n"):
    """A captured image: a sparse raw disk holding a real ext4 file system with files, a config
    file, a file whose name is no valid LU name, and a manifest with roles and checksums."""
    src = tmp_path / name
    src.mkdir()
    tree = tmp_path / f"{name}-tree"
    tree.mkdir()
    for i in range(12):
        (tree / f"file{i}").write_bytes(os.urandom(20000 * i + 1))
    disk = src / "disk.raw"
    subprocess.run(["truncate", "-s", "64M", str(disk)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", "-U", "0f0f0f0f-0f0f-0f0f-0f0f-0f0f0f0f0f0f",
                    "-d", str(tree), str(disk)], check=True, env=dict(os.environ, E2FSPROGS_FAKE_TIME="1700000000"))
    (src / "vm.conf").write_bytes(config)
    (src / "odd name #1.bin").write_bytes(b"\x01" * 70000)
    manifest = {"name": name, "files": {
        "disk.raw": {"role": "boot", "sha256": hashlib.sha256(disk.read_bytes()).hexdigest()},
        "vm.conf": {"role": "config", "sha256": hashlib.sha256(config).hexdigest()}}}
    (src / "manifest.json").write_text(json.dumps(manifest))
    return src


def lu_bytes(pool_dir: str, lu: str) -> bytes:
    with Pool.open(pool_dir) as p, p.lu(lu, writable=False) as h:
        return h.read(0, h.size)


def test_import_deploy_two_partitions_and_e2fsck(spool, tmp_path):
    src = make_image(tmp_path)
    info = cli_json("image", "import", str(src), "--name", "base", pool=spool)
    assert info["files"] == 3 and info["logical"] == 64 * MiB + len(b"memory=4G\ncpus=2\n") + 70000
    assert info["allocated"] < 16 * MiB  # holes and zero runs stay unallocated
    show = cli_json("image", "show", "base", pool=spool)
    by_path = {f["path"]: f for f in show["file_list"]}
    assert by_path["disk.raw"]["role"] == "boot" and by_path["odd name #1.bin"]["handle"].startswith("h")
    assert by_path["disk.raw"]["handle"] == images.handle_of("base", "disk.raw")  # stable
    image_disk = lu_bytes(spool, by_path["disk.raw"]["lu"])
    assert image_disk[: 64 * MiB] == (src / "disk.raw").read_bytes()
    p1 = cli_json("partition", "create", "p1", "--image", "base", pool=spool)
    p2 = cli_json("partition", "create", "p2", "--image", "base", pool=spool)
    assert p1["state"] == p2["state"] == "ready"
    disk1 = next(x["lu"] for x in p1["lus"] if x["path"] == "disk.raw")
    disk2 = next(x["lu"] for x in p2["lus"] if x["path"] == "disk.raw")
    run_cli("lu", "write", disk1, "--offset", "8M", pool=spool, stdin=os.urandom(MiB))  # scribble on p1
    assert lu_bytes(spool, disk2) == image_disk
    assert lu_bytes(spool, by_path["disk.raw"]["lu"]) == image_disk
    out = tmp_path / "check.raw"
    run_cli("lu", "export", disk2, str(out), pool=spool)
    subprocess.run(["e2fsck", "-fn", str(out)], check=True, capture_output=True)
    run_cli("lu", "write", disk1, "--offset", "8M", pool=spool, stdin=image_disk[8 * MiB: 9 * MiB])
    run_cli("lu", "export", disk1, str(out), "--force", pool=spool)  # over the first
    subprocess.run(["e2fsck", "-fn", str(out)], check=True, capture_output=True)
    # the image's LUs are sealed
    run_cli("lu", "write", by_path["disk.raw"]["lu"], pool=spool, stdin=b"x", check_rc=1)
    # the partition state machine
    run_cli("partition", "activate", "p1", pool=spool)
    assert cli_json("partition", "show", "p1", pool=spool)["state"] == "active"
    assert b"active" in run_cli("partition", "rm", "p1", pool=spool, check_rc=1).stderr
    assert b"deployed partitions" in run_cli("image", "rm", "base", pool=spool, check_rc=1).stderr
    run_cli("partition", "deactivate", "p1", pool=spool)
    run_cli("partition", "rm", "p1", pool=spool)
    run_cli("partition", "rm", "p2", pool=spool)
    run_cli("image", "rm", "base", pool=spool)
    assert cli_json("pool", "status", pool=spool)["allocated"] == 0
    run_cli("pool", "check", pool=spool)


def test_second_near_identical_import_costs_little(spool, tmp_path):
    a = make_image(tmp_path, "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    (b / "vm.conf").write_bytes(b"memory=8G\ncpus=4\n")
    m = json.loads((b / "manifest.json").read_text())
    m["files"]["vm.conf"]["sha256"] = hashlib.sha256(b"memory=8G\ncpus=4\n").hexdigest()
    (b / "manifest.json").write_text(json.dumps(m))
    run_cli("image", "import", str(a), "--name", "first", pool=spool)
    used = cli_json("pool", "status", pool=spool)["allocated"]
    run_cli("image", "import", str(b), "--name", "second", pool=spool)
    extra = cli_json("pool", "status", pool=spool)["allocated"] - used
    assert extra <= 64 << 10, extra  # only the changed config file's extent
    files = {i: {f["path"]: f for f in cli_json("image", "show", i, pool=spool)["file_list"]} for i in ("first", "second")}
    shared = sum(f["shared_extents"] for f in files["second"].values())
    assert shared * (64 << 10) >= used - (64 << 10)
    assert files["first"]["disk.raw"]["xxh128"] == files["second"]["disk.raw"]["xxh128"]
    assert files["first"]["vm.conf"]["xxh128"] != files["second"]["vm.conf"]["xxh128"]
    run_cli("pool", "check", pool=spool)


def test_interrupted_import_leaves_nothing_visible(spool, tmp_path):
    src = tmp_path / "big"
    src.mkdir()
    with open(src / "big.raw", "wb") as f:
        for _ in range(192):
            f.write(os.urandom(MiB))
    child = subprocess.Popen([sys.executable, "-m", "blockstore", "--pool", spool, "image", "import", str(src),
                              "--name", "big"], stderr=subprocess.PIPE)
    for _ in range(400):
        time.sleep(0.02)
        with Pool.open(spool) as p:
            if any(r["name"].startswith("img.big.") and r["allocated"] > 0 for r in p.list_lus()) or \
               p.status()["reserved"] > 0:
                break
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert cli_json("image", "list", pool=spool) == []
    run_cli("image", "show", "big", pool=spool, check_rc=1)
    run_cli("pool", "check", pool=spool)
    run_cli("image", "import", str(src), "--name", "big", pool=spool)  # the next import cleans up and succeeds
    assert [i["name"] for i in cli_json("image", "list", pool=spool)] == ["big"]
    run_cli("pool", "check", pool=spool)


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data, kind in members:
            ti = tarfile.TarInfo(name)
            if kind in ("sym", "hard"):
                ti.type, ti.linkname = tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE, data
                tar.addfile(ti)
            else:
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))


def test_image_bad_input(spool, tmp_path):
    before = fingerprint(spool)
    ok = tmp_path / "ok"
    ok.mkdir()
    (ok / "a.raw").write_bytes(b"a" * 1000)

    def refused(src, name="x", why=b""):
        r = run_cli("image", "import", str(src), "--name", name, pool=spool, check_rc=1)
        assert why in r.stderr and b"Traceback" not in r.stderr, r.stderr
    refused(tmp_path / "missing", why=b"does not exist")
    # links, FIFOs and devices are recorded, never followed or read (test_image_tree.py)
    t = tmp_path / "abs.tar"
    _tar(t, [("/etc/passwd", b"x", "file")])
    refused(t, why=b"absolute or escaping")
    t = tmp_path / "dots.tar"
    _tar(t, [("a/../../b", b"x", "file")])
    refused(t, why=b"absolute or escaping")
    t = tmp_path / "link.tar"
    _tar(t, [("l", "nosuch", "hard")])
    refused(t, why=b"no file before it in the image")
    d = tmp_path / "badsum"
    shutil.copytree(ok, d)
    (d / "manifest.json").write_text(json.dumps({"files": {"a.raw": {"sha256": "00" * 32}}}))
    refused(d, why=b"checksum does not match")
    d = tmp_path / "badjson"
    shutil.copytree(ok, d)
    (d / "manifest.json").write_text("{not json")
    refused(d, why=b"not valid JSON")
    d = tmp_path / "huge"
    d.mkdir()
    with open(d / "huge.raw", "wb") as f:
        for i in range(9):
            f.seek(i * 64 * MiB)
            f.write(os.urandom(MiB))  # sparse, but 9 data regions of a MiB in a 512 MiB pool: fits
        f.seek(600 * MiB)
        f.truncate()
    with open(d / "dense.raw", "wb") as f:
        f.write(os.urandom(600 * MiB // 16) * 16)  # 600 MiB of data: more than the pool
    refused(d, why=b"pool has")
    refused(ok, name="bad name")
    assert fingerprint(spool) == before
    run_cli("image", "import", str(ok), "--name", "x", pool=spool)
    refused(ok, why=b"already exists")
    run_cli("partition", "create", "p", "--image", "x", pool=spool)
    assert b"already exists" in run_cli("partition", "create", "p", "--image", "x", pool=spool, check_rc=1).stderr
    run_cli("partition", "create", "q", "--image", "nosuch", pool=spool, check_rc=1)
    run_cli("partition", "create", "q", "--image", "x", "--cec", "nosuch", pool=spool, check_rc=1)
    run_cli("pool", "check", pool=spool)


@pytest.mark.parametrize("attack", ["swap a directory for a link", "rewrite a file in place"])
def test_an_image_changed_during_its_import_never_imports_other_bytes(spool, tmp_path, attack):
    """The owner of the source changes it between discovery and copy (at the first progress
    report of an earlier, bigger file: a real rename, symlink or write on the file system, at the
    worst moment). Nothing outside the image may be imported, nor bytes the manifest's sha256
    does not vouch for."""
    src, outside = tmp_path / "R", tmp_path / "outside"
    (src / "z").mkdir(parents=True)
    outside.mkdir()
    (src / "a_big").write_bytes(os.urandom(4 * MiB))
    (src / "z" / "f").write_bytes(b"harmless")
    (outside / "f").write_bytes(b"SECRET!!")
    os.chmod(outside / "f", 0o600)
    sums = {"z/f": {"sha256": hashlib.sha256(b"harmless").hexdigest()}}
    (src / "manifest.json").write_text(json.dumps({"files": sums}))
    done = []

    def progress(path, *_):
        if path == "a_big" and not done:
            done.append(1)
            if attack == "swap a directory for a link":
                os.rename(src / "z", src / "z_old")
                os.symlink(outside, src / "z")
            else:
                with open(src / "z" / "f", "r+b") as f:
                    f.write(b"SECRET!!")
    with Pool.open(spool) as p:
        try:
            images.import_image(p, str(src), "race", progress=progress)
        except Exception as e:  # refusing is allowed; importing the secret is not
            assert "checksum does not match" in str(e) or "replaced" in str(e), e
            assert p.svc_get("image", "race") is None and not [r for r in p.list_lus() if "race" in r["name"]]
        else:
            assert attack == "swap a directory for a link"  # the held directory still had the file
            (entry,) = [f for f in images.show(p, "race")["file_list"] if f["path"] == "z/f"]
            with p.lu(entry["lu"], writable=False) as lu:
                assert lu.read(entry["offset"], 8) == b"harmless"
        assert done


def _pax_sparse_tar(path, realsize: int, data: bytes) -> None:
    """A tar whose one member is a PAX (GNU 1.0) sparse file of ``realsize`` bytes holding
    ``data`` at offset 0: ten kilobytes that claim a petabyte."""
    sparse_map = f"1\n0\n{len(data)}\n".encode().ljust(512, b"\0")
    ti = tarfile.TarInfo("GNUSparseFile.0/big")
    ti.size = len(sparse_map) + len(data)
    ti.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "big",
                      "GNU.sparse.realsize": str(realsize)}
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(ti, io.BytesIO(sparse_map + data))


def test_a_tar_bomb_and_a_petabyte_lu_are_refused_quickly_and_change_nothing(spool, tmp_path):
    before = fingerprint(spool)
    bomb = tmp_path / "bomb.tar"
    _pax_sparse_tar(bomb, 1 << 50, os.urandom(4096))
    assert os.path.getsize(bomb) < 16 << 10
    with tarfile.open(bomb) as t:  # what the import reads: a 2^50-byte member of 4 KiB of data
        (m,) = t.getmembers()
        assert m.size == 1 << 50 and m.sparse == [(0, 4096)]
    limit = "ulimit -d 1500000; "  # 1.5 GB of heap: the old room check needed more
    for args in (["image", "import", str(bomb), "--name", "bomb"], ["lu", "create", "sz", "--size", "64P"],
                 ["lu", "create", "sz", "--size", "1P"]):  # 2^34 of its 64 KiB extents
        t = time.monotonic()
        cmd = " ".join([sys.executable, "-m", "blockstore", "--pool", spool] + args)
        r = subprocess.run(["bash", "-c", limit + cmd], capture_output=True, timeout=60)
        assert r.returncode == 1 and b"Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.splitlines()) == 1 and b"larger than this pool serves" in r.stderr, r.stderr
        assert time.monotonic() - t < 20
    run_cli("lu", "create", "ok", "--size", "1M", pool=spool)
    r = run_cli("lu", "resize", "ok", "--size", "64P", pool=spool, check_rc=1)
    assert b"larger than this pool serves" in r.stderr
    run_cli("lu", "rm", "ok", pool=spool)
    assert fingerprint(spool) == before


def test_a_petabyte_thin_lu_costs_what_its_data_costs(tmp_path):
    """Issue 14, item 3: a 1 PiB LU took 6.3 GB and 17 s for every command (a flat map of 2^30
    entries). Its map is now made of the chunks that hold something: every command on it runs in
    a 300 MB heap, in seconds."""
    pool = str(tmp_path / "pool")
    run_cli("pool", "create", "--size", "256M", pool=pool)  # 1 MiB extents: 1 PiB is 2^30 of them
    far = 1 << 49  # 512 TiB in
    steps = [(["lu", "create", "big", "--size", "1P"], None), (["lu", "write", "big", "--offset", str(far)], b"hello"),
             (["lu", "snapshot", "big", "s1"], None), (["lu", "write", "big", "--offset", str(far)], b"HELLO"),
             (["lu", "read", "big@s1", "--offset", str(far), "--length", "5"], None),
             (["lu", "read", "big", "--offset", str(far), "--length", "5"], None),
             (["lu", "resize", "big", "--size", "1023T", "--force"], None), (["pool", "check"], None),
             (["lu", "rm", "big", "--recursive"], None)]
    out = []
    for args, stdin in steps:
        t = time.monotonic()
        cmd = " ".join([sys.executable, "-m", "blockstore", "--pool", pool] + args)
        r = subprocess.run(["bash", "-c", "ulimit -d 300000; " + cmd], input=stdin, capture_output=True, timeout=60)
        assert r.returncode == 0 and time.monotonic() - t < 10, (args, r.stderr, time.monotonic() - t)
        out.append(r.stdout)
    assert out[4] == b"hello" and out[5] == b"HELLO"
    assert run_cli("lu", "list", "--json", pool=pool).stdout.strip() == b"[]"


def test_small_files_are_packed_and_deploy_byte_exact(spool, tmp_path):
    """300 files of 1 byte to 30 KiB share a pack LU at 4 KiB-aligned offsets (they took an
    extent each before: 300 x 64 KiB); a partition clones the pack once and reads every file at
    its offset; writing the partition's copy changes nothing of the image's."""
    import random
    rng = random.Random(7)
    src = tmp_path / "many"
    (src / "etc").mkdir(parents=True)
    want = {}
    for i in range(300):
        data = os.urandom(rng.choice([1, 6, 100, 4095, 4097, 20000, 30000]))
        want[f"etc/f{i:03d}"] = data
        (src / "etc" / f"f{i:03d}").write_bytes(data)
    big = os.urandom(200_000)  # over half an extent: an LU of its own
    want["big.bin"] = big
    (src / "big.bin").write_bytes(big)
    info = cli_json("image", "import", str(src), "--name", "many", pool=spool)
    blocks = sum(-(-len(d) // 4096) for p, d in want.items() if p != "big.bin")
    assert info["allocated"] <= (-(-blocks * 4096 // (64 << 10)) + 4) * (64 << 10), info  # pack + big file
    assert info["allocated"] < 300 * (64 << 10) // 5  # an extent per file: 19 MiB
    files = {f["path"]: f for f in cli_json("image", "show", "many", pool=spool)["file_list"]}
    assert not files["big.bin"]["packed"] and files["big.bin"]["offset"] == 0
    packs = {f["lu"] for p, f in files.items() if p != "big.bin"}
    assert packs == {"img.many.pack"} and all(files[p]["packed"] for p in files if p != "big.bin")
    assert all(f["offset"] % 4096 == 0 for f in files.values())
    part = cli_json("partition", "create", "web", "--image", "many", pool=spool)
    where = {x["path"]: x for x in part["lus"]}
    assert len({x["lu"] for x in part["lus"]}) == 2  # the pack's clone, the big file's clone
    with Pool.open(spool) as p:
        for path, data in want.items():
            x = where[path]
            assert x["length"] == len(data)
            with p.lu(x["lu"], writable=False) as lu:
                assert lu.read(x["offset"], len(data)) == data, path
        first = where["etc/f000"]
        with p.lu(first["lu"]) as lu:
            lu.write(first["offset"], b"changed")
            lu.flush()
        with p.lu(files["etc/f000"]["lu"], writable=False) as lu:
            assert lu.read(files["etc/f000"]["offset"], len(want["etc/f000"])) == want["etc/f000"]
    run_cli("partition", "rm", "web", pool=spool)
    run_cli("image", "rm", "many", pool=spool)
    assert cli_json("pool", "status", pool=spool)["allocated"] == 0
    run_cli("pool", "check", pool=spool)
