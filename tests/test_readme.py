"""The README as a user reads it: the two make commands at the top, the quick start run line by
line exactly as written, and no link to a file that is not in the repository."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def _blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, re.S)


def test_readme_starts_with_the_two_make_commands():
    first = _blocks(_readme())[0]
    assert [line.split()[:2] for line in first.strip().splitlines()] == [["make", "demo"], ["make", "test"]]


NOBODY = 65534


def _as_user(home: str, script: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``script`` in bash as an ordinary user (nobody) with a fresh PATH, as a new user's login
    shell has it on Debian (no /usr/sbin); pip's configuration of this machine passes through."""
    env = {"HOME": home, "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    env.update({k: v for k, v in os.environ.items() if k.startswith("PIP_")})
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                           "bash", "-euo", "pipefail", "-c", script], cwd=home, env=env, capture_output=True,
                          timeout=timeout)


@pytest.mark.skipif(os.geteuid() != 0, reason="becomes an ordinary user (nobody) with setpriv, which needs root")
def test_install_and_quick_start_run_as_written_by_an_ordinary_user():
    """The install block and the quick start, as an ordinary user with a fresh PATH: the install
    from a copy of this tree, then every quick-start line exactly as written."""
    text = _readme()
    install = _blocks(text[text.index("## Install"):])[0]
    quick = _blocks(text[text.index("## Quick start"):])[0]
    assert "blockstore mount" in quick and "mkfs.ext4" in quick and "lu clone" in quick
    home = tempfile.mkdtemp(prefix="bs-user-", dir="/tmp")  # pytest's own directories are root's alone
    fuse_mode = os.stat("/dev/fuse").st_mode & 0o777
    try:
        os.chmod(home, 0o755)
        files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "--null", "-T", "-", "-cf", os.path.join(home, "src.tar")], cwd=ROOT,
                       input=files, check=True)
        os.makedirs(os.path.join(home, "src"))
        subprocess.run(["tar", "-xf", os.path.join(home, "src.tar"), "-C", os.path.join(home, "src")], check=True)
        subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", home], check=True)
        # Stock Debian's /dev/fuse is 0666; a container's may be root's alone, where no user can mount.
        os.chmod("/dev/fuse", fuse_mode | 0o666)
        r = _as_user(home, f"cd src\n{install}\ncd ~\n{quick}")
        assert r.returncode == 0, (r.stdout.decode()[-3000:], r.stderr.decode()[-3000:])
        out = r.stdout.decode()
        assert "created LU disk0 of 4 GiB" in out and "cloned disk0@before as test1" in out
        assert "TOTAL" in out  # lu du
        assert not os.path.exists(os.path.join(home, "bs-pool")) and not os.path.exists(os.path.join(home, "lus"))
    finally:
        os.chmod("/dev/fuse", fuse_mode)
        mp = os.path.join(home, "lus")
        if os.path.ismount(mp):
            subprocess.run(["fusermount3", "-uz", mp])
        shutil.rmtree(home, ignore_errors=True)


def test_a_qcow2_goes_into_an_lu_through_the_mount_as_the_readme_says(tmp_path):
    """The README's qcow2 example: qemu-img writes straight into the LU's file, no raw copy."""
    from conftest import mounted, run_cli
    text = _readme()
    block = _blocks(text[text.index("qemu-img cannot write raw to a pipe"):])[0]
    pool = str(tmp_path / "pool")
    run_cli("pool", "create", "--size", "256M", pool=pool)
    with mounted(pool, str(tmp_path / "mnt")) as mp:
        _qcow2_in(tmp_path, block, pool, mp)


def _qcow2_in(tmp_path, block: str, pool: str, mp: str) -> None:
    img = tmp_path / "vm.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(img), "24M"], check=True)
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 1M 300k", "-c", "write -P 0x33 20M 4k", str(img)],
                   check=True, capture_output=True)
    env = dict(os.environ, BLOCKSTORE_POOL=pool, HOME=str(tmp_path),
               PATH=os.path.dirname(os.path.abspath(sys.executable)) + os.pathsep + os.environ.get("PATH", ""))
    os.symlink(mp, tmp_path / "lus")
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    raw = tmp_path / "vm.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(img), str(raw)], check=True)
    with open(os.path.join(mp, "vm1"), "rb") as f:
        assert f.read() == raw.read_bytes()


def test_docs_link_only_to_files_in_the_repository():
    pages = ["README.md"] + [os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs"))]
    for page in pages:
        with open(os.path.join(ROOT, page)) as f:
            text = f.read()
        for target in re.findall(r"\]\(([^)#]+)\)", text):
            if "://" in target:
                continue
            path = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), target))
            assert os.path.exists(path), f"{page} links to {target}, which is not in the repository"
        named = re.search(r"SEEDS\.md|DESIGN\.md|source documents", text)  # the project's sources, kept outside
        assert named is None, f"{page} names {named.group(0)!r}, which is not in the repository"
