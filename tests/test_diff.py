"""Changed extents between snapshots and incremental streams: lu diff, export-diff, import-diff."""
from __future__ import annotations

import os

from conftest import cli_json, run_cli

MiB = 1 << 20


def at_s1(tmp_path, name: str, size: int, written: int) -> tuple[str, str]:
    """A pool holding LU ``name`` with ``written`` random bytes, snapshot s1 taken and exported
    whole: (pool, the export)."""
    pool, full = str(tmp_path / "pool"), str(tmp_path / "full.raw")
    run_cli("pool", "create", "--size", "1G", "--extent-size", "64K", pool=pool)
    run_cli("lu", "create", name, "--size", str(size), pool=pool)
    run_cli("lu", "write", name, pool=pool, stdin=os.urandom(written))
    run_cli("lu", "snapshot", name, "s1", pool=pool)
    run_cli("lu", "export", f"{name}@s1", full, pool=pool)
    return pool, full


def test_a_full_export_and_a_chain_of_diffs_rebuild_the_lu(tmp_path):
    pool, full = at_s1(tmp_path, "vol", 32 * MiB, 20 * MiB)
    steps = [  # (offset, bytes or None for a discard, length)
        [(3 * MiB + 100, os.urandom(5000), 0), (30 * MiB, os.urandom(MiB), 0)],
        [(0, None, 8 * MiB), (10 * MiB, bytes(MiB), 0)],
        [(1 * MiB, os.urandom(3 * MiB), 0), (31 * MiB + 4096, os.urandom(4096), 0)],
    ]
    for i, step in enumerate(steps, start=2):
        for off, data, length in step:
            if data is None:
                run_cli("lu", "discard", "vol", "--offset", str(off), "--length", str(length), pool=pool)
            else:
                run_cli("lu", "write", "vol", "--offset", str(off), pool=pool, stdin=data)
        run_cli("lu", "snapshot", "vol", f"s{i}", pool=pool)
        run_cli("lu", "export-diff", f"vol@s{i}", "--from", f"s{i - 1}", str(tmp_path / f"d{i}"), pool=pool)

    d = cli_json("lu", "diff", "vol@s1", "vol@s2", pool=pool)
    assert [(r["offset"], r["length"]) for r in d["ranges"]] == [(3 * MiB, 64 * 1024), (30 * MiB, MiB)]
    assert cli_json("lu", "diff", "vol@s2", "vol@s3", pool=pool)["ranges"][0] == {
        "offset": 0, "length": 8 * MiB, "data": False}
    # the old snapshots' content stays what it was: diffs come from the maps, never from data
    assert cli_json("lu", "diff", "vol@s4", "vol", pool=pool)["ranges"] == []

    run_cli("lu", "import", "copy", full, pool=pool)
    run_cli("lu", "snapshot", "copy", "s1", pool=pool)
    r = run_cli("lu", "import-diff", "copy", str(tmp_path / "d3"), pool=pool, check_rc=None)
    assert r.returncode != 0 and "no snapshot 's2'" in r.stderr.decode()  # a stream for another base
    for i in (2, 3):
        run_cli("lu", "import-diff", "copy", str(tmp_path / f"d{i}"), pool=pool)
    with open(tmp_path / "d4", "rb") as f:
        stream = f.read()
    # a corrupted and a truncated stream are refused, and nothing of them stays
    bad = bytearray(stream)
    bad[len(bad) // 2] ^= 0x40
    (tmp_path / "bad").write_bytes(bytes(bad))
    (tmp_path / "short").write_bytes(stream[:len(stream) * 2 // 3])
    before = run_cli("lu", "read", "copy", pool=pool).stdout
    for name, why in (("bad", "corrupted"), ("short", "truncated")):
        r = run_cli("lu", "import-diff", "copy", str(tmp_path / name), pool=pool, check_rc=None)
        assert r.returncode != 0 and why in r.stderr.decode() and len(r.stderr.decode().strip().splitlines()) == 1, r.stderr
        assert run_cli("lu", "read", "copy", pool=pool).stdout == before
        assert "copy@s4" not in cli_json("lu", "show", "copy", pool=pool)["snapshots"]
    run_cli("lu", "import-diff", "copy", "-", pool=pool, stdin=stream)  # from stdin
    assert run_cli("lu", "read", "copy", pool=pool).stdout == run_cli("lu", "read", "vol@s4", pool=pool).stdout
    assert "copy@s4" in cli_json("lu", "show", "copy", pool=pool)["snapshots"]
    # an LU changed since the stream's base is refused
    run_cli("lu", "write", "copy", pool=pool, stdin=b"local change")
    run_cli("lu", "export-diff", "vol", "--from", "s3", str(tmp_path / "d-now"), pool=pool)
    r = run_cli("lu", "rollback", "copy", "s3", pool=pool)
    run_cli("lu", "write", "copy", pool=pool, stdin=b"local change")
    r = run_cli("lu", "import-diff", "copy", str(tmp_path / "d-now"), pool=pool, check_rc=None)
    assert r.returncode != 0 and "changed since s3" in r.stderr.decode()
    r = run_cli("lu", "export-diff", "vol", "--from", "s3", str(tmp_path / "d-now"), pool=pool, check_rc=None)
    assert r.returncode != 0 and "--force" in r.stderr.decode()  # no silent overwrite
    assert cli_json("pool", "check", pool=pool)["clean"]


def test_diffs_across_a_shrink_and_a_growth_rebuild_the_lu(tmp_path):
    pool, full = at_s1(tmp_path, "v", 8 * MiB, 8 * MiB)
    run_cli("lu", "resize", "v", "--size", "3M", "--force", pool=pool)       # shrink
    run_cli("lu", "write", "v", "--offset", str(MiB), pool=pool, stdin=os.urandom(4096))
    run_cli("lu", "snapshot", "v", "s2", pool=pool)
    run_cli("lu", "resize", "v", "--size", "12M", pool=pool)                 # grow
    run_cli("lu", "write", "v", "--offset", str(10 * MiB), pool=pool, stdin=os.urandom(4096))
    run_cli("lu", "snapshot", "v", "s3", pool=pool)
    for i in (2, 3):
        run_cli("lu", "export-diff", f"v@s{i}", "--from", f"s{i - 1}", str(tmp_path / f"d{i}"), pool=pool)
    run_cli("lu", "import", "w", full, pool=pool)
    run_cli("lu", "snapshot", "w", "s1", pool=pool)
    for i in (2, 3):
        run_cli("lu", "import-diff", "w", str(tmp_path / f"d{i}"), pool=pool)
        assert run_cli("lu", "read", "w", pool=pool).stdout == run_cli("lu", "read", f"v@s{i}", pool=pool).stdout


def test_diff_of_a_huge_lu_costs_its_map(tmp_path):
    pool = str(tmp_path / "pool")
    run_cli("pool", "create", "--size", "4G", pool=pool)
    run_cli("lu", "create", "big", "--size", "1P", pool=pool)
    run_cli("lu", "write", "big", "--offset", str(1 << 49), pool=pool, stdin=os.urandom(3 * MiB))
    run_cli("lu", "snapshot", "big", "a", pool=pool)
    run_cli("lu", "write", "big", "--offset", str((1 << 49) + MiB), pool=pool, stdin=b"x")
    run_cli("lu", "snapshot", "big", "b", pool=pool)
    d = cli_json("lu", "diff", "big@a", "big@b", pool=pool)
    assert d["ranges"] == [{"offset": (1 << 49) + MiB, "length": MiB, "data": True}]
