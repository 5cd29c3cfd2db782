"""The cluster on a three-member etcd, one member in each node's network namespace (test_serving's
``Nodes``, bench/etcd_server.py): a node cut off with its member has no quorum, stops writing within its
lease, and its LUs move to the majority, which serves them; members lost one at a time, then a
quorum's worth, then brought back. Clients are real processes writing numbered, checksummed
blocks through the nodes' mounts; what is checked is read from the pool."""
from __future__ import annotations

import errno
import os
import signal
import time

from block_client import B, block
from test_serving import BLOCKS, _verify_blocks, nodes  # noqa: F401  (the fixture)

INTERVAL = 0.5  # etcd's leases are whole seconds, 2 at least: a node's lease outlasts 3 intervals


def _write(path: str, first: int, lu: str = "a") -> None:
    """Blocks ``first`` .. ``first + BLOCKS - 1`` into slots 0 .. BLOCKS - 1 of ``path``, fsynced."""
    fd = os.open(path, os.O_WRONLY)
    try:
        for i in range(BLOCKS):
            os.pwrite(fd, block(first + i, lu), i * B)
        os.fsync(fd)
    finally:
        os.close(fd)


def _writes(path: str) -> int | None:
    """The errno a one-block write and fsync to ``path`` gets now (None: it succeeded)."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as e:
        return e.errno
    try:
        os.pwrite(fd, block(0, "a"), 0)
        os.fsync(fd)
        return None
    except OSError as e:
        return e.errno
    finally:
        os.close(fd)


def test_a_node_cut_off_with_its_member_stops_and_its_lus_move_to_the_majority(nodes):
    c = nodes(etcd_members=3, interval=INTERVAL)
    for n in ("n1", "n2", "n3"):
        c.start(n)
    c.up(["n1", "n2", "n3"], timeout=30)
    c.cli("lu", "create", "a", "--size", "4M", "--mirrored")
    c.cli("lu", "assign", "a", "--node", "n1")
    _write(f"{c.mounts['n1']}/a", 0)
    epoch = c.owner("a")["epoch"]
    c.net.cut("n1")
    try:
        now = c.wait(lambda: (o := c.owner("a")) and o["epoch"] > epoch and o, timeout=30)
        assert now["node"] in ("n2", "n3")
        _write(f"{c.mounts[now['node']]}/a", 1000)      # the majority serves the LU
        assert _writes(f"{c.mounts['n1']}/a") is not None  # the cut-off node writes nothing more
        st = c.status()
        assert st["store"]["health"] == "ok" and st["primary"] in ("n2", "n3")
        assert {n["name"]: n["state"] for n in st["nodes"]}["n1"] == "down"
    finally:
        c.net.heal("n1")
    _verify_blocks(c.pool, "a", [1000 + i for i in range(BLOCKS)])
    c.etcd.wait_healthy([0, 1, 2])  # the member rejoins etcd
    c.start("n1")                    # and the node (fenced: its processes ended) the cluster
    c.up(["n1", "n2", "n3"], timeout=30)
    assert c.owner("a") == now


def test_members_lost_one_then_two_then_one_back(nodes):
    """A paused member and a killed one change nothing (no primary moves, writes go on); with two
    of three gone no write is taken anywhere and ``cluster status`` says why; one back, writes
    resume with the same primary and owner."""
    c = nodes(etcd_members=3, interval=INTERVAL)
    for n in ("n1", "n2"):
        c.start(n)
    c.up(["n1", "n2"], timeout=30)
    c.cli("lu", "create", "a", "--size", "4M", "--mirrored")
    c.cli("lu", "assign", "a", "--node", "n1")
    path = f"{c.mounts['n1']}/a"
    _write(path, 0)
    before = c.status()
    owner = c.owner("a")
    c.etcd.signal(2, signal.SIGSTOP)
    try:
        time.sleep(4 * INTERVAL)
        _write(path, 100)
    finally:
        c.etcd.signal(2, signal.SIGCONT)
    c.etcd.kill(2)
    time.sleep(4 * INTERVAL)
    _write(path, 200)
    st = c.status()
    assert (st["state"], st["primary"], st["epoch"]) == ("OK", before["primary"], before["epoch"])
    c.etcd.kill(1)                   # no quorum: the node cannot renew its lease, so stops writing
    assert c.wait(lambda: _writes(path), timeout=15) == errno.ESTALE
    r = c.cli("cluster", "status", check=False)
    assert r.returncode == 4 and b"unavailable" in r.stdout, r.stdout
    c.etcd.start(1)                  # quorum again: writes resume, nothing moved
    c.wait(lambda: _writes(path) is None, timeout=30)
    _write(path, 300)
    c.up(["n1", "n2"], timeout=30)
    assert c.owner("a") == owner and c.status()["epoch"] == before["epoch"]
    _verify_blocks(c.pool, "a", [300 + i for i in range(BLOCKS)])

