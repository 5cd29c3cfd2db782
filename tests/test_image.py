"""``lu import`` / ``lu export`` of a real sparse raw image made and written by qemu's own tools."""
from __future__ import annotations

import os
import subprocess

from conftest import cli_json, run_cli


def test_import_export_roundtrip_with_qemu(tmp_path):
    img, out, pool = str(tmp_path / "disk.raw"), str(tmp_path / "out.raw"), str(tmp_path / "pool")
    subprocess.run(["qemu-img", "create", "-f", "raw", img, "64M"], check=True, capture_output=True)
    subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0xab 1M 2M", "-c", "write -P 0xcd 40M 64k",
                    "-c", "write -P 0x00 50M 1M", img], check=True, capture_output=True)
    with open(img, "r+b") as f:  # some incompressible bytes at an odd offset
        f.seek(10 * (1 << 20) + 12345)
        f.write(os.urandom(300_000))
    run_cli("pool", "create", "--size", "256M", "--extent-size", "64K", pool=pool)
    run_cli("lu", "import", "disk", img, pool=pool)
    info = cli_json("lu", "show", "disk", pool=pool)
    assert info["size"] == 64 << 20
    # 2 MiB + 64 KiB + ~300 KB over 5 extents; the written zeros at 50M and the holes cost nothing
    assert info["allocated"] == (32 + 1 + 5) * (64 << 10)
    run_cli("lu", "export", "disk", out, pool=pool)
    with open(img, "rb") as a, open(out, "rb") as b:
        assert a.read() == b.read()
    r = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", img, out], capture_output=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert os.stat(out).st_blocks * 512 < 4 << 20  # the export stayed sparse
    r = subprocess.run(["qemu-img", "info", "--output=json", out], capture_output=True, check=True)
    assert b'"virtual-size": 67108864' in r.stdout


def test_import_of_odd_sized_file_rounds_to_sector(tmp_path):
    src, pool = str(tmp_path / "f"), str(tmp_path / "pool")
    with open(src, "wb") as f:
        f.write(b"z" * 1000)
    run_cli("pool", "create", "--size", "16M", "--extent-size", "64K", pool=pool)
    run_cli("lu", "import", "f", src, pool=pool)
    assert cli_json("lu", "show", "f", pool=pool)["size"] == 1024
    assert run_cli("lu", "read", "f", pool=pool).stdout == b"z" * 1000 + bytes(24)
