"""The fence agent: what makes sure a failed node can no longer write before its LUs move.

A node that stopped answering may only be paused (SIGSTOP, a long stall, a cut link): when it
wakes it would go on writing what it had in flight. Before the primary gives a down node's LUs to
another node it has the node fenced, as Pacemaker has a failed node shot (STONITH) before it
recovers the node's resources, and moves nothing until the agent says the node is fenced.

The interface is a command, as Pacemaker's fence agents are: ``cluster create --fence-agent CMD``
runs ``CMD NODE`` with ``BLOCKSTORE_POOL`` (the pool's path) and ``BLOCKSTORE_FENCE_NODE`` (the
node's registration, JSON: name, address, cec, its processes) in the environment. Exit 0 means
the node can no longer write to the pool's storage; anything else, or no exit within
``TIMEOUT`` seconds, that it may, and its LUs stay where they are until a later try succeeds.
Across machines that command is storage blocklisting or power fencing.

The default serves nodes on one machine: every process the node registered (the node and its
mount, each with its start time, so a reused pid is never hit) is killed with SIGKILL, which also
ends a stopped process, and the agent waits until each has ended: the kernel has then dropped
their holder locks and nothing they had in flight can land. It assumes one kernel; it covers
nothing a node on another machine does.
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import time
from typing import Any

from ..errors import InvalidArgument

log = logging.getLogger("blockstore.cluster.agent")
TIMEOUT = 30.0


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot, /proc/PID/stat): with its pid, what
    names one process for the machine's uptime. None when there is no such process, or only its
    zombie (which holds no file and no lock any more)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # counted after the command's ")": state is field 3
    return None if fields[0] in ("Z", "X") else int(fields[19])  # start time: field 22


def this_process(pid: int | None = None) -> dict[str, int]:
    """{pid, start} of ``pid`` (default: this process), as the node registers its processes."""
    pid = os.getpid() if pid is None else pid
    return {"pid": pid, "start": start_time(pid) or 0}


def check_command(command: str) -> list[str]:
    """The agent command as words; InvalidArgument in one line when it cannot be run."""
    try:
        words = shlex.split(command)
    except ValueError as e:
        raise InvalidArgument(f"fence agent {command!r}: {e}") from None
    if not words or shutil.which(words[0]) is None:
        raise InvalidArgument(f"fence agent {command!r}: no such program")
    return words


def fence(pool_path: str, agent: str, record: dict[str, Any], timeout: float = TIMEOUT) -> bool:
    """Fence the node registered as ``record`` with ``agent`` (a command; "" the local one):
    True once it can no longer write."""
    if not agent:
        return _local(record.get("processes") or [], timeout)
    try:
        words = check_command(agent)
        r = subprocess.run([*words, str(record.get("name"))], timeout=timeout, capture_output=True,
                           env={**os.environ, "BLOCKSTORE_POOL": pool_path, "BLOCKSTORE_FENCE_NODE": json.dumps(record)})
    except (InvalidArgument, OSError, subprocess.TimeoutExpired) as e:
        log.error("fence agent for node %s failed: %s", record.get("name"), e)
        return False
    if r.returncode != 0:
        log.error("fence agent for node %s exited %d: %s", record.get("name"), r.returncode,
                  r.stderr.decode(errors="replace").strip()[-500:])
    return r.returncode == 0


def _local(processes: list[dict[str, int]], timeout: float) -> bool:
    live = [p for p in processes if p.get("start") and start_time(p["pid"]) == p["start"]]
    for p in live:
        try:
            os.kill(p["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass
    give_up = time.monotonic() + timeout
    while any(start_time(p["pid"]) == p["start"] for p in live):
        if time.monotonic() >= give_up:
            log.error("fencing: processes %s have not ended after %.0fs", [p["pid"] for p in live], timeout)
            return False
        time.sleep(0.01)
    return True
