"""The public Python API (blockstore.Pool, its LU handles): the surface docs/api.md documents is
exactly what help() shows, handles are plain objects as well as context managers, and an
embedding program's first mistakes get errors that say what to do."""
from __future__ import annotations

import io
import os
import pydoc
import re
import subprocess
import sys

import pytest

import blockstore
from blockstore import Busy, InvalidArgument, NotFound, Pool

DOC = os.path.join(os.path.dirname(__file__), "..", "docs", "api.md")


def _documented(section: str) -> set[str]:
    """The members docs/api.md lists under ``### `section```: methods as `name(`, attributes
    after the word "attributes"."""
    text = open(DOC).read()
    part = text.split(f"### `{section}`", 1)[1].split("\n### ", 1)[0]
    names = set(re.findall(r"`(?:Pool\.)?([a-z_]+)\(", part))
    for line in re.findall(r"attributes ([^\n]*)", part):
        names |= set(re.findall(r"`([a-z_]+)`", line))
    return names


def _shown(cls: type) -> set[str]:
    """Names pydoc's help() lists for ``cls`` (methods, properties, class methods)."""
    text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
    return {m for m in re.findall(r"^ \|  ([a-z][a-z_]*)(?:\(| = |\n)", text + "\n", re.M)}


def test_help_shows_exactly_the_documented_surface():
    for cls, section in ((Pool, "Pool"), (blockstore.LU, "LU")):
        shown = {n for n in dir(cls) if not n.startswith("_")}
        documented = _documented(section)
        assert shown == documented, (section, sorted(shown - documented), sorted(documented - shown))
        assert _shown(cls) == shown
        text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
        assert "Transaction" not in text and "lmdb" not in text


def test_handles_are_plain_objects_and_context_managers(tmp_path):
    with Pool.open(str(tmp_path / "p"), create=True, size="64M") as pool:
        lu = pool.create_lu("a", "8M")
        assert lu.closed  # not open until used
        pool.remove("a")  # so nothing this process holds stands in the way
        lu = pool.create_lu("a", "8M")
        lu.write(0, b"hello")
        assert lu.read(0, 5) == b"hello" and not lu.closed
        with pytest.raises(Busy):
            pool.remove("a")  # it is written through an open handle
        lu.close()
        lu.close()  # idempotent
        assert lu.closed
        with pool.lu("a") as h:
            assert h.read(0, 5) == b"hello"
        h2 = pool.lu("a", writable=False)
        assert h2.read(0, 5) == b"hello" and h2.readonly
        h2.close()
        pool.snapshot("a", "s")
        snap = pool.lu("a@s")
        assert snap.readonly and snap.size == 8 << 20
        snap.close()
        with pytest.raises(NotFound):
            pool.lu("nope")
        pool.rollback("a", "a@s")  # the NAME@SNAP form too
        assert sorted(pool.remove("a", recursive=True)) == ["a", "a@s"]


def test_a_handle_of_a_closed_pool_says_so(tmp_path):
    pool = Pool.create(str(tmp_path / "p"), "64M")
    used, unused = pool.create_lu("a", "1M"), pool.create_lu("b", "1M")
    used.write(0, b"x")
    pool.close()
    assert used.closed and unused.closed
    for h in (used, unused):
        with pytest.raises(InvalidArgument, match="the pool is closed"):
            h.read(0, 1)


def test_a_str_is_refused_with_a_typeerror_that_says_to_pass_bytes(tmp_path):
    with Pool.create(str(tmp_path / "p"), "64M") as pool:
        with pool.create_lu("a", "1M") as lu:
            with pytest.raises(TypeError, match=r"bytes, not str.*encode"):
                lu.write(0, "text")
            assert lu.read(0, 4) == bytes(4)


def test_a_pool_open_twice_in_one_process_is_busy_not_corrupt(tmp_path):
    with Pool.create(str(tmp_path / "p"), "32M"):
        with pytest.raises(Busy, match="already open in this process"):
            Pool.open(str(tmp_path / "p"))


def test_open_with_create_makes_the_pool_once(tmp_path):
    path = str(tmp_path / "p")
    with pytest.raises(InvalidArgument, match="give a size"):
        Pool.open(path, create=True)
    assert not os.path.exists(os.path.join(path, "meta"))
    with Pool.open(path, create=True, size="32M") as pool:
        pool.create_lu("a", "1M")
    with Pool.open(path, create=True, size="32M") as pool:  # opened, not made again
        assert [r["name"] for r in pool.list_lus()] == ["a"]
    with Pool(path, readonly=True) as pool:  # Pool(path) opens, as it always did
        assert pool.lu_info("a")["size"] == 1 << 20
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "f").write_text("x")
    with pytest.raises(blockstore.AlreadyExists):
        Pool.open(str(tmp_path / "other"), create=True, size="32M")


def test_bytes_in_and_out_through_the_api(tmp_path):
    raw = tmp_path / "img"
    with open(raw, "wb") as f:
        f.truncate(4 << 20)
        f.seek(1 << 20)
        f.write(b"x" * 4096)
    with Pool.create(str(tmp_path / "p"), "64M") as pool:
        info = pool.import_file("a", str(raw))
        assert info["size"] == 4 << 20
        pool.import_file("b", io.BytesIO(b"y" * 1000))
        assert pool.lu_info("b")["size"] == 1024
        out = io.BytesIO()
        pool.export_file("b", out)
        assert out.getvalue() == b"y" * 1000 + bytes(24)
        pool.export_file("a", str(tmp_path / "back"))
        assert (tmp_path / "back").read_bytes() == raw.read_bytes()
        pool.snapshot("a", "s1")
        with pool.lu("a") as lu:
            lu.write(0, b"z" * 4096)
        assert pool.diff("a@s1", "a")["changed"] == pool.extent_size
        stream = io.BytesIO()
        pool.export_diff("a", "s1", stream)
        with Pool.create(str(tmp_path / "q"), "64M") as other:
            other.import_file("a", str(raw))
            other.snapshot("a", "s1")
            stream.seek(0)
            other.import_diff("a", stream)
            with other.lu("a", writable=False) as lu:
                assert lu.read(0, 4096) == b"z" * 4096
        assert pool.check()["clean"]


def test_lu_status_and_show_name_a_python_holder(tmp_path):
    """One answer for every kind of holder: a Python program holding an LU (no control channel)
    is named by `lu status` and `lu show` alike, with its pid and command."""
    path = str(tmp_path / "p")
    with Pool.create(path, "64M") as pool:
        pool.create_lu("a", "1M")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, blockstore\n"
        f"p = blockstore.Pool.open({path!r})\n"
        "lu = p.lu('a'); lu.write(0, b'x')\n"
        "print('held', flush=True); sys.stdin.read()\n")], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"held\n"
        import json
        for cmd in ("status", "show"):
            r = subprocess.run([sys.executable, "-m", "blockstore", "--pool", path, "--json", "lu", cmd, "a"],
                               capture_output=True, timeout=60)
            assert r.returncode == 0, r.stderr.decode()
            h = json.loads(r.stdout)["holder"]
            assert h["pid"] == holder.pid and "python" in h["command"], (cmd, h)
    finally:
        holder.stdin.close()
        holder.wait(30)
    with Pool.open(path) as pool:
        assert pool.lu_info("a")["holder"] is None


@pytest.mark.parametrize("doc", ["README.md", "docs/api.md"])
def test_the_documented_examples_run(tmp_path, doc):
    text = open(os.path.join(os.path.dirname(__file__), "..", doc)).read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks
    for code in blocks:
        exec(compile(code.replace("/tmp/pool", str(tmp_path / "pool")), doc, "exec"), {})
