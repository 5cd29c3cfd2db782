"""Random sequences of every LU operation against a model of plain bytearrays.

One pool with a second failure group holds mirrored and unmirrored LUs side by side. Every step
compares every LU's and snapshot's full contents with the model, and ``pool check`` must be
clean after each step. Between steps, bytes are flipped in either copy of mirrored data (never
the same block in both): scrub must blame exactly the flipped copies, repair must fix them from
the other copy, and nothing else may change what any LU or snapshot reads. The second copy's file
also goes away and comes back: a second process of the pool (pool_peer.py) opens it meanwhile,
must see the copy failed, must be refused a resync of what this process holds (changing
nothing), and reads every LU this process does not hold as the model has it.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from blockstore import BlockstoreError, Busy, PoolFull
from blockstore.pool import Pool
from blockstore.check import check
from blockstore import lu as lu_module
from blockstore.extents import UNMAPPED
from blockstore.scrub import scrub, verify

from conftest import SLOW

E = 64 << 10
BLOCK = 4096
SIZES = st.sampled_from([E, 3 * E, 5 * E + 512, 8 * E])
NAMES = st.sampled_from(["a", "b", "c", "d", "e"])
SNAPS = st.sampled_from(["s1", "s2", "s3"])


def payload(draw_bytes: bytes, zeros: bool) -> bytes:
    return bytes(len(draw_bytes)) if zeros else draw_bytes


class PoolModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="bs-model-")
        self.files = [self.dir + "/p/fg0/data", self.dir + "/fg1/data"]
        self.pool = Pool.create(self.dir + "/p", 160 * E, extent_size=E, mirror_dir=self.dir + "/fg1")
        self.model: dict[str, bytearray] = {}
        self.parent: dict[str, str | None] = {}
        self.kind: dict[str, str] = {}
        self.mirrored: dict[str, bool] = {}
        #: what a service made an LU for: "image" (sealed read-only) or "paging"
        self.role: dict[str, str | None] = {}
        self.open: dict[str, object] = {}
        #: (copy, physical extent, byte in extent) flipped and maybe not yet repaired
        self.flips: set[tuple[int, int, int]] = set()
        self.steps = 0
        #: copy 1's file is away (the pool runs degraded once it notices)
        self.away = False
        self.peer = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "pool_peer.py")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def teardown(self) -> None:
        try:
            self.peer.stdin.close()
            self.peer.wait(timeout=30)
            self.pool.close()
        finally:
            lu_module.FILLER = True
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers -----------------------------------------------------------------------------

    def handle(self, name: str):
        if name not in self.open:
            self.open[name] = self.pool.open_lu(name)
        return self.open[name]

    def close(self, name: str) -> None:
        h = self.open.pop(name, None)
        if h is not None:
            h.close()

    def lus(self) -> list[str]:
        """The LUs that take writes (not snapshots, not sealed images)."""
        return sorted(n for n, k in self.kind.items() if k != "snapshot" and self.role.get(n) != "image")

    def changeable(self, name: str) -> bool:
        """Whether an operation that changes ``name`` may succeed: every other is refused."""
        return self.kind[name] != "snapshot" and self.role.get(name) != "image"

    def refused(self, op) -> None:
        """``op`` must be refused with a one-line error and change nothing at all."""
        for name in list(self.open):
            self.close(name)
        before = self.pool.list_lus()
        try:
            op()
        except BlockstoreError as e:
            assert "\n" not in str(e)
        else:
            raise AssertionError("an operation on a target that cannot take it was not refused")
        assert self.pool.list_lus() == before
        self.checks_out()

    def checks_out(self) -> None:
        """``pool check`` is clean; while copy 1 is away, degraded (5) and nothing else."""
        rep = check(self.pool)
        if self.away:
            assert rep["code"] == 5 and not rep["errors"] and not rep["leaks"], rep
        else:
            assert rep["clean"], rep

    def add(self, name: str, model: bytearray, kind: str, parent: str | None, mirrored: bool,
            role: str | None = None) -> None:
        self.model[name] = model
        self.kind[name], self.parent[name], self.mirrored[name], self.role[name] = kind, parent, mirrored, role

    def forget(self, name: str) -> None:
        del self.model[name], self.kind[name], self.parent[name], self.mirrored[name], self.role[name]

    def family(self, name: str) -> list[str]:
        return [name] + [n for n, k in self.kind.items() if k == "snapshot" and self.parent[n] == name]

    def phys(self, name: str):
        """The physical extent of each logical extent of ``name`` (UNMAPPED for holes)."""
        h = self.open.get(name)
        if h is not None:
            return h.extent_map.phys_range(0, len(h.extent_map) - 1)
        with self.pool.lu(name, writable=False) as r:
            return r.extent_map.phys_range(0, len(r.extent_map) - 1)

    def ask(self, **req) -> dict:
        """One request to the second process (pool_peer.py)."""
        self.peer.stdin.write(json.dumps(req) + "\n")
        self.peer.stdin.flush()
        return json.loads(self.peer.stdout.readline())

    def byte(self, copy: int, pos: int) -> int:
        with open(self.files[copy], "rb") as f:
            f.seek(pos)
            return f.read(1)[0]

    def live_flips(self) -> set[tuple[int, int, int]]:
        """Flips still in a file: in mirrored data (it has checksums), where the copy differs from
        the other (a write heals a block; a freed extent is punched in both)."""
        self.pool.flush()
        self.flips = {(c, e, o) for c, e, o in self.flips
                      if self.pool.sums.load(e) is not None and self.byte(c, e * E + o) != self.byte(1 - c, e * E + o)}
        return self.flips

    # -- rules -------------------------------------------------------------------------------

    @initialize(mirrored=st.booleans(), filler=st.sampled_from([False, False, True]))
    def start(self, mirrored, filler) -> None:
        # Mostly without the filler thread, so deferred copies stay held (lu.py) across steps.
        lu_module.FILLER = filler
        self.pool.create_lu("a", 4 * E, mirrored=mirrored).close()
        self.add("a", bytearray(4 * E), "lu", None, mirrored)

    @rule(name=NAMES, size=SIZES, mirrored=st.booleans())
    def create(self, name, size, mirrored):
        if name in self.model:
            return
        self.pool.create_lu(name, size, mirrored=mirrored).close()
        self.add(name, bytearray(size), "lu", None, mirrored)

    @rule(name=NAMES, size=SIZES, seed=st.integers(0, 1 << 32), role=st.sampled_from(["image", "paging"]))
    def service_lu(self, name, size, seed, role):
        """An LU as the services make them: an image's file, written once and sealed; a paging
        file, mirrored and named for its partition (services/images.py, services/paging.py)."""
        if name in self.model:
            return
        mirrored = role == "paging"
        data = random.Random(seed).randbytes(size // 2)
        with self.pool.create_lu(name, size, mirrored=mirrored) as lu:
            lu.write(0, data)
        if role == "image":
            self.pool.update_lu(name, role="image", readonly=True, image="img", path="/f")
        else:
            self.pool.update_lu(name, role="paging", owner="lpar1")
        self.add(name, bytearray(data + bytes(size - len(data))), "lu", None, mirrored, role)

    @precondition(lambda self: self.lus())
    @rule(data=st.data(), zeros=st.booleans())
    def write(self, data, zeros):
        name = data.draw(st.sampled_from(self.lus()))
        size = len(self.model[name])
        off = data.draw(st.integers(0, size - 1))
        blob = data.draw(st.binary(min_size=1, max_size=min(3 * E, size - off)))
        blob = payload(blob, zeros)
        try:
            self.handle(name).write(off, blob)
        except PoolFull:
            return
        self.model[name][off:off + len(blob)] = blob

    @precondition(lambda self: self.lus())
    @rule(data=st.data(), zeros=st.booleans())
    def write_blocks(self, data, zeros):
        """Whole 4 KiB blocks at a block boundary: into a shared extent this defers the copy
        (lu.py), so the steps after it meet extents still being copied. Mostly into an LU that
        shares extents (a snapshot's parent, a clone, a clone's source)."""
        sharing = [n for n in self.lus() if len(self.family(n)) > 1 or self.parent[n]
                   or any(self.parent[m] == n for m in self.model)]
        name = data.draw(st.sampled_from(sharing if sharing and data.draw(st.booleans()) else self.lus()))
        size = len(self.model[name])
        blocks = size // BLOCK
        first = data.draw(st.integers(0, blocks - 1))
        k = data.draw(st.integers(1, min(blocks - first, 2 * E // BLOCK)))
        blob = payload(random.Random(data.draw(st.integers(0, 1 << 32))).randbytes(k * BLOCK), zeros)
        try:
            self.handle(name).write(first * BLOCK, blob)
        except PoolFull:
            return
        self.model[name][first * BLOCK:(first + k) * BLOCK] = blob

    @precondition(lambda self: self.lus())
    @rule(data=st.data())
    def discard(self, data):
        name = data.draw(st.sampled_from(self.lus()))
        size = len(self.model[name])
        off = data.draw(st.integers(0, size - 1))
        n = data.draw(st.integers(1, size - off))
        try:
            self.handle(name).discard(off, n)
        except PoolFull:
            return
        self.model[name][off:off + n] = bytes(n)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), snap=SNAPS)
    def snapshot(self, data, snap):
        name = data.draw(st.sampled_from(sorted(self.model)))
        if not self.changeable(name):
            return self.refused(lambda: self.pool.snapshot(name, snap))
        full = f"{name}@{snap}"
        if full in self.model:
            return
        self.pool.snapshot(name, snap)
        self.add(full, bytearray(self.model[name]), "snapshot", name, self.mirrored[name])

    @precondition(lambda self: self.model)
    @rule(data=st.data(), new=NAMES)
    def clone(self, data, new):
        src = data.draw(st.sampled_from(sorted(self.model)))
        if new in self.model:
            return
        self.pool.clone(src, new)
        self.add(new, bytearray(self.model[src]), "clone", src, self.mirrored[src])

    @precondition(lambda self: self.model)
    @rule(data=st.data(), s=SNAPS)
    def rollback(self, data, s):
        """Mostly to a snapshot that exists; otherwise to any target and any name (refused)."""
        snaps = sorted(n for n, k in self.kind.items() if k == "snapshot")
        if snaps and data.draw(st.booleans()):
            name, s = data.draw(st.sampled_from(snaps)).split("@")
        else:
            name = data.draw(st.sampled_from(sorted(self.model)))
        snap = f"{name}@{s}"
        if not self.changeable(name) or snap not in self.model:
            return self.refused(lambda: self.pool.rollback(name, s))
        self.pool.rollback(name, s)
        self.model[name] = bytearray(self.model[snap])

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def flatten(self, data):
        """Any target: a clone (also of a snapshot) stops sharing; an LU (no parent), a snapshot
        or a sealed image is refused."""
        clones = sorted(n for n, k in self.kind.items() if k == "clone")
        name = data.draw(st.sampled_from(clones if clones and data.draw(st.booleans()) else sorted(self.model)))
        if not self.changeable(name) or self.kind.get(name) != "clone":
            return self.refused(lambda: self.pool.flatten(name))
        try:
            self.pool.flatten(name)
        except PoolFull:
            return
        self.kind[name], self.parent[name] = "lu", None

    @precondition(lambda self: self.model)
    @rule(data=st.data(), size=SIZES)
    def resize(self, data, size):
        name = data.draw(st.sampled_from(sorted(self.model)))
        if not self.changeable(name):
            return self.refused(lambda: self.pool.resize(name, size, force=True))
        old = len(self.model[name])
        self.pool.resize(name, size, force=True)
        if size < old:
            del self.model[name][size:]
        else:
            self.model[name].extend(bytes(size - old))

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def remove(self, data):
        name = data.draw(st.sampled_from(sorted(self.model)))
        doomed = self.family(name) if "@" not in name else [name]
        has_clones = any(self.kind[n] == "clone" and self.parent[n] in doomed for n in self.kind)
        self.close(name)
        try:
            removed = self.pool.remove(name, recursive=True)
        except Busy:
            assert has_clones
            return
        assert not has_clones and sorted(removed) == sorted(doomed)
        for n in doomed:
            self.forget(n)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), new=NAMES)
    def rename(self, data, new):
        """Any target: an LU's snapshots follow it, clones keep their parent by its new name."""
        name = data.draw(st.sampled_from(sorted(self.model)))
        if self.kind[name] == "snapshot" or new in self.model:
            return self.refused(lambda: self.pool.rename(name, new))
        self.close(name)
        self.pool.rename(name, new)
        moved = {n: new + n[len(name):] for n in self.family(name)}
        for old, n in moved.items():
            self.add(n, self.model[old], self.kind[old], new if self.kind[old] == "snapshot" else self.parent[old],
                     self.mirrored[old], self.role[old])
            self.forget(old)
        for n in self.model:
            if self.parent[n] in moved:
                self.parent[n] = moved[self.parent[n]]

    @precondition(lambda self: self.model)
    @rule(data=st.data(), on=st.booleans())
    def mirror(self, data, on):
        """Mirror or unmirror any target (mostly one whose state changes); before a copy goes,
        bad blocks of the family are repaired, so its flips no longer count as live."""
        which = [n for n in self.lus() if self.mirrored[n] != on]
        name = data.draw(st.sampled_from(which if which and data.draw(st.booleans()) else sorted(self.model)))
        if not self.changeable(name) or self.away:  # also refused while a copy is missing
            return self.refused(lambda: self.pool.set_mirrored(name, on))
        self.pool.set_mirrored(name, on)
        for n in self.family(name):
            self.mirrored[n] = on

    @precondition(lambda self: any(self.mirrored.values()) and not self.away)
    @rule(data=st.data(), copy=st.integers(0, 1))
    def flip(self, data, copy):
        """Damage one byte of one copy of an extent only mirrored LUs reference."""
        self.pool.flush()
        mirrored_ext, other_ext = set(), set()
        for n in self.model:
            p = self.phys(n)
            (mirrored_ext if self.mirrored[n] else other_ext).update(p[p != UNMAPPED].tolist())
        cand = sorted(mirrored_ext - other_ext)
        if not cand:
            return
        e = data.draw(st.sampled_from(cand))
        off = data.draw(st.integers(0, E - 1))
        if any(f[1] == e and f[2] // BLOCK == off // BLOCK for f in self.flips):
            return  # one damaged copy per block at most: the other must stay good
        pos = e * E + off
        with open(self.files[copy], "r+b") as f:
            f.seek(pos)
            b = f.read(1)[0]
            f.seek(pos)
            f.write(bytes([b ^ 0x5A]))
        self.flips.add((copy, e, off))

    @precondition(lambda self: not self.away)
    @rule(repair=st.booleans())
    def scrub_pool(self, repair):
        live = self.live_flips()
        rep = scrub(self.pool, repair=repair)
        assert rep["unrecoverable"] == [] and rep["undecided"] == [] and rep["in_use"] == []
        assert {(b["extent"], b["copy"]) for b in rep["bad"]} == {(e, c) for c, e, _ in live}
        if repair:
            assert rep["repaired"] == len({(c, e, o // BLOCK) for c, e, o in live})
            self.flips.clear()
            assert scrub(self.pool)["bad"] == []

    @precondition(lambda self: any(self.mirrored[n] for n in self.model) and not self.away)
    @rule(data=st.data(), repair=st.booleans())
    def verify_lu(self, data, repair):
        name = data.draw(st.sampled_from(sorted(n for n in self.model if self.mirrored[n])))
        live = self.live_flips()
        p = self.phys(name)
        mine = set(p[p != UNMAPPED].tolist())
        rep = verify(self.pool, name, repair=repair)
        assert set(rep["mismatched"]) == {e for _, e, _ in live if e in mine}
        assert rep["unrecoverable"] == []
        if repair:
            self.flips = {f for f in self.flips if f[1] not in mine}
            assert verify(self.pool, name)["mismatched"] == []

    @precondition(lambda self: not self.away and not self.flips)
    @rule()
    def copy_goes_away(self):
        """Copy 1's file is taken away: the next commit finds it gone and fails the copy."""
        os.rename(self.files[1], self.files[1] + ".away")
        self.away = True
        self.pool.commit(None)
        assert self.pool.failure_groups()[1]["state"] == "failed"

    @precondition(lambda self: self.away)
    @rule()
    def copy_comes_back(self):
        """The file is back; the second process's resync is refused while this one holds a
        mirrored LU that lacks extents (Busy, nothing changed), this one's resync copies all."""
        os.rename(self.files[1] + ".away", self.files[1])
        self.away = False
        self.pool.flush()  # the other process sees the maps as committed
        held = [n for n in self.open if self.mirrored[n] and sum(self.pool.dirty_extents(n).values())]
        assert self.ask(op="open", path=self.dir + "/p") == {"ok": True}
        try:
            got = self.ask(op="resync")
            if held:
                assert got["error"].startswith("Busy"), got
                assert self.ask(op="states") == {"ok": ["ok", "failed"]}
            else:
                assert "ok" in got, got
        finally:
            self.ask(op="close")
        self.pool.resync()
        assert [g["state"] for g in self.pool.failure_groups()] == ["ok", "ok"]
        assert self.pool.dirty_extents() == {0: 0, 1: 0}

    @rule()
    def elsewhere(self):
        """The second process opens the pool (which never resyncs), sees the copies as this one
        records them, and reads every LU this process does not hold as the model has it."""
        self.pool.flush()
        assert self.ask(op="open", path=self.dir + "/p") == {"ok": True}
        try:
            mine = [g["state"] for g in self.pool.failure_groups()]
            assert self.ask(op="states") == {"ok": mine}
            for name, want in self.model.items():
                if name in self.open or (self.flips and self.mirrored[name]):
                    continue
                assert self.ask(op="read", name=name) == {"ok": bytes(want).hex()}, name
        finally:
            self.ask(op="close")

    @rule()
    def flush(self):
        self.pool.flush()

    @rule()
    def reopen(self):
        for name in list(self.open):
            self.close(name)
        self.pool.close()
        self.pool = Pool.open(self.dir + "/p")

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def contents_match(self):
        """Every LU and snapshot reads as the model, except at a flipped byte of copy 0 that no
        repair has reached yet (reads come from copy 0; the good byte is in copy 1)."""
        live = {(e, o) for c, e, o in self.live_flips() if c == 0}
        for name, want in self.model.items():
            h = self.open.get(name)
            if h is not None:
                got = h.read(0, len(want))
            else:
                with self.pool.lu(name, writable=False) as r:
                    assert r.size == len(want)
                    got = r.read(0, len(want))
            if got == bytes(want):
                continue
            phys = self.phys(name)
            for pos in (i for i in range(len(want)) if got[i] != want[i]):
                assert (int(phys[pos // E]), pos % E) in live, (name, pos)

    @invariant()
    def check_clean(self):
        # check flushes the pool, which completes every deferred copy: every other step goes
        # without, so the next rule meets the extents still held.
        self.steps += 1
        if self.steps % 2:
            return
        self.checks_out()


TestPoolModel = PoolModel.TestCase
TestPoolModel.settings = settings(max_examples=240 if SLOW else 60, stateful_step_count=40, deadline=None,
                                  suppress_health_check=list(HealthCheck))
