"""Root and other users' pools: root refuses a pool another user owns unless trusted by name, and
never follows a link planted where the engine keeps a directory of its own."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from blockstore import Pool

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
