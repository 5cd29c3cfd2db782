"""The command line: output shapes, exit codes, and bad input that must change nothing."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import cli_json, fingerprint, run_cli


@pytest.fixture(scope="module")
def cli_pool_made(tmp_path_factory):
    """LU a (11,000 bytes at 4K), its snapshot a@s1 and a clone c of it, made once by the CLI."""
    d = str(tmp_path_factory.mktemp("cli") / "pool")
    run_cli("pool", "create", "--size", "64M", "--extent-size", "64K", pool=d)
    run_cli("lu", "create", "a", "--size", "4M", pool=d)
    run_cli("lu", "write", "a", "--offset", "4K", pool=d, stdin=b"hello world" * 1000)
    run_cli("lu", "snapshot", "a", "s1", pool=d)
    run_cli("lu", "clone", "a@s1", "c", pool=d)
    return d


@pytest.fixture
def cli_pool(cli_pool_made, tmp_path):
    """A copy of that pool for each test (a pool copied whole is a pool: its files are named
    relative to its directory)."""
    d = str(tmp_path / "pool")
    subprocess.run(["cp", "-a", "--sparse=always", cli_pool_made, d], check=True)
    return d


def test_status_list_show_json_shapes(cli_pool):
    st = cli_json("pool", "status", pool=cli_pool)
    for key in ("capacity", "allocated", "free", "extent_size", "overcommit", "threshold", "lus", "snapshots"):
        assert key in st
    assert st["capacity"] == 64 << 20 and st["extent_size"] == 64 << 10
    assert st["allocated"] == 64 << 10
    rows = cli_json("lu", "list", pool=cli_pool)
    by = {r["name"]: r for r in rows}
    assert set(by) == {"a", "a@s1", "c"}
    assert by["a@s1"]["kind"] == "snapshot" and by["a@s1"]["parent"] == "a"
    assert by["c"]["kind"] == "clone" and by["c"]["parent"] == "a@s1"
    assert by["a"]["allocated"] == 64 << 10
    info = cli_json("lu", "show", "a", pool=cli_pool)
    assert info["snapshots"] == ["a@s1"] and info["size"] == 4 << 20
    text = run_cli("lu", "list", pool=cli_pool).stdout.decode()
    assert "NAME" in text and "a@s1" in text


def test_read_write_roundtrip_and_env_pool(cli_pool):
    out = run_cli("lu", "read", "c", "--offset", "4K", "--length", "11000", pool=cli_pool).stdout
    assert out == (b"hello world" * 1000)[:11000]
    os.environ["BLOCKSTORE_POOL"] = cli_pool
    try:
        assert run_cli("lu", "read", "a", "--offset", "4096", "--length", "5").stdout == b"hello"
    finally:
        del os.environ["BLOCKSTORE_POOL"]


def test_lifecycle_commands(cli_pool):
    run_cli("lu", "resize", "a", "--size", "8M", pool=cli_pool)
    assert cli_json("lu", "show", "a", pool=cli_pool)["size"] == 8 << 20
    run_cli("lu", "write", "a", "--offset", "0", pool=cli_pool, stdin=b"XXXX")
    run_cli("lu", "rollback", "a", "s1", pool=cli_pool)
    assert run_cli("lu", "read", "a", "--length", "4", pool=cli_pool).stdout == bytes(4)
    run_cli("lu", "flatten", "c", pool=cli_pool)
    assert cli_json("lu", "show", "c", pool=cli_pool)["parent"] is None
    run_cli("lu", "rm", "a", "--recursive", pool=cli_pool)
    run_cli("pool", "grow", "--size", "128M", pool=cli_pool)
    assert cli_json("pool", "status", pool=cli_pool)["capacity"] == 128 << 20
    rep = cli_json("pool", "check", pool=cli_pool)
    assert rep["clean"] and rep["code"] == 0


BAD = [
    (["pool", "create", "--size", "-1G"], 2),
    (["lu", "create", "x", "--size", "-1"], 2),
    (["lu", "create", "x", "--size", "banana"], 2),
    (["lu", "create", "x", "--size", "99999999T"], 2),
    (["lu", "create", "x", "--size", "1000"], 2),          # not a multiple of 512: a usage error
    (["lu", "create", "", "--size", "1M"], 1),
    (["lu", "create", "x" * 65, "--size", "1M"], 1),
    (["lu", "create", "a/b", "--size", "1M"], 1),
    (["lu", "create", "..", "--size", "1M"], 1),
    (["lu", "create", "a b", "--size", "1M"], 1),
    (["lu", "create", "a", "--size", "1M"], 1),             # exists
    (["lu", "snapshot", "a", "s1"], 1),                     # exists
    (["lu", "snapshot", "nosuch", "s"], 1),
    (["lu", "rm", "a"], 1),                                 # has snapshots (and a clone)
    (["lu", "rm", "a", "--recursive"], 1),                  # its snapshot has a clone
    (["lu", "rm", "a@s1"], 1),                              # has a clone
    (["lu", "read", "a", "--offset", "4M", "--length", "1"], 1),
    (["lu", "write", "a", "--offset", "4095K"], 1),         # 11000 bytes of stdin run past the end
    (["lu", "write", "a", "--offset", "2M"], 1),            # 2 MiB + 11000 bytes: the first MiBs fit
    (["lu", "write", "a@s1", "--offset", "0"], 1),          # snapshots are read-only
    (["lu", "resize", "a", "--size", "1M"], 1),             # shrinking needs --force
    (["lu", "resize", "a@s1", "--size", "8M"], 1),
    (["lu", "rollback", "a", "nosuch"], 1),
    (["lu", "clone", "a@nosuch", "z"], 1),
    (["lu", "import", "z", "/nonexistent/file"], 1),
    (["pool", "grow", "--size", "1M"], 1),
    (["pool", "create", "--size", "1G"], 1),                 # already a pool
    (["lu", "nosuchcmd"], 2),
    (["lu", "rename", "a", "c"], 1),                        # the name is taken
    (["lu", "export", "a", "EXISTING"], 1),                 # no silent overwrite
    (["lu", "read", "a", "--length", "lots"], 2),           # said as --length, not offset
    (["lu", "list", "--kind", "disk"], 2),
    (["node", "stop"], 2),                                  # no name
    (["cluster", "events"], 1),                             # no cluster: said, not an empty success
]


@pytest.mark.parametrize("args,code", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_refused_and_changes_nothing(cli_pool, args, code, tmp_path):
    existing = tmp_path / "existing"
    existing.write_bytes(b"keep me")
    args = [str(existing) if a == "EXISTING" else a for a in args]
    before = fingerprint(cli_pool)
    data = b"y" * ((2 << 20) + 11000 if args[-1] == "2M" else 11000)
    r = run_cli(*args, pool=cli_pool, stdin=data, check_rc=None)
    err = r.stderr.decode()
    assert r.returncode == code, err
    assert "Traceback" not in err and err.strip(), err
    assert len(err.strip().splitlines()) == 1 or code == 2, err
    assert fingerprint(cli_pool) == before


def test_missing_and_damaged_pools(tmp_path):
    for pool in (str(tmp_path / "missing"), str(tmp_path)):
        r = run_cli("pool", "status", pool=pool, check_rc=1)
        assert "Traceback" not in r.stderr.decode()
    d = str(tmp_path / "p")
    run_cli("pool", "create", "--size", "16M", pool=d)
    with open(os.path.join(d, "meta", "data.mdb"), "r+b") as f:
        f.write(b"\xff" * 8192)
    r = run_cli("lu", "list", pool=d, check_rc=4)
    assert "damaged" in r.stderr.decode() or "cannot be opened" in r.stderr.decode()
    r = run_cli("lu", "list", check_rc=2)  # no pool named at all
    assert "--pool" in r.stderr.decode()


def test_writer_lock_names_holder(cli_pool):
    import sys
    code = (f"import sys; from blockstore.pool import Pool; p = Pool.open({cli_pool!r}); lu = p.open_lu('a'); "
            "print('ready', flush=True); sys.stdin.readline()")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        r = run_cli("lu", "write", "a", pool=cli_pool, stdin=b"x", check_rc=1)
        assert f"pid {child.pid}" in r.stderr.decode()
        run_cli("lu", "read", "a", "--length", "1", pool=cli_pool)  # readers are allowed
    finally:
        child.communicate("\n", timeout=30)


def test_check_reports_and_repairs(cli_pool):
    from blockstore.pool import Pool
    from blockstore.allocator import set_free
    with Pool.open(cli_pool) as p, p.meta.write() as txn:
        set_free(p.meta, txn, 0, __import__("numpy").array([500, 501]), False)  # leak two extents
    r = run_cli("pool", "check", "--json", pool=cli_pool, check_rc=3)
    assert json.loads(r.stdout)["leaks"]
    run_cli("pool", "check", "--repair", pool=cli_pool, check_rc=0)
    run_cli("pool", "check", pool=cli_pool, check_rc=0)
    with Pool.open(cli_pool) as p, p.meta.write() as txn:
        rec = p.records(txn)
        first = next(r for r in rec if r["name"] == "a")
        raw = next(iter(p.meta.map_chunks(txn, first["id"])))[1]
        import numpy as np
        phys = np.frombuffer(raw, np.uint32)
        set_free(p.meta, txn, 0, phys[phys != 0xFFFFFFFF][:1].astype(np.int64), True)  # in use yet free
    r = run_cli("pool", "check", pool=cli_pool, check_rc=4)
    assert "marked free" in r.stdout.decode()
    run_cli("pool", "check", "--repair", pool=cli_pool, check_rc=0)


def test_input_that_looks_almost_right_is_refused(pool_dir):
    """A name ending in a newline, full-width digits, a threshold of 1.5, an offset past the end:
    each refused in one line, and the pool left as it was."""
    from blockstore.sizes import parse_size
    run_cli("pool", "create", "--size", "64M", pool=pool_dir)
    run_cli("lu", "create", "d", "--size", "1M", pool=pool_dir)
    before = fingerprint(pool_dir)
    for args in (["lu", "create", "x\n", "--size", "1M"], ["lu", "snapshot", "d", "s\n"],
                 ["lu", "clone", "d", "c\n"], ["lu", "create", "y", "--size", "\uff11\uff12M"],
                 ["pool", "set", "--threshold", "1.5"], ["pool", "set", "--threshold", "150%"],
                 ["lu", "read", "d", "--offset", "2M"]):
        r = run_cli(*args, pool=pool_dir, check_rc=None)
        assert r.returncode in (1, 2) and len(r.stderr.splitlines()) == 1 and b"Traceback" not in r.stderr, (args, r.stderr)
    assert fingerprint(pool_dir) == before
    assert parse_size(str((1 << 53) + 1)) == (1 << 53) + 1  # exact, not through a float
    assert parse_size("1.5K") == 1536


def test_a_daemon_that_fails_to_start_says_why(tmp_path):
    """libfuse reports the cause of a failed mount on stderr (the daemon's log) and the binding
    then raises only its return code: the caller must see the cause, not 'blockstore: 4'."""
    from blockstore.daemon import daemonize
    from blockstore.errors import BlockstoreError

    def serve(ready):  # what a mount daemon's start looks like when /dev/fuse cannot be opened
        os.write(2, b"fuse: failed to open /dev/fuse: Permission denied\n")  # as libfuse does, in C
        raise RuntimeError(4)
    log = str(tmp_path / "daemon.log")
    with pytest.raises(BlockstoreError) as e:
        daemonize(serve, log, "mount daemon", root=str(tmp_path))
    assert "/dev/fuse: Permission denied" in str(e.value) and log in str(e.value), str(e.value)


def test_wrong_places_are_named_as_they_are(tmp_path):
    (tmp_path / "afile").write_text("x")
    r = run_cli("lu", "list", pool=str(tmp_path / "afile"), check_rc=1)
    assert b"not a directory" in r.stderr
    run_cli("pool", "create", "--size", "64M", pool=str(tmp_path / "p"))
    r = run_cli("cluster", "events", pool=str(tmp_path / "p"), check_rc=1)
    assert b"has no cluster" in r.stderr and not os.path.exists(tmp_path / "p" / "cluster")


def test_an_empty_name_is_no_such_lu_not_a_traceback(pool_dir):
    run_cli("pool", "create", "--size", "64M", pool=pool_dir)
    for args in (["lu", "show", ""], ["lu", "read", ""], ["lu", "rm", ""]):
        r = run_cli(*args, pool=pool_dir, check_rc=None)
        assert r.returncode == 1 and len(r.stderr.splitlines()) == 1 and b"Traceback" not in r.stderr, (args, r.stderr)


def disk_state(*dirs: str) -> dict[str, tuple[int, int, str]]:
    """Every file under ``dirs`` (LMDB's reader table, lock.mdb, aside): size, mtime, sha256."""
    import hashlib
    out = {}
    for d in dirs:
        for root, _, files in os.walk(d):
            for f in files:
                path = os.path.join(root, f)
                if f == "lock.mdb":
                    continue
                st = os.stat(path)
                with open(path, "rb") as fh:
                    out[path] = (st.st_size, st.st_mtime_ns, hashlib.sha256(fh.read()).hexdigest())
    return out


def test_commands_that_look_change_nothing_on_disk(tmp_path):
    """status, list, show, check, failgrp list, read and export open the pool read-only: not a
    byte of metadata, data, lock directory or logs changes, even with a dead session's
    reservations and activity log waiting (the next writable open settles and reclaims them)."""
    import sys
    d, m = str(tmp_path / "pool"), str(tmp_path / "fg1")
    run_cli("pool", "create", "--size", "64M", "--extent-size", "64K", "--mirror-dir", m, pool=d)
    run_cli("lu", "create", "a", "--size", "4M", "--mirrored", pool=d)
    run_cli("lu", "write", "a", pool=d, stdin=os.urandom(1 << 20))
    # a writer that dies without closing: its session file, reservation and activity log stay
    subprocess.run([sys.executable, "-c", f"""
import os
import subprocess
from blockstore.pool import Pool
p = Pool.open({d!r})
lu = p.open_lu("a")
lu.write(2 << 20, os.urandom(256 << 10))
lu.flush()
lu.write(3 << 20, os.urandom(4096))
os._exit(9)
"""], check=False)
    assert any(f.startswith("al-") for f in os.listdir(os.path.join(d, "locks", "al")))
    before = disk_state(d, m)
    out = tmp_path / "out"
    for cmd in (["pool", "status"], ["lu", "list"], ["lu", "show", "a"], ["pool", "check"],
                ["pool", "failgrp", "list"], ["lu", "export", "a", str(out)], ["lu", "read", "a", "--length", "4096"],
                ["image", "list"], ["partition", "list"], ["paging", "list"], ["cec", "list"]):
        run_cli(*cmd, pool=d, check_rc=None)
        assert disk_state(d, m) == before, cmd
    assert out.stat().st_size == 4 << 20
    rep = cli_json("pool", "check", pool=d)
    assert rep["clean"] and rep["reclaimable"] > 0  # the dead session's reservation: not a leak
    assert disk_state(d, m) == before
    run_cli("lu", "snapshot", "a", "s", pool=d)  # a change: the open settles, reclaims, commits
    after = disk_state(d, m)
    assert after != before and not any(f.startswith("al-") for f in os.listdir(os.path.join(d, "locks", "al")))
    assert cli_json("pool", "check", pool=d)["reclaimable"] == 0


def test_global_options_go_anywhere_and_changes_answer_in_json(cli_pool, monkeypatch):
    """--pool, --json, -v and -q before the command or after it; every change says what it did
    in one line, or prints the object it made with --json, or nothing with -q."""
    listed = run_cli("lu", "list", "--pool", cli_pool).stdout
    assert run_cli("--pool", cli_pool, "lu", "list").stdout == listed and b"NAME" in listed
    assert json.loads(run_cli("--json", "lu", "list", pool=cli_pool).stdout) == cli_json("lu", "list", pool=cli_pool)
    assert run_cli("lu", "show", "a", "-v", pool=cli_pool).returncode == 0
    line = run_cli("lu", "snapshot", "a", "s2", pool=cli_pool).stdout.decode()
    assert line.strip() == "snapshot a@s2 taken (4 MiB)"
    made = json.loads(run_cli("lu", "clone", "a@s2", "d", "--json", pool=cli_pool).stdout)
    assert made["name"] == "d" and made["kind"] == "clone" and made["parent"] == "a@s2"
    assert run_cli("-q", "lu", "snapshot", "d", "x", pool=cli_pool).stdout == b""
    for args, says in ((["lu", "resize", "d", "--size", "8M"], "d resized from 4 MiB to 8 MiB"),
                       (["lu", "rename", "d", "e"], "renamed d to e"),
                       (["lu", "rollback", "e", "x"], "e is back at e@x"),
                       (["pool", "set", "--threshold", "90%"], "threshold set to 90%")):
        assert run_cli(*args, pool=cli_pool).stdout.decode().strip() == says
    assert cli_json("lu", "show", "e", pool=cli_pool)["snapshots"] == ["e@x"]  # snapshots follow a rename


def test_import_and_export_through_pipes(cli_pool, tmp_path):
    data = os.urandom(3_000_000)
    run_cli("lu", "import", "piped", "-", pool=cli_pool, stdin=data)
    assert cli_json("lu", "show", "piped", pool=cli_pool)["size"] == 3_000_320  # rounded up to 512
    out = run_cli("lu", "export", "piped", "-", pool=cli_pool).stdout
    assert out == data + bytes(320)
    r = run_cli("lu", "import", "empty", "-", pool=cli_pool, stdin=b"", check_rc=1)
    assert b"empty" in r.stderr and "empty" not in [x["name"] for x in cli_json("lu", "list", pool=cli_pool)]
    dest = tmp_path / "out.raw"
    run_cli("lu", "export", "piped", str(dest), pool=cli_pool)
    run_cli("lu", "export", "piped", str(dest), "--force", pool=cli_pool)
    assert dest.read_bytes() == out


def test_du_columns_add_up_and_show_reads_as_words(cli_pool):
    run_cli("lu", "write", "a", "--offset", "1M", pool=cli_pool, stdin=os.urandom(256 << 10))
    run_cli("lu", "write", "c", "--offset", "2M", pool=cli_pool, stdin=os.urandom(128 << 10))
    du = cli_json("lu", "du", pool=cli_pool)
    rows = {r["name"]: r for r in du["lus"]}
    assert all(r["exclusive"] + r["shared"] == r["used"] for r in rows.values())
    assert rows["a@s1"]["exclusive"] == 0  # everything it holds, a or c holds too
    assert rows["c"]["exclusive"] == 128 << 10 and rows["a"]["exclusive"] == 256 << 10
    status = cli_json("pool", "status", pool=cli_pool)
    assert du["total"]["used"] == status["allocated"]  # each shared extent counted once: it adds up
    assert du["total"]["provisioned"] == 8 << 20      # a and c; a snapshot provisions nothing
    assert [r["name"] for r in cli_json("lu", "du", "a", pool=cli_pool)["lus"]] == ["a", "a@s1"]
    text = run_cli("lu", "show", "c", pool=cli_pool).stdout.decode()
    assert "kind       clone of a@s1" in text and "size       4 MiB (4,194,304 bytes)" in text
    assert "None" not in text and "[" not in text
    assert run_cli("lu", "du", "nosuch", pool=cli_pool, check_rc=1).stderr.decode().count("\n") == 1


def test_error_words_and_verbose_events(cli_pool):
    err = run_cli("lu", "read", "a", "--length", "lots", pool=cli_pool, check_rc=2).stderr.decode()
    assert "--length" in err and "offset" not in err
    err = run_cli("lu", "resize", "a", "--size", "1M", pool=cli_pool, check_rc=1).stderr.decode()
    assert "from 4 MiB to 1 MiB" in err and "bytes" not in err, err
    assert b"has no cluster" in run_cli("cluster", "events", pool=cli_pool, check_rc=1).stderr
    r = run_cli("-v", "lu", "create", "verbose1", "--size", "1M", pool=cli_pool)
    assert b"lu_created name=verbose1 size=1048576" in r.stderr, r.stderr
    assert b"lu_created" not in run_cli("lu", "create", "quiet1", "--size", "1M", pool=cli_pool).stderr
