"""Fencing: what keeps an owner that was replaced from landing a write once the new owner may
write. A lease alone is no fence (a paused process wakes up and writes as if nothing happened),
so each layer below is checked where the write lands:

- ``metadata``: a writer opened under an ownership epoch stores it in the LU's record (the
  ``fence`` field) and every commit of its maps compares it, in the same transaction: once a newer
  owner has taken a higher epoch, the old one commits nothing (no map, count or checksum);
- ``data``: the node's serving process refuses writes to an LU once it knows it was deposed or
  cannot renew its lease within a margin (cluster/serving.py's gate): a filter over the LU's
  store (storage/fenced.py), a check inside every commit, and the C direct path's fence word;
- ``agent``: before the new owner writes, the fence agent makes sure the old owner cannot (on one
  machine: it stops the old owner's serving processes and waits until their holder locks are
  free; the holder locks themselves, locks.py, are this layer's on one machine).

Each layer can be switched off for a test of the others alone: ``BLOCKSTORE_FENCES`` names the
layers on (comma-separated; default all, ``none`` for none), read once as the process starts
(the data layer asks on every write). Nothing but tests should set it.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .errors import Fenced, InvalidArgument

#: What a node's serving process does with a write it may not make for want of a renewed lease:
#: fail it at once (ESTALE), or hold it up to the cluster's timeout for a renewal (DRBD's
#: ``suspend-io``). Per LU (its record's ``on_fence``), else the mount's ``--on-fence``.
ON_FENCE = ("error", "hold")

LAYERS = ("metadata", "data", "agent")


_RAW = os.environ.get("BLOCKSTORE_FENCES")
_ON = frozenset(LAYERS) if _RAW is None else frozenset(w.strip() for w in _RAW.split(","))


def enabled(layer: str) -> bool:
    """Whether fence layer ``layer`` is on in this process (BLOCKSTORE_FENCES)."""
    if layer not in LAYERS:
        raise InvalidArgument(f"no fence layer {layer!r} (layers: {', '.join(LAYERS)})")
    return layer in _ON


if TYPE_CHECKING:
    from .catalog import LURecord


def check(rec: "LURecord", epoch: int | None) -> None:
    """Refuse (Fenced) a writer under ``epoch`` of the LU whose record (as the transaction at
    hand reads it) is ``rec``: a newer owner took a higher epoch. A writer opened without an
    epoch (no cluster, the CLI) is not fenced, and a record without one fences nobody."""
    if epoch is None or not enabled("metadata"):
        return
    held = int(rec.get("fence", 0))
    if held > epoch:
        raise Fenced(f"LU {rec['name']!r} is owned under epoch {held} now; this writer's epoch {epoch} is over "
                     "and nothing it had not committed was stored")
