"""Commands that left things behind or said the wrong thing, each as a user met it: every
refusal is one line, changes nothing, and says what to do."""
from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

import pytest

from blockstore.cluster.events import EventLog
from conftest import run_cli

BS = [sys.executable, "-m", "blockstore"]


def _pool(tmp_path, size: str = "128M", **kw: str) -> str:
    pool = str(tmp_path / "pool")
    run_cli("pool", "create", "--size", size, *[a for k, v in kw.items() for a in (f"--{k.replace('_', '-')}", v)], pool=pool)
    return pool


def _state(pool: str) -> str:
    return run_cli("lu", "list", "--json", pool=pool).stdout.decode()


def _refused(pool: str, *args: str, rc: int = 1, says: str = "") -> str:
    before = _state(pool)
    r = run_cli(*args, pool=pool, check_rc=None)
    err = r.stderr.decode()
    assert r.returncode == rc and err.count("\n") == 1 and says in err, (args, r.returncode, err)
    assert _state(pool) == before
    assert b"clean" in run_cli("pool", "check", pool=pool).stdout
    return err


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs to run out of room, which needs root")
def test_an_export_that_fails_half_way_leaves_no_file(tmp_path):
    """ENOSPC half-way through (as Ctrl-C would stop it): no file at the target that looks whole,
    no temporary one either, and the retry needs no --force."""
    pool = _pool(tmp_path)
    run_cli("lu", "create", "d", "--size", "8M", pool=pool)
    run_cli("lu", "write", "d", pool=pool, stdin=os.urandom(8 << 20))
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(small)], check=True)
    try:
        r = run_cli("lu", "export", "d", str(small / "d.raw"), pool=pool, check_rc=None)
        assert r.returncode != 0 and r.stderr.decode().count("\n") == 1, r.stderr.decode()
        assert os.listdir(small) == []
        r = run_cli("lu", "export-diff", "d", str(small / "d.diff"), "--from", "nosuch", pool=pool, check_rc=None)
        assert r.returncode != 0 and os.listdir(small) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)
    run_cli("lu", "snapshot", "d", "s", pool=pool)
    run_cli("lu", "export-diff", "d@s", str(tmp_path / "d.diff"), "--from", "s", pool=pool)
    run_cli("lu", "export", "d", str(tmp_path / "d.raw"), pool=pool)
    assert os.path.getsize(tmp_path / "d.raw") == 8 << 20
    assert [n for n in os.listdir(tmp_path) if ".part" in n] == []


def test_an_export_replaces_a_links_target_and_refuses_a_directory(tmp_path):
    pool = _pool(tmp_path)
    run_cli("lu", "create", "d", "--size", "1M", pool=pool)
    run_cli("lu", "write", "d", pool=pool, stdin=b"z" * 4096)
    (tmp_path / "real.img").write_bytes(b"old")
    (tmp_path / "link.img").symlink_to(tmp_path / "real.img")
    run_cli("lu", "export", "d", str(tmp_path / "link.img"), "--force", pool=pool)
    assert os.path.islink(tmp_path / "link.img") and (tmp_path / "real.img").read_bytes()[:4096] == b"z" * 4096
    (tmp_path / "dir").mkdir()
    for args in (["lu", "export", "d"], ["lu", "export-diff", "d", "--from", "s"]):
        r = run_cli(*args, str(tmp_path / "dir"), "--force", pool=pool, check_rc=None)
        assert r.returncode == 1 and "is a directory" in r.stderr.decode(), r.stderr.decode()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with open(tmp_path / "got", "wb") as got:
        reader = subprocess.Popen(["cat", str(fifo)], stdout=got)
        run_cli("lu", "export", "d", str(fifo), pool=pool)  # a pipe is written as a stream, no --force
        assert reader.wait(60) == 0
    assert (tmp_path / "got").read_bytes()[:4096] == b"z" * 4096


def test_binary_is_not_written_onto_a_terminal(tmp_path):
    pool = _pool(tmp_path)
    run_cli("lu", "create", "d", "--size", "1M", pool=pool)
    for args in (["lu", "export", "d", "-"], ["lu", "read", "d"]):
        master, slave = pty.openpty()
        try:
            r = subprocess.run(BS + ["--pool", pool] + args, stdout=slave, stderr=subprocess.PIPE, timeout=60)
        finally:
            os.close(slave)
            os.close(master)
        err = r.stderr.decode()
        assert r.returncode == 1 and "terminal" in err and err.count("\n") == 1, err


def test_a_write_the_pool_has_no_room_for_is_refused_whole(tmp_path):
    pool = _pool(tmp_path, "16M")
    run_cli("lu", "create", "big", "--size", "64M", pool=pool)
    before = _state(pool)
    r = run_cli("lu", "write", "big", pool=pool, stdin=os.urandom(24 << 20), check_rc=None)
    assert r.returncode == 1 and r.stderr.decode().count("\n") == 1, r.stderr.decode()
    assert _state(pool) == before  # nothing of it applied: 0 bytes allocated, as before
    assert json.loads(before)[0]["allocated"] == 0
    assert b"clean" in run_cli("pool", "check", pool=pool).stdout


def test_lifecycle_commands_say_what_they_did_or_why_not(tmp_path):
    pool = _pool(tmp_path, mirror_dir=str(tmp_path / "fg1"))
    run_cli("lu", "create", "d", "--size", "4M", pool=pool)
    run_cli("lu", "write", "d", pool=pool, stdin=b"x" * 65536)
    run_cli("lu", "snapshot", "d", "s1", pool=pool)
    _refused(pool, "lu", "flatten", "d", says="not a clone")
    out = run_cli("lu", "unmirror", "d", pool=pool).stdout.decode()
    assert "not mirrored" in out
    run_cli("lu", "mirror", "d", pool=pool)
    assert "mirrored already" in run_cli("lu", "mirror", "d", pool=pool).stdout.decode()
    run_cli("lu", "write", "d", pool=pool, stdin=b"y" * 65536)
    assert "back at d@s1" in run_cli("lu", "rollback", "d", "d@s1", pool=pool).stdout.decode()  # as rbd takes it
    assert run_cli("lu", "read", "d", "--length", "64K", pool=pool).stdout == b"x" * 65536
    other = tmp_path / "other"
    other.mkdir()
    (other / "data").write_bytes(b"someone's file")
    _refused(pool, "pool", "failgrp", "replace", "--group", "1", str(other), says="already holds a data file")
    assert (other / "data").read_bytes() == b"someone's file"


def test_usage_errors_are_usage_errors(tmp_path):
    pool = _pool(tmp_path)
    run_cli("lu", "create", "d", "--size", "8M", pool=pool)
    (tmp_path / "dir").mkdir()
    err = _refused(pool, "lu", "import", "x", str(tmp_path / "dir"), says="is a directory")
    assert ": 8" not in err and ": 9" not in err
    _refused(pool, "lu", "create", "y", "--size", "513", rc=2, says="multiple of 512")
    _refused(pool, "lu", "create", "y", "--size", "1Q", rc=2)
    err = _refused(pool, "lu", "read", "d", "--offset", "9M", says="past the end of d")
    assert "-1" not in err
    run_cli("lu", "create", "empty", "--size", "0", pool=pool)  # as `touch MNT/empty` makes one
    run_cli("lu", "resize", "empty", "--size", "1M", pool=pool)
    help_ = run_cli("pool", "create", "--help").stdout.decode()
    assert "from 64K to 16M" in " ".join(help_.split())
    for cmd in (["cluster", "events"], ["lu", "list"], ["image", "import"], ["mount"]):
        assert "(default: [])" not in run_cli(*cmd, "--help").stdout.decode()


def test_following_events_with_no_primary_prints_the_backlog_then_says_it_waits(tmp_path):
    pool = _pool(tmp_path)
    run_cli("cluster", "create", "c", pool=pool)
    log = EventLog(pool)
    log.publish("lu_created", {"name": "a"})
    log.publish("lu_created", {"name": "b"})
    proc = subprocess.Popen(BS + ["--pool", pool, "cluster", "events", "--follow", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        said = proc.stderr.readline().decode()  # the backlog is printed before it
    finally:
        proc.kill()
    out, _ = proc.communicate()
    names = [json.loads(line)["data"]["name"] for line in out.decode().splitlines()]
    assert names == ["a", "b"], out
    assert "no primary is up; waiting" in said, said


def test_an_lus_fence_choice_is_set_shown_and_refused_plainly(tmp_path):
    pool = _pool(tmp_path)
    run_cli("lu", "create", "d", "--size", "8M", "--on-fence", "hold", pool=pool)
    info = json.loads(run_cli("lu", "show", "d", "--json", pool=pool).stdout)
    assert info["on_fence"] == "hold"
    assert "hold writes" in run_cli("lu", "show", "d", pool=pool).stdout.decode()
    run_cli("lu", "snapshot", "d", "s", pool=pool)
    _refused(pool, "lu", "set", "d", rc=2, says="give a setting")
    _refused(pool, "lu", "set", "d", "--on-fence", "later", rc=2, says="invalid choice")
    _refused(pool, "lu", "set", "d@s", "--on-fence", "error", says="snapshot")
    _refused(pool, "lu", "set", "nope", "--on-fence", "error", says="no LU named")
    run_cli("lu", "set", "d", "--on-fence", "mount", pool=pool)
    assert json.loads(run_cli("lu", "show", "d", "--json", pool=pool).stdout)["on_fence"] is None
