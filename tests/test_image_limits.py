"""Image import limits: directories by the thousand and nested deep, tars of many tiny files,
and a cut-short tar, each imported (or refused in one line) as a user would run it."""
from __future__ import annotations

import io
import os
import resource
import subprocess
import sys
import tarfile

import pytest

from blockstore.pool import Pool

from conftest import cli_json, run_cli


@pytest.fixture
def ipool(tmp_path):
    pool = str(tmp_path / "pool")
    Pool.create(pool, "64M").close()
    return pool


def _limited_import(pool: str, src: str, name: str, nofile: int) -> subprocess.CompletedProcess:
    """The CLI's import with at most ``nofile`` open descriptors."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    return subprocess.run([sys.executable, "-m", "blockstore", "--pool", pool, "image", "import", src,
                           "--name", name], capture_output=True, timeout=300, preexec_fn=limit)


def test_a_thousand_directories_need_no_descriptor_each(ipool, tmp_path):
    src = tmp_path / "wide"
    for i in range(1200):
        d = src / f"d{i:04d}"
        d.mkdir(parents=True)
        (d / "f").write_bytes(b"%d" % i)
    r = _limited_import(ipool, str(src), "wide", 256)  # was: Too many open files
    assert r.returncode == 0, r.stderr.decode()[-500:]
    files = {f["path"]: f for f in cli_json("image", "show", "wide", pool=ipool)["file_list"]}
    assert len(files) == 1200 and "d0007/f" in files


def test_a_tree_nested_1500_deep_imports_without_recursion(ipool, tmp_path):
    src = tmp_path / "deep"
    src.mkdir()
    fd = os.open(src, os.O_RDONLY)
    for _ in range(1500):  # one level at a time (os.makedirs recurses too)
        os.mkdir("d", dir_fd=fd)
        nxt = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nxt
    leaf = os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
    os.write(leaf, b"bottom")
    os.close(leaf)
    os.close(fd)
    (src / "top").write_bytes(b"top")
    try:
        r = _limited_import(ipool, str(src), "deep", 64)  # was: internal error: RecursionError
        assert r.returncode == 0, r.stderr.decode()[-500:]
        paths = {f["path"] for f in cli_json("image", "show", "deep", pool=ipool)["file_list"]}
        assert paths == {"top", "d/" * 1500 + "leaf"}
    finally:
        _remove_deep(str(src))


def _remove_deep(top: str) -> None:
    """Remove a tree nested deeper than shutil.rmtree (or pytest's clean-up of old temporary
    directories) can recurse: the deepest directory first."""
    subprocess.run(["rm", "-rf", top], check=True)


def test_the_room_check_counts_small_files_as_packed(ipool, tmp_path):
    tar_path = str(tmp_path / "tiny.tar")
    with tarfile.open(tar_path, "w") as tar:
        for i in range(3000):
            data = b"file %d\n" % i
            info = tarfile.TarInfo(f"f/{i:05d}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    # 3,000 LUs of one extent each would be 2.9 GiB; packed they take 12 MiB of a 64 MiB pool
    info = cli_json("image", "import", tar_path, "--name", "tiny", pool=ipool)
    assert info["files"] == 3000
    run_cli("pool", "check", pool=ipool)


@pytest.mark.parametrize("cut", ["in a member's data", "in a header"])
def test_a_cut_short_tar_is_refused_in_one_line(ipool, tmp_path, cut):
    whole = io.BytesIO()
    with tarfile.open(fileobj=whole, mode="w") as tar:
        for name, size in (("a", 1000), ("big", 3 << 20), ("z", 10)):
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(os.urandom(size)))
    raw = whole.getvalue()
    # "big"'s header is at 1536 (a's header and one block of data); its data follows
    end = 1536 + 512 + (1 << 20) if cut == "in a member's data" else 1536 + 512 + (3 << 20) + 100
    path = tmp_path / "cut.tar"
    path.write_bytes(raw[:end])
    r = run_cli("image", "import", str(path), "--name", "cut", pool=ipool, check_rc=None)
    err = r.stderr.decode()
    assert r.returncode == 1 and err.count("\n") == 1 and "internal error" not in err, err
    assert "cut short" in err and ("big" in err or "'a'" in err), err
    assert cli_json("image", "list", pool=ipool) == []
    run_cli("pool", "check", pool=ipool)
