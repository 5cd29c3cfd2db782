"""OS images as they are: a captured tree keeps its symbolic links (by their text, never
followed), hard links, devices, FIFOs, modes, owners and times, and a deployed partition gives
them all back (`partition export`, a tar archive), checked by `tar --compare` against the source."""
from __future__ import annotations

import os
import subprocess
import tarfile

import pytest

from conftest import run_cli

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="makes device nodes and files of other owners (root)")

T = 1_700_000_000  # whole seconds: a tar header's time


def _tree(src) -> None:
    """Every kind of entry an OS image has."""
    (src / "etc").mkdir()
    (src / "etc" / "hostname").write_bytes(b"web1\n")
    (src / "etc" / "shadow").write_bytes(b"root:*:19000::::::\n")
    os.chmod(src / "etc" / "shadow", 0o640)
    os.chown(src / "etc" / "shadow", 0, 42)
    (src / "usr" / "bin").mkdir(parents=True)
    big = os.urandom(3 << 20)  # an LU of its own, not packed
    (src / "usr" / "bin" / "tool").write_bytes(big)
    os.chmod(src / "usr" / "bin" / "tool", 0o4755)  # setuid
    os.link(src / "usr" / "bin" / "tool", src / "usr" / "bin" / "tool2")  # one copy, two names
    (src / "usr" / "bin" / "rel").symlink_to("tool")
    (src / "usr" / "bin" / "abs").symlink_to("/usr/bin/tool")  # absolute: a link's text, as in any root fs
    (src / "usr" / "bin" / "dangling").symlink_to("../nowhere")
    (src / "home" / "u").mkdir(parents=True)
    os.chown(src / "home" / "u", 1000, 1000)
    os.chmod(src / "home" / "u", 0o750)
    (src / "home" / "u" / "notes").write_bytes(b"")
    os.chown(src / "home" / "u" / "notes", 1000, 1000)
    (src / "tmp").mkdir()
    os.chmod(src / "tmp", 0o1777)
    (src / "dev").mkdir()
    os.mknod(src / "dev" / "null", 0o666 | 0o020000, os.makedev(1, 3))   # char
    os.mknod(src / "dev" / "loop9", 0o660 | 0o060000, os.makedev(7, 9))  # block
    os.mkfifo(src / "dev" / "initctl", 0o600)
    for d, dirs, files in os.walk(src, topdown=False):
        for n in dirs + files:
            os.utime(os.path.join(d, n), (T, T), follow_symlinks=False)


def _compare(tar: str, src) -> None:
    r = subprocess.run(["tar", "--compare", "--numeric-owner", "-f", tar, "-C", str(src)], capture_output=True)
    assert r.returncode == 0, (r.stdout.decode()[-3000:], r.stderr.decode()[-3000:])


@pytest.mark.parametrize("source", ["directory", "tar"])
def test_a_tree_of_every_kind_comes_back_from_a_deployed_partition(tmp_path, source):
    src = tmp_path / "src"
    src.mkdir()
    _tree(src)
    pool = str(tmp_path / "pool")
    run_cli("pool", "create", "--size", "256M", pool=pool)
    what = str(src)
    if source == "tar":
        what = str(tmp_path / "src.tar")
        subprocess.run(["tar", "-cf", what, "--numeric-owner", "-C", str(src), "."], check=True)
    out = run_cli("image", "import", what, "--name", "base", pool=pool).stdout.decode()
    assert "4 link(s)" in out and "3 device(s) and FIFO(s)" in out, out  # rel, abs, dangling, tool2
    run_cli("partition", "create", "web1", "--image", "base", pool=pool)
    exported = str(tmp_path / "web1.tar")
    run_cli("partition", "export", "web1", exported, pool=pool)
    with tarfile.open(exported) as tar:
        kinds = {m.name: m for m in tar.getmembers()}
    assert kinds["usr/bin/abs"].issym() and kinds["usr/bin/abs"].linkname == "/usr/bin/tool"
    one, other = kinds["usr/bin/tool"], kinds["usr/bin/tool2"]  # which name is first is the walk's order
    assert (other.islnk() and other.linkname == one.name) or (one.islnk() and one.linkname == other.name)
    assert kinds["dev/null"].ischr() and (kinds["dev/null"].devmajor, kinds["dev/null"].devminor) == (1, 3)
    _compare(exported, src)  # type, mode, owner, time, size, bytes, link targets, device numbers
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-xpf", exported, "--numeric-owner", "-C", str(out)], check=True)
    assert os.readlink(out / "usr" / "bin" / "abs") == "/usr/bin/tool"
    assert os.stat(out / "usr" / "bin" / "tool").st_ino == os.stat(out / "usr" / "bin" / "tool2").st_ino
    assert os.stat(out / "etc" / "shadow").st_gid == 42


def test_a_partition_exports_its_own_changes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "motd").write_bytes(b"hello\n")
    (src / "link").symlink_to("motd")
    pool = str(tmp_path / "pool")
    run_cli("pool", "create", "--size", "64M", pool=pool)
    run_cli("image", "import", str(src), "--name", "base", pool=pool)
    info = run_cli("--json", "partition", "create", "p", "--image", "base", pool=pool).stdout
    import json
    lu = next(x for x in json.loads(info)["lus"] if x["path"] == "motd")
    run_cli("lu", "write", lu["lu"], "--offset", str(lu["offset"]), pool=pool, stdin=b"HELLO\n")
    data = run_cli("partition", "export", "p", "-", pool=pool).stdout
    with tarfile.open(fileobj=__import__("io").BytesIO(data)) as tar:
        assert tar.extractfile("motd").read() == b"HELLO\n"
        assert tar.getmember("link").linkname == "motd"


def test_a_real_tree_with_its_links_is_captured_and_given_back(tmp_path):
    """/usr/share/doc as Debian installs it: hundreds of files, links among them (base-files/FAQ
    is one), which a capture used to refuse."""
    src = "/usr/share/doc"
    if not any(os.path.islink(os.path.join(d, n)) for d, _, fs in os.walk(src) for n in fs):
        pytest.fail(f"{src} holds no symbolic link here: pick another real tree for this test")
    pool = str(tmp_path / "pool")
    run_cli("pool", "create", "--size", "1G", pool=pool)
    run_cli("image", "import", src, "--name", "doc", pool=pool)
    run_cli("partition", "create", "d", "--image", "doc", pool=pool)
    exported = str(tmp_path / "d.tar")
    run_cli("partition", "export", "d", exported, pool=pool)
    _compare(exported, src)
