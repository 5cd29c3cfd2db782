"""The README as a user reads it: the two make commands at the top, the quick start run line by
line exactly as written, and no link to a file that is not in the repository."""
from __future__ import annotations

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def _blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, re.S)


def test_readme_starts_with_the_two_make_commands():
    first = _blocks(_readme())[0]
    assert [line.split()[:2] for line in first.strip().splitlines()] == [["make", "demo"], ["make", "test"]]


def test_quick_start_runs_as_written(tmp_path):
    text = _readme()
    section = text[text.index("## Quick start"):]
    script = _blocks(section)[0]
    assert "blockstore mount" in script and "mkfs.ext4" in script and "lu clone" in script
    env = {k: v for k, v in os.environ.items() if k != "BLOCKSTORE_POOL"}
    env.update(HOME=str(tmp_path), PATH=os.path.dirname(os.path.abspath(sys.executable)) + os.pathsep + env.get("PATH", ""))
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                       timeout=300)
    try:
        assert r.returncode == 0, (r.stdout.decode()[-3000:], r.stderr.decode()[-3000:])
        out = r.stdout.decode()
        assert "created LU disk0 of 4 GiB" in out and "cloned disk0@before as test1" in out
        assert "TOTAL" in out  # lu du
        assert not os.path.exists(tmp_path / "bs-pool") and not os.path.exists(tmp_path / "lus")
    finally:
        mp = str(tmp_path / "lus")
        if os.path.ismount(mp):
            subprocess.run(["fusermount3", "-uz", mp])


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
