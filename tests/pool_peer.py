"""A second process of a pool, driven one JSON line at a time over stdin/stdout (the model test's
other process): ``{"op": "open", "path": P}``, ``{"op": "resync"}``, ``{"op": "read", "name": N}``
(the LU's bytes, hex), ``{"op": "states"}`` (each failure group's state), ``{"op": "close"}``;
and as a writer that owns an LU (the fence tests, under an ownership epoch; the redirection
tests): ``{"op": "own", "name": N, "epoch": E or absent}``, ``{"op": "write", "name": N,
"offset": O, "hex": H}``, ``{"op": "flush"}`` (the pool's: a checkpoint), ``{"op": "fsync",
"name": N}`` (the LU's own). Each reply is ``{"ok": ...}`` or ``{"error":
"Kind: message"}``. ``Peer`` starts and drives one."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from blockstore.pool import Pool


class Peer:
    """A second process of the pool at ``pool`` (this script), with the fence layers ``fences``
    on (fence.py; None: the default)."""

    def __init__(self, pool: str, fences: str | None = None) -> None:
        env = {**os.environ, **({"BLOCKSTORE_FENCES": fences} if fences is not None else {})}
        self.p = subprocess.Popen([sys.executable, os.path.abspath(__file__)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, env=env)
        self.ask(op="open", path=pool)

    def ask(self, **req):  # type: ignore[no-untyped-def]
        assert self.p.stdin is not None and self.p.stdout is not None
        self.p.stdin.write((json.dumps(req) + "\n").encode())
        self.p.stdin.flush()
        return json.loads(self.p.stdout.readline())

    def end(self) -> None:
        self.p.kill()
        self.p.wait()


def main() -> None:
    pool = None
    held = {}
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if req["op"] == "open":
                pool = Pool.open(req["path"])
                out = True
            elif req["op"] == "close":
                if pool is not None:
                    pool.close()
                pool, out = None, True
            elif req["op"] == "resync":
                out = pool.resync()
            elif req["op"] == "states":
                out = [g["state"] for g in pool.failure_groups()]
            elif req["op"] == "own":
                held[req["name"]] = pool.open_lu(req["name"], epoch=req.get("epoch"))
                out = True
            elif req["op"] == "write":
                held[req["name"]].write(req["offset"], bytes.fromhex(req["hex"]))
                out = True
            elif req["op"] == "flush":
                pool.flush()
                out = True
            elif req["op"] == "fsync":  # the LU's own flush (an fsync): no checkpoint
                held[req["name"]].flush()
                out = True
            else:
                with pool.lu(req["name"], writable=False) as lu:
                    out = lu.read(0, lu.size).hex()
            reply = {"ok": out}
        except Exception as e:  # noqa: BLE001  (the model judges it)
            reply = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
