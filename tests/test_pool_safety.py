"""Root and other users' pools: root refuses a pool another user owns unless trusted by name, and
never follows a link planted where the engine keeps a directory of its own."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from blockstore.pool import Pool

NOBODY = 65534


def _cli(pool: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blockstore", "--pool", pool, *args], capture_output=True,
                          timeout=120, env={**os.environ, **(env or {})})


pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the threat is root on another user's pool")


def test_root_refuses_another_users_pool_unless_trusted(tmp_path):
    pool = str(tmp_path / "pool")
    Pool.create(pool, "16M").close()
    for root, dirs, files in os.walk(pool):
        for n in [root] + [os.path.join(root, x) for x in dirs + files]:
            os.chown(n, NOBODY, NOBODY)
    r = _cli(pool, "lu", "list")
    err = r.stderr.decode()
    assert r.returncode != 0 and err.count("\n") == 1 and "belongs to user 65534" in err, err
    assert "BLOCKSTORE_SAFE_POOLS" in err
    r = _cli(pool, "lu", "create", "a", "--size", "1M", env={"BLOCKSTORE_SAFE_POOLS": pool})
    assert r.returncode == 0, r.stderr.decode()


@pytest.mark.parametrize("planted", ["locks", "control", "mounts", "payloads"])
def test_a_link_planted_for_a_directory_of_the_engine_is_never_followed(tmp_path, planted):
    pool, target = str(tmp_path / "pool"), tmp_path / "elsewhere"
    Pool.create(pool, "16M").close()
    target.mkdir(mode=0o755)
    path = os.path.join(pool, planted)
    if os.path.isdir(path):
        subprocess.run(["rm", "-rf", path], check=True)
    os.symlink(target, path)
    if planted == "payloads":
        from blockstore.cluster.events import EventLog
        with pytest.raises(Exception) as e:
            EventLog(pool)
        assert "not a directory (a link" in str(e.value)
    else:
        cmd = {"locks": ["lu", "create", "a", "--size", "1M"], "control": ["mount", str(tmp_path / "mnt")],
               "mounts": ["mount", str(tmp_path / "mnt")]}[planted]
        (tmp_path / "mnt").mkdir()
        r = _cli(pool, *cmd)
        err = r.stderr.decode()
        assert r.returncode != 0 and "not a directory (a link" in err, err
        subprocess.run(["fusermount3", "-uz", str(tmp_path / "mnt")], check=False, capture_output=True)
    assert os.listdir(target) == [] and target.stat().st_mode & 0o777 == 0o755  # untouched


def test_links_planted_at_the_names_of_files_are_not_followed_either(tmp_path):
    """A pid file's name (the mount writes it) and a payload file's (the notifier reads it)."""
    import hashlib

    from blockstore.cluster.events import EventLog
    pool, secret = str(tmp_path / "pool"), tmp_path / "secret"
    Pool.create(pool, "16M").close()
    secret.write_bytes(b"do not touch")
    mp = tmp_path / "mnt"
    mp.mkdir()
    os.makedirs(os.path.join(pool, "mounts"), mode=0o700)
    key = hashlib.sha1(str(mp).encode()).hexdigest()[:12]
    os.symlink(secret, os.path.join(pool, "mounts", f"{key}.pid"))
    r = _cli(pool, "mount", str(mp))
    subprocess.run(["fusermount3", "-uz", str(mp)], check=False, capture_output=True)
    assert r.returncode != 0 and secret.read_bytes() == b"do not touch", r.stderr.decode()
    log = EventLog(pool)
    log.publish("lu_created", {"name": "x"})
    os.symlink(secret, log._path(2))
    evs = log.events(0)
    assert [e["kind"] for e in evs] == ["lu_created", "damaged"]
    assert b"do not touch" not in str(evs).encode()


def _give_to_nobody(pool: str) -> None:
    for root, dirs, files in os.walk(pool):
        for n in [root] + [os.path.join(root, x) for x in dirs + files]:
            os.chown(n, NOBODY, NOBODY)


@pytest.mark.parametrize("name", ["locks/lu-1", "fg0/data", "meta/lock.mdb", "meta/data.mdb", "cluster.token"])
@pytest.mark.parametrize("whose", ["root's", "trusted"])
def test_a_link_at_a_file_the_engine_opens_by_name_is_refused(tmp_path, name, whose):
    """Every file inside the pool is opened from the pool's directory by descriptor, the file
    itself without following a link: a link there is refused in one line, its target untouched,
    in root's own pool and in another user's pool that root was trusted with."""
    pool, secret = str(tmp_path / "pool"), tmp_path / "secret"
    with Pool.create(pool, "16M") as p:
        p.create_lu("a", "1M").close()
        assert p.lu_info("a")["id"] == 1
    assert _cli(pool, "cluster", "create", "c").returncode == 0
    secret.write_bytes(b"do not touch")
    secret.chmod(0o600)
    env = {}
    if whose == "trusted":
        _give_to_nobody(pool)
        env = {"BLOCKSTORE_SAFE_POOLS": pool}
    path = os.path.join(pool, name)
    os.unlink(path)
    os.symlink(secret, path)
    cmd = ["ffdc", "capture"] if name == "cluster.token" else ["lu", "write", "a"]
    r = subprocess.run([sys.executable, "-m", "blockstore", "--pool", pool, *cmd], input=b"x" * 4096,
                       capture_output=True, timeout=120, env={**os.environ, **env})
    err = r.stderr.decode()
    assert r.returncode != 0 and err.count("\n") == 1, err
    assert "link" in err or "not a regular file" in err, err
    assert secret.read_bytes() == b"do not touch" and secret.stat().st_mode & 0o777 == 0o600


def test_root_never_opens_a_hard_link_to_its_own_file_in_a_trusted_pool(tmp_path):
    """A pool's owner can hard-link one of root's files into the pool where a lock goes; root
    opens only files the owner owns, so the file is refused, not truncated."""
    pool, secret = str(tmp_path / "pool"), tmp_path / "secret"
    with Pool.create(pool, "16M") as p:
        p.create_lu("a", "1M").close()
    _give_to_nobody(pool)
    secret.write_bytes(b"do not touch")
    os.unlink(os.path.join(pool, "locks", "lu-1"))
    os.link(secret, os.path.join(pool, "locks", "lu-1"))
    r = _cli(pool, "lu", "write", "a", env={"BLOCKSTORE_SAFE_POOLS": pool})
    err = r.stderr.decode()
    assert r.returncode != 0 and "owned by user 0, not 65534" in err, err
    assert secret.read_bytes() == b"do not touch"


def test_what_root_makes_in_a_trusted_pool_stays_its_owners(tmp_path):
    """Files and directories root makes in a pool it was trusted with belong to the pool's owner,
    so the owner goes on using the pool after root did."""
    import shutil
    import tempfile
    top = tempfile.mkdtemp(prefix="bs-safety-", dir="/tmp")  # pytest's own are 0700: nobody cannot reach them
    os.chmod(top, 0o755)
    try:
        _root_then_owner(os.path.join(top, "pool"))
    finally:
        shutil.rmtree(top)


def _root_then_owner(pool: str) -> None:
    Pool.create(pool, "16M").close()
    _give_to_nobody(pool)
    r = _cli(pool, "lu", "create", "a", "--size", "1M", env={"BLOCKSTORE_SAFE_POOLS": pool})
    assert r.returncode == 0, r.stderr.decode()
    r = _cli(pool, "cluster", "create", "c", env={"BLOCKSTORE_SAFE_POOLS": pool})
    assert r.returncode == 0, r.stderr.decode()
    strangers = [os.path.join(d, n) for d, ds, fs in os.walk(pool) for n in ds + fs
                 if os.lstat(os.path.join(d, n)).st_uid != NOBODY]
    assert strangers == []
    r = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable,
                        "-m", "blockstore", "--pool", pool, "lu", "write", "a"], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()


def test_lmdb_opens_its_files_with_the_owners_rights(tmp_path):
    """The layer under the link check: LMDB opens its files by name, so root opens them with the
    pool owner's file permissions; a link swapped in after the check reaches nothing the owner
    could not (here a file of root's, mode 0600)."""
    from blockstore.pooldir import as_owner
    pool, secret = tmp_path / "pool", tmp_path / "secret"
    pool.mkdir()
    os.chown(pool, NOBODY, NOBODY)
    secret.write_bytes(b"do not touch")
    secret.chmod(0o600)
    with as_owner(str(pool)):
        with pytest.raises(PermissionError):
            open(secret, "r+b")
    with open(secret, "r+b"):
        pass  # root again, after the block
