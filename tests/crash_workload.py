"""The workload of the crash test, run as a child process and replayed by the parent.

Iteration ``it`` first removes the clones and snapshots of earlier iterations, then runs rounds
forever (after a line "start"): each round writes (or discards) distinct 4 KiB blocks of every writable LU, flushes,
sometimes takes a snapshot, clones one, or removes one, and then prints the round number. The
actions depend only on (seed, it, round), so the parent can compute every state the child
reached. ``python crash_workload.py POOL SEED IT``.
"""
from __future__ import annotations

import random
import sys

BLOCK = 4096
LU_SIZE = 4 << 20
BLOCKS = LU_SIZE // BLOCK
BASE = ("a", "b")


def writable(it: int, r: int) -> list[str]:
    return list(BASE) + ([f"c{it}"] if r > 2 else [])


def round_writes(seed: int, it: int, r: int, name: str) -> list[tuple[int, bytes | None]]:
    """(block, data) pairs on distinct blocks; data None is a discard. Runs of blocks cross extents."""
    rng = random.Random(f"{seed}/{it}/{r}/{name}")
    out: list[tuple[int, bytes | None]] = []
    used: set[int] = set()
    for _ in range(rng.randint(4, 12)):
        start = rng.randrange(BLOCKS - 40)
        run = rng.choice([1, 1, 2, 17, 40])
        blocks = [b for b in range(start, start + run) if b not in used]
        if len(blocks) != run:
            continue
        used.update(blocks)
        kind = rng.random()
        for b in blocks:
            data = None if kind < 0.1 else bytes(BLOCK) if kind < 0.2 else rng.randbytes(BLOCK)
            out.append((b, data))
    return out


def round_ops(it: int, r: int) -> list[tuple[str, ...]]:
    """Metadata operations after the round's flush."""
    ops: list[tuple[str, ...]] = []
    if r % 3 == 1:
        ops.append(("snapshot", "a", f"i{it}r{r}"))
    if r == 2:
        ops.append(("clone", f"a@i{it}r1", f"c{it}"))
    if r % 3 == 1 and r - 6 > 1:  # keep a few snapshots; round 1's has the clone
        ops.append(("remove", f"a@i{it}r{r - 6}"))
    return ops


def main() -> None:
    from blockstore import NotFound
    from blockstore.pool import Pool

    pool_dir, seed, it = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    pool = Pool.open(pool_dir)
    old = sorted(pool.list_lus(), key=lambda rec: rec["kind"] != "clone")  # clones first
    for rec in old:
        if rec["name"] not in BASE:
            try:
                pool.remove(rec["name"])
            except NotFound:
                pass
    sys.stdout.write("start\n")  # the earlier iteration's clones and snapshots are gone
    sys.stdout.flush()
    handles = {}
    r = 0
    while True:
        for name in writable(it, r):
            if name not in handles:
                handles[name] = pool.open_lu(name)
            lu = handles[name]
            for block, data in round_writes(seed, it, r, name):
                if data is None:
                    lu.discard(block * BLOCK, BLOCK)
                else:
                    lu.write(block * BLOCK, data)
        pool.flush()
        for op in round_ops(it, r):
            if op[0] == "snapshot":
                pool.snapshot(op[1], op[2])
            elif op[0] == "clone":
                pool.clone(op[1], op[2])
            else:
                pool.remove(op[1])
        sys.stdout.write(f"{r}\n")
        sys.stdout.flush()
        r += 1


if __name__ == "__main__":
    main()
