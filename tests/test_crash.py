"""SIGKILL at random instants during writes, flushes, snapshots and clones; after each kill the
pool reopens clean and every flushed write reads back byte for byte."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

import crash_workload as W
from blockstore.pool import Pool
from blockstore.check import check
from blockstore.scrub import verify as mirror_verify
from conftest import SLOW

ITERATIONS = 200 if SLOW else 16
HERE = os.path.dirname(__file__)


def replay(seed: int, it: int, model: dict[str, bytearray], upto: int) -> tuple[dict[str, bytearray], dict]:
    """Apply rounds 0..upto to a copy of ``model``; return it and the last round's written blocks."""
    m = {k: bytearray(v) for k, v in model.items()}
    for name in list(m):
        if name not in W.BASE:
            del m[name]
    last: dict[str, dict[int, bytes]] = {}
    for r in range(upto + 1):
        last = {}
        for name in W.writable(it, r):
            last[name] = {}
            for block, data in W.round_writes(seed, it, r, name):
                blob = bytes(W.BLOCK) if data is None else data
                m[name][block * W.BLOCK:(block + 1) * W.BLOCK] = blob
                last[name][block] = blob
        for op in W.round_ops(it, r):
            if op[0] == "snapshot":
                m[f"{op[1]}@{op[2]}"] = bytearray(m[op[1]])
            elif op[0] == "clone":
                m[op[2]] = bytearray(m[op[1]])
            else:
                m.pop(op[1], None)
    return m, last


def verify(pool: Pool, seed: int, it: int, model: dict[str, bytearray], acked: int) -> dict[str, bytearray]:
    """Check the pool against the states the child may have reached; return what it holds.

    ``done`` is the state after the last acknowledged round, ``ahead`` after the round the child
    was in when killed. That round's writes may each have landed or not (per 4 KiB block); its
    snapshot, clone and remove come after its flush, so once any of them is visible, every LU
    holds exactly ``ahead``.
    """
    done, _ = replay(seed, it, model, acked)
    ahead, inflight = replay(seed, it, model, acked + 1)
    present = {r["name"] for r in pool.list_lus()}
    actual = {}
    for name in present:
        with pool.lu(name, writable=False) as lu:
            actual[name] = bytearray(lu.read(0, lu.size))
    created = (set(ahead) - set(done)) & present
    removed = (set(done) - set(ahead)) - present
    flushed = bool(created or removed)
    for name in present:
        assert name in done or name in ahead, f"unexpected LU {name}"
        if name not in ahead:  # removed by the in-flight round, not yet gone
            assert actual[name] == done[name], f"{name} changed before its removal"
        elif name not in done or flushed:
            assert actual[name] == ahead[name], f"{name} is not the state of the in-flight round's flush"
        elif actual[name] != done[name]:
            # Only blocks the in-flight round wrote may differ, and only to that round's data.
            want, got = done[name], actual[name]
            assert len(got) == len(want), name
            for block in range(len(want) // W.BLOCK):
                sl = slice(block * W.BLOCK, (block + 1) * W.BLOCK)
                if got[sl] != want[sl]:
                    assert got[sl] == inflight.get(name, {}).get(block), f"{name} block {block} corrupt"
    for name in set(done) - present:
        assert name not in ahead, f"{name} lost"
    return actual


def check_mirror(pool: Pool, seed: int, it: int, model: dict[str, bytearray], acked: int) -> None:
    """The two copies agree on every extent, except where the in-flight round wrote (one C call
    writes both, but SIGKILL may fall between its two pwrites); verify --repair settles those."""
    _, inflight = replay(seed, it, model, acked + 1)
    E = pool.extent_size
    for rec in pool.list_lus():
        name = rec["name"]
        with pool.lu(name, writable=False) as lu:
            phys = lu.extent_map.phys_range(0, len(lu.extent_map) - 1)
        touched = {phys[b * W.BLOCK // E] for b in inflight.get(name, {})}
        rep = mirror_verify(pool, name, repair=True)
        assert set(rep["mismatched"]) <= touched, (name, rep["mismatched"], touched)
        assert mirror_verify(pool, name)["mismatched"] == []


@pytest.mark.parametrize("seed,mirrored", [(1, False), (2, True)])
def test_sigkill_at_random_instants(tmp_path, seed, mirrored):
    pool_dir = str(tmp_path / "pool")
    with Pool.create(pool_dir, "96M", extent_size="64K", mirror_dir=str(tmp_path / "fg1") if mirrored else None) as p:
        for name in W.BASE:
            p.create_lu(name, W.LU_SIZE, mirrored=mirrored).close()
    model = {name: bytearray(W.LU_SIZE) for name in W.BASE}
    rng = random.Random(seed)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    kills_mid_round = 0
    for it in range(ITERATIONS // 2 if mirrored else ITERATIONS):
        child = subprocess.Popen([sys.executable, os.path.join(HERE, "crash_workload.py"), pool_dir, str(seed), str(it)],
                                 stdout=subprocess.PIPE, env=env)
        assert child.stdout is not None and child.stdout.readline() == b"start\n", "the workload died by itself"
        time.sleep(rng.random() * 1.2)  # into the rounds (a busy machine starts the child slowly)
        assert child.poll() is None, "the workload died by itself"
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate()
        rounds = [int(x) for x in out.split()]
        acked = rounds[-1] if rounds else -1
        kills_mid_round += 1
        with Pool.open(pool_dir) as p:
            rep = check(p)
            assert rep["clean"], rep
            if mirrored:
                check_mirror(p, seed, it, model, acked)
            model = verify(p, seed, it, model, acked)
    assert kills_mid_round == (ITERATIONS // 2 if mirrored else ITERATIONS)
