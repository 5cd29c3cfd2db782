"""A second process of a pool, driven one JSON line at a time over stdin/stdout (the model test's
other process): ``{"op": "open", "path": P}``, ``{"op": "resync"}``, ``{"op": "read", "name": N}``
(the LU's bytes, hex), ``{"op": "states"}`` (each failure group's state), ``{"op": "close"}``;
and as a writer that owns an LU (the fence tests): ``{"op": "own", "name": N, "epoch": E}``,
``{"op": "write", "name": N, "offset": O, "hex": H}``, ``{"op": "flush"}``.
Each reply is ``{"ok": ...}`` or ``{"error": "Kind: message"}``."""
from __future__ import annotations

import json
import sys

from blockstore.pool import Pool


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
                held[req["name"]] = pool.open_lu(req["name"], epoch=req["epoch"])
                out = True
            elif req["op"] == "write":
                held[req["name"]].write(req["offset"], bytes.fromhex(req["hex"]))
                out = True
            elif req["op"] == "flush":
                pool.flush()
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
