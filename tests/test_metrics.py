"""What operators watch: a mount's and a node's Prometheus endpoint (--metrics), scraped while
fio runs through the mount, parsed by prometheus_client's own parser."""
from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import run_cli


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def _val(samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.mark.parametrize("direct", [True, False])
def test_a_mount_shows_its_requests_while_fio_runs(tmp_path, direct):
    pool = str(tmp_path / "pool")
    run_cli("pool", "create", "--size", "256M", "--mirror-dir", str(tmp_path / "fg1"), pool=pool)
    run_cli("lu", "create", "a", "--size", "64M", "--mirrored", pool=pool)
    run_cli("lu", "create", "b", "--size", "16M", pool=pool)
    port = _port()
    mp = str(tmp_path / "mnt")
    os.mkdir(mp)
    run_cli("mount", mp, "--metrics", f"127.0.0.1:{port}", *([] if direct else ["--no-direct"]), pool=pool)
    try:
        fio = subprocess.Popen(["fio", "--name=m", f"--filename={mp}/a", "--rw=randrw", "--bs=4k", "--size=32M",
                                "--time_based", "--runtime=4", "--ioengine=psync", "--direct=1"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.5)
        first = _scrape(port)
        time.sleep(1.5)
        second = _scrape(port)
        assert fio.wait(60) == 0, fio.stderr.read().decode() if fio.stderr else ""
        with open(f"{mp}/b", "rb") as f:
            f.read(1 << 20)
        last = _scrape(port)
    finally:
        run_cli("umount", mp, pool=pool, check_rc=None)
    for op in ("read", "write"):
        a, b = (_val(s, "blockstore_lu_requests_total", lu="a", op=op) for s in (first, second))
        assert 0 < a < b, (op, a, b)  # counted as they happen
        n = _val(last, "blockstore_lu_requests_total", lu="a", op=op)
        assert _val(last, "blockstore_lu_request_seconds_count", lu="a", op=op) == n
        assert _val(last, "blockstore_lu_request_seconds_bucket", lu="a", op=op, le="+Inf") == n
        assert _val(last, "blockstore_lu_bytes_total", lu="a", op=op) == n * 4096
    assert _val(last, "blockstore_lu_bytes_total", lu="b", op="read") == 1 << 20
    assert _val(last, "blockstore_pool_allocated_bytes") > 0
    assert _val(last, "blockstore_pool_provisioned_bytes") == 80 << 20
    assert _val(last, "blockstore_failure_group_state", group="1", state="ok") == 1
    assert _val(last, "blockstore_failure_group_dirty_extents", group="1") == 0


def test_a_node_shows_the_cluster(tmp_path):
    pool = str(tmp_path / "pool")
    run_cli("pool", "create", "--size", "64M", pool=pool)
    run_cli("cluster", "create", "c", "--interval", "0.2", pool=pool)
    port = _port()
    run_cli("node", "start", "n1", "--metrics", f"127.0.0.1:{port}", pool=pool)
    try:
        deadline = time.monotonic() + 30
        while True:
            s = _scrape(port)
            if ("blockstore_cluster_primary", (("node", "n1"),)) in s or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert _val(s, "blockstore_cluster_primary", node="n1") == 1
        assert _val(s, "blockstore_cluster_epoch") >= 1
        assert _val(s, "blockstore_cluster_node_state", node="n1", state="up") == 1
        assert _val(s, "blockstore_pool_capacity_bytes") == 64 << 20
    finally:
        run_cli("node", "stop", "n1", pool=pool, check_rc=None)


def test_a_bad_metrics_address_is_refused_before_anything_starts(tmp_path):
    pool = str(tmp_path / "pool")
    run_cli("pool", "create", "--size", "64M", pool=pool)
    run_cli("cluster", "create", "c", pool=pool)
    r = run_cli("node", "start", "n1", "--metrics", "nowhere", pool=pool, check_rc=None)
    assert r.returncode == 1 and "HOST:PORT" in r.stderr.decode(), r.stderr.decode()
    os.mkdir(tmp_path / "mnt")
    r = run_cli("mount", str(tmp_path / "mnt"), "--metrics", "x:99999", pool=pool, check_rc=None)
    assert r.returncode == 1 and "HOST:PORT" in r.stderr.decode(), r.stderr.decode()
    assert not os.path.ismount(tmp_path / "mnt")
