"""Random sequences of every LU operation against a model of plain bytearrays.

Every step compares every LU's and snapshot's full contents with the model, and ``pool check``
must be clean after each step.
"""
from __future__ import annotations

import shutil
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from blockstore import Busy, Pool, PoolFull
from blockstore.check import check
from blockstore.scrub import scrub, verify

E = 64 << 10
SIZES = st.sampled_from([E, 3 * E, 5 * E + 512, 8 * E])
NAMES = st.sampled_from(["a", "b", "c", "d", "e"])
SNAPS = st.sampled_from(["s1", "s2", "s3"])


def payload(draw_bytes: bytes, zeros: bool) -> bytes:
    return bytes(len(draw_bytes)) if zeros else draw_bytes


class PoolModel(RuleBasedStateMachine):
    MIRRORED = False

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="bs-model-")
        self.pool = Pool.create(self.dir + "/p", 160 * E, extent_size=E,
                                mirror_dir=self.dir + "/fg1" if self.MIRRORED else None)
        self.model: dict[str, bytearray] = {}
        self.parent: dict[str, str | None] = {}
        self.kind: dict[str, str] = {}
        self.open: dict[str, object] = {}

    def teardown(self) -> None:
        try:
            self.pool.close()
        finally:
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
        return sorted(n for n, k in self.kind.items() if k != "snapshot")

    # -- rules -------------------------------------------------------------------------------

    @initialize()
    def start(self) -> None:
        self.pool.create_lu("a", 4 * E, mirrored=self.MIRRORED).close()
        self.model["a"] = bytearray(4 * E)
        self.kind["a"], self.parent["a"] = "lu", None

    @rule(name=NAMES, size=SIZES)
    def create(self, name, size):
        if name in self.model:
            return
        self.pool.create_lu(name, size, mirrored=self.MIRRORED).close()
        self.model[name] = bytearray(size)
        self.kind[name], self.parent[name] = "lu", None

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

    @precondition(lambda self: self.lus())
    @rule(data=st.data(), snap=SNAPS)
    def snapshot(self, data, snap):
        name = data.draw(st.sampled_from(self.lus()))
        full = f"{name}@{snap}"
        if full in self.model:
            return
        self.pool.snapshot(name, snap)
        self.model[full] = bytearray(self.model[name])
        self.kind[full], self.parent[full] = "snapshot", name

    @precondition(lambda self: self.model)
    @rule(data=st.data(), new=NAMES)
    def clone(self, data, new):
        src = data.draw(st.sampled_from(sorted(self.model)))
        if new in self.model:
            return
        self.pool.clone(src, new)
        self.model[new] = bytearray(self.model[src])
        self.kind[new], self.parent[new] = "clone", src

    @precondition(lambda self: any(k == "snapshot" for k in self.kind.values()))
    @rule(data=st.data())
    def rollback(self, data):
        snap = data.draw(st.sampled_from(sorted(n for n, k in self.kind.items() if k == "snapshot")))
        name, s = snap.split("@")
        self.pool.rollback(name, s)
        self.model[name] = bytearray(self.model[snap])

    @precondition(lambda self: any(k == "clone" for k in self.kind.values()))
    @rule(data=st.data())
    def flatten(self, data):
        name = data.draw(st.sampled_from(sorted(n for n, k in self.kind.items() if k == "clone")))
        try:
            self.pool.flatten(name)
        except PoolFull:
            return
        self.kind[name], self.parent[name] = "lu", None

    @precondition(lambda self: self.lus())
    @rule(data=st.data(), size=SIZES)
    def resize(self, data, size):
        name = data.draw(st.sampled_from(self.lus()))
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
        snaps = [n for n, k in self.kind.items() if k == "snapshot" and self.parent[n] == name]
        doomed = [name] + snaps
        has_clones = any(self.kind[n] == "clone" and self.parent[n] in doomed for n in self.kind)
        self.close(name)
        try:
            removed = self.pool.remove(name, recursive=True)
        except Busy:
            assert has_clones
            return
        assert not has_clones and sorted(removed) == sorted(doomed)
        for n in doomed:
            del self.model[n], self.kind[n], self.parent[n]

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
        for name, want in self.model.items():
            h = self.open.get(name)
            if h is not None:
                got = h.read(0, len(want))
            else:
                with self.pool.lu(name, writable=False) as r:
                    assert r.size == len(want)
                    got = r.read(0, len(want))
            assert got == bytes(want), name

    @invariant()
    def check_clean(self):
        rep = check(self.pool)
        assert rep["clean"], rep
        if self.MIRRORED:
            for name in self.model:
                assert verify(self.pool, name)["mismatched"] == [], name
            assert scrub(self.pool)["clean"]


class MirroredPoolModel(PoolModel):
    MIRRORED = True


TestPoolModel = PoolModel.TestCase
TestPoolModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                  suppress_health_check=list(HealthCheck))

TestMirroredPoolModel = MirroredPoolModel.TestCase
TestMirroredPoolModel.settings = settings(max_examples=40, stateful_step_count=30, deadline=None,
                                          suppress_health_check=list(HealthCheck))
