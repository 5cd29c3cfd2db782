"""The records the Pool API returns, as types: what a caller may rely on (sizes in bytes, times in
seconds since the epoch). The CLI's ``--json`` prints these same records."""
from __future__ import annotations

from typing import TypedDict


class Holder(TypedDict):
    """Who holds an LU open for writing: ``pid`` (0 when the lock names none) and ``command``."""
    pid: int
    command: str


class MirrorState(TypedDict):
    state: str                 # "in-sync", "resyncing" or "degraded"
    missing_copy: int | None   # the failure group that is gone, when degraded
    dirty_extents: int         # extents a copy still has to be given


class _LUBase(TypedDict):
    id: int
    name: str                  # NAME, or NAME@SNAP for a snapshot
    size: int                  # bytes
    allocated: int             # bytes its map holds (shared extents included)
    kind: str                  # "lu", "clone" or "snapshot"
    parent: str | None         # what a snapshot was taken of, or a clone made from
    thick: bool
    mirrored: bool
    role: str | None           # what a service made it for: "image", "partition", "paging"
    readonly: bool
    created: float
    on_fence: str | None       # a cluster node's answer to a write it may not make now: "error",
                               # "hold", or None (the serving mount's --on-fence)


class LUInfo(_LUBase, total=False):
    """``Pool.describe`` (every row of ``list_lus``) and, with the keys below, ``lu_info``."""
    snapshots: list[str]
    clones: list[str]
    open_for_writing: bool
    holder: Holder | None      # the process writing it (pid, command), None when nobody does
    mirror: MirrorState        # only for a mirrored LU


class LUStatus(LUInfo, total=False):
    """``lu_info`` as the process that holds the LU open sees it (``Pool.lu_status``)."""
    open_handles: int | None   # None: held by a process that takes no requests (the Python API)
    writable: bool
    bytes_written: int | None
    pending_copies: int | None  # held extents whose copy is not complete


class DuRow(TypedDict):
    name: str
    kind: str
    provisioned: int           # bytes: its size
    used: int                  # bytes its map holds
    exclusive: int             # bytes nothing else references: what removing it alone frees
    shared: int                # the rest of ``used``


class DuTotal(TypedDict):
    provisioned: int           # the LUs' sizes (snapshots provision nothing)
    used: int                  # exclusive + shared: what these LUs hold in the pool
    exclusive: int
    shared: int                # every shared extent once


class DuReport(TypedDict):
    lus: list[DuRow]
    total: DuTotal


class PoolStatus(TypedDict):
    path: str
    extent_size: int
    capacity: int              # bytes, all of these
    allocated: int             # extents some map references
    reserved: int              # extents held but not (yet) referenced: thick LUs, uncommitted writes
    free: int
    provisioned: int           # the LUs' sizes: may exceed capacity (thin)
    overcommit: float          # provisioned / capacity
    threshold: float           # the fraction of capacity at which the pool warns
    used_fraction: float       # (allocated + reserved) / capacity
    threshold_exceeded: bool
    lus: int
    snapshots: int
    metadata_bytes: int
    copies: list[str]          # each failure group's state (ok, failed, resyncing, unavailable)
