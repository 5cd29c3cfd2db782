"""What the package ships beside the engine: help with examples that parse, completion and man
page made from the parser (and the installed copies current), systemd units that systemd
accepts, progress bars, listings a user can filter, and a type check."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest

from blockstore.cli import build_parser, commands, completion, examples, manpage

from conftest import run_cli, sh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARE = os.path.join(ROOT, "share")
UNITS = os.path.join(ROOT, "systemd")


def test_every_command_has_help_and_examples_that_parse():
    parser = build_parser()
    every = commands(parser)
    assert len(every) > 60
    for p in every:
        assert p.description, p.prog
        assert p.epilog and p.epilog.startswith("examples:"), f"{p.prog}: no example"
        for a in p._actions:
            if a.help != argparse.SUPPRESS and not isinstance(a, argparse._HelpAction):
                assert a.help, f"{p.prog} {a.dest}: no help text"
        assert examples(p), f"{p.prog}: no example"
        for line in examples(p):
            part = next(seg for seg in line.split("|") if "blockstore " in seg)  # the part of a pipe it runs
            words = shlex.split(part.split(">")[0].split("<")[0])
            words = words[words.index("blockstore") + 1:]
            args = parser.parse_args(words)  # an example that does not parse raises UsageError here
            assert p.prog.split()[1:] == [x for x in (args.group, getattr(args, "cmd", None), getattr(args, "sub", None))
                                          if x][:len(p.prog.split()) - 1], (line, p.prog)


def test_size_options_say_their_units_and_defaults_show():
    out = run_cli("pool", "create", "--help").stdout.decode()
    assert "10G" in out and "(default: 1M)" in out and "(default: 80%)" in out
    assert "examples:" in out and "blockstore --pool /srv/pool pool create --size 100G" in out


def test_bare_command_prints_usage():
    r = run_cli(check_rc=2)
    out = r.stdout.decode()
    assert "usage: blockstore" in out and "lu " in out and "--pool DIR" in out


@pytest.mark.parametrize("shell,path", [("bash", "completions/blockstore"), ("zsh", "completions/_blockstore")])
def test_completion_made_from_the_parser_and_shipped_current(shell, path):
    made = completion(shell)
    with open(os.path.join(SHARE, path)) as f:
        assert f.read() == made, f"share/{path} is stale: run `blockstore completion {shell} > share/{path}`"
    assert run_cli("completion", shell).stdout.decode() == made


def _bash_complete(line: str, env: dict[str, str] | None = None) -> list[str]:
    """What TAB offers at the end of ``line`` in a real bash that sourced the shipped script."""
    script = os.path.join(SHARE, "completions", "blockstore")
    words = line.split(" ")
    prog = (f"source {shlex.quote(script)}; COMP_WORDS=({' '.join(shlex.quote(w) for w in words)}); "
            f"COMP_CWORD={len(words) - 1}; COMP_LINE={shlex.quote(line)}; COMP_POINT=${{#COMP_LINE}}; "
            "_shtab_blockstore; printf '%s\\n' \"${COMPREPLY[@]}\"")
    path = os.path.dirname(os.path.abspath(sys.executable)) + os.pathsep + os.environ["PATH"]
    full = {k: v for k, v in os.environ.items() if k != "BLOCKSTORE_POOL"}
    return sh("bash", "-c", prog, env={**full, "PATH": path, **(env or {})}).stdout.decode().split()


def test_bash_completion_completes_names_from_the_pool_and_paths(tmp_path):
    pool = str(tmp_path / "pool")
    run_cli("pool", "create", "--size", "64M", pool=pool)
    for lu in ("disk0", "disk1", "web"):
        run_cli("lu", "create", lu, "--size", "1M", pool=pool)
    run_cli("lu", "snapshot", "disk0", "monday", pool=pool)
    assert set(_bash_complete(f"blockstore --pool {pool} lu show d")) == {"disk0", "disk1", "disk0@monday"}
    assert set(_bash_complete("blockstore lu rm w", env={"BLOCKSTORE_POOL": pool})) == {"web"}
    assert set(_bash_complete(f"blockstore lu diff --pool {pool} disk0@")) == {"disk0@monday"}
    assert _bash_complete(f"blockstore --pool {pool} lu create d") == []  # a new name: nothing to offer
    (tmp_path / "image.raw").write_bytes(b"x")
    (tmp_path / "mnt").mkdir()
    assert f"{tmp_path}/image.raw" in _bash_complete(f"blockstore --pool {pool} lu import vm {tmp_path}/im")
    assert f"{tmp_path}/mnt" in _bash_complete(f"blockstore --pool {pool} mount {tmp_path}/mn")
    assert f"{tmp_path}/pool" in _bash_complete(f"blockstore --pool {tmp_path}/po")


def test_bash_completion_completes_commands_and_options():
    script = os.path.join(SHARE, "completions", "blockstore")
    sh("bash", "-n", script)
    complete = _bash_complete
    assert "snapshot" in complete("blockstore lu sn")
    assert set(complete("blockstore lu ")) >= {"create", "list", "snapshot", "clone", "du", "export-diff"}
    assert "--mirrored" in complete("blockstore lu create --mi")


def test_man_page_made_from_the_parser_renders_and_is_current():
    made = manpage()
    with open(os.path.join(SHARE, "man", "man1", "blockstore.1")) as f:
        shipped = f.read()

    def body(text: str) -> list[str]:  # the .TH line carries the day it was made
        return [line for line in text.splitlines() if not line.startswith(".TH")]
    assert body(shipped) == body(made), "share/man/man1/blockstore.1 is stale: run `blockstore manpage > ...`"
    for section in ("SYNOPSIS", "EXAMPLES", "ENVIRONMENT", "EXIT STATUS"):
        assert f".SH {section}" in made
    assert "blockstore lu create" in made and "blockstore lu export\\-diff" in made
    r = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z"], input=made.encode(), capture_output=True)
    assert r.returncode == 0 and not r.stderr, r.stderr.decode()


def _units(tmp_path) -> str:
    """The unit templates with the installed path of the command pointed at this venv's."""
    out = tmp_path / "units"
    out.mkdir()
    exe = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "blockstore")
    for name in os.listdir(UNITS):
        with open(os.path.join(UNITS, name)) as f:
            (out / name).write_text(f.read().replace("/usr/local/bin/blockstore", exe))
    return str(out)


def test_systemd_units_verify(tmp_path):
    units = _units(tmp_path)
    assert sorted(os.listdir(units)) == ["blockstore-mount@.service", "blockstore-node@.service"]
    for unit in ("blockstore-mount@lus.service", "blockstore-node@n1.service"):
        shutil.copy(os.path.join(units, unit.split("@")[0] + "@.service"), os.path.join(units, unit))
        r = subprocess.run(["systemd-analyze", "verify", "--man=no", os.path.join(units, unit)],
                           capture_output=True, cwd=units)
        assert r.returncode == 0, r.stderr.decode()
    # the check can fail: a unit whose command is not there is refused
    with open(os.path.join(units, "blockstore-node@n1.service")) as f:
        broken = f.read().replace(os.path.dirname(os.path.abspath(sys.executable)), "/nonexistent")
    bad = os.path.join(units, "blockstore-node@n2.service")
    with open(bad, "w") as f:
        f.write(broken)
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", bad], capture_output=True, cwd=units)
    assert r.returncode != 0 and b"nonexistent" in r.stderr


def test_progress_bar_in_bytes_with_eta_only_when_asked(tmp_path):
    pool = str(tmp_path / "pool")
    run_cli("pool", "create", "--size", "256M", pool=pool)
    src = tmp_path / "img.raw"
    src.write_bytes(os.urandom(8 << 20))
    quiet = run_cli("lu", "import", "a", str(src), pool=pool)  # stderr is a pipe: no bar
    assert quiet.stderr == b""
    shown = run_cli("lu", "import", "b", str(src), "--progress", pool=pool).stderr.decode()
    final = shown.split("\r")[-1]
    assert final.count("\n") == 1 and final.startswith("import b: 100%"), shown
    assert "8.00M/8.00M" in final and "<" in final and "/s]" in final, final  # bytes, elapsed<ETA, rate
    assert run_cli("--progress", "lu", "export", "a", str(tmp_path / "out"), "--no-progress", pool=pool).stderr == b""
    assert run_cli("lu", "export", "b", str(tmp_path / "out2"), "--progress", "-q", pool=pool).stderr == b""


def test_lu_list_hides_image_lus_and_filters_by_kind(tmp_path):
    pool = str(tmp_path / "pool")
    run_cli("pool", "create", "--size", "256M", "--extent-size", "64K", pool=pool)
    img = tmp_path / "rootfs"
    (img / "etc").mkdir(parents=True)
    (img / "etc" / "hostname").write_bytes(b"node1\n")
    (img / "boot.img").write_bytes(os.urandom(100_000))
    run_cli("image", "import", str(img), "--name", "base", pool=pool)
    run_cli("lu", "create", "disk", "--size", "1M", pool=pool)
    run_cli("lu", "snapshot", "disk", "s1", pool=pool)
    run_cli("lu", "clone", "disk@s1", "c1", pool=pool)

    def names(*args: str) -> list[str]:
        return [r["name"] for r in json.loads(run_cli("lu", "list", *args, "--json", pool=pool).stdout)]
    assert names() == ["c1", "disk", "disk@s1"]
    text = run_cli("lu", "list", pool=pool).stdout.decode()
    assert "img." not in text and "2 image LU(s) not shown" in text and "MAPPED" in text
    assert len(names("--kind", "image")) == 2 and all(n.startswith("img.base.") for n in names("--kind", "image"))
    assert names("--kind", "snapshot") == ["disk@s1"]
    assert names("--kind", "clone", "--kind", "snapshot") == ["c1", "disk@s1"]
    assert len(names("--kind", "all")) == 5
    r = run_cli("lu", "list", "--kind", "bogus", pool=pool, check_rc=2)
    assert b"invalid choice" in r.stderr and len(r.stderr.splitlines()) == 1


def test_mypy_is_clean_on_the_package(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mypy", "-p", "blockstore", "--cache-dir", str(tmp_path / "cache")],
                       capture_output=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stdout.decode()[-4000:]


def test_a_wheel_installs_the_command_with_its_man_page_completion_and_units(tmp_path):
    """Build the wheel and install it under a fresh prefix: every subpackage, the C module, and
    the data files where man, bash-completion, zsh and systemd look under that prefix."""
    wheels, prefix = tmp_path / "wheels", tmp_path / "prefix"
    sh(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), ROOT)
    (wheel,) = wheels.iterdir()
    # --ignore-installed: else pip uninstalls the checkout's own (editable) installation first
    sh(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", "--prefix", str(prefix), str(wheel))
    for path in ("share/man/man1/blockstore.1", "share/bash-completion/completions/blockstore",
                 "share/zsh/site-functions/_blockstore", "lib/systemd/system/blockstore-mount@.service",
                 "lib/systemd/system/blockstore-node@.service"):
        assert (prefix / path).is_file(), path
    (site,) = prefix.glob("lib/python3*/site-packages")
    env = dict(os.environ, PYTHONPATH=str(site))
    probe = ("import blockstore, blockstore.cli, blockstore.storage.mirror, blockstore.cluster.node, "
             "blockstore.services.images, blockstore.native; print(blockstore.__file__)")
    out = sh(sys.executable, "-c", probe, env=env, cwd=str(tmp_path)).stdout.decode()
    assert out.startswith(str(site)), out  # the installed copy, not the checkout
    assert b"snapshot" in sh(sys.executable, "-m", "blockstore", "lu", "--help", env=env, cwd=str(tmp_path)).stdout
    # and the environment the tests run in still has its own
    assert os.path.exists(os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "blockstore"))


def test_json_output_has_the_shape_of_the_typed_records(tmp_path):
    """What --json prints is what blockstore/records.py declares: every required key, no
    undeclared one, for status, list, show (mirrored), status of an LU, and du."""
    from blockstore.records import DuRow, DuTotal, LUInfo, LUStatus, PoolStatus
    pool = str(tmp_path / "pool")
    run_cli("pool", "create", "--size", "64M", "--extent-size", "64K", "--mirror-dir", str(tmp_path / "fg1"),
            pool=pool)
    run_cli("lu", "create", "a", "--size", "1M", "--mirrored", pool=pool)
    run_cli("lu", "snapshot", "a", "s", pool=pool)

    def shaped(obj: dict, record: type) -> None:
        keys = set(obj)
        assert record.__required_keys__ <= keys, (record.__name__, record.__required_keys__ - keys)
        assert keys <= record.__required_keys__ | record.__optional_keys__, (record.__name__, keys)
    shaped(json.loads(run_cli("pool", "status", "--json", pool=pool).stdout), PoolStatus)
    for row in json.loads(run_cli("lu", "list", "--json", pool=pool).stdout):
        shaped(row, LUInfo)
    shown = json.loads(run_cli("lu", "show", "a", "--json", pool=pool).stdout)
    shaped(shown, LUInfo)
    assert set(shown["mirror"]) == {"state", "missing_copy", "dirty_extents"}
    shaped(json.loads(run_cli("lu", "status", "a", "--json", pool=pool).stdout), LUStatus)
    du = json.loads(run_cli("lu", "du", "--json", pool=pool).stdout)
    for row in du["lus"]:
        shaped(row, DuRow)
    shaped(du["total"], DuTotal)
