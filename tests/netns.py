"""Network namespaces for cluster tests (see the testing notes in docs/cluster.md): a hub
namespace holding a bridge, and one namespace per node (and one for the administrator's
commands), each joined to the hub by a veth pair. The root namespace is never changed; traffic
goes only between these namespaces. A cut is the hub end of a node's veth set down.

Processes enter a namespace with ``nsenter --net`` only, so their FUSE mounts stay visible to
the test (``ip netns exec`` would give them a mount namespace of their own)."""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Any


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Net:
    """Namespaces named after this process, so parallel test workers never meet."""

    def __init__(self) -> None:
        self.tag = f"bs{os.getpid()}"
        self.hub = f"{self.tag}hub"
        self.spaces: dict[str, tuple[str, str, str]] = {}  # name -> (namespace, hub end, address)
        _ip("netns", "add", self.hub)
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "link", "set", "br0", "up")

    def add(self, name: str) -> str:
        """A namespace for ``name`` on the hub; returns its address."""
        k = len(self.spaces) + 2
        ns, end, addr = f"{self.tag}{name}", f"h{k}", f"10.77.0.{k}"
        _ip("netns", "add", ns)
        _ip("-n", self.hub, "link", "add", end, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("-n", self.hub, "link", "set", end, "master", "br0", "up")
        _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        self.spaces[name] = (ns, end, addr)
        return addr

    def cmd(self, name: str, *argv: str) -> list[str]:
        """``argv`` run in ``name``'s network namespace (its mount namespace stays ours)."""
        return ["nsenter", f"--net=/run/netns/{self.spaces[name][0]}", "--", *argv]

    def blockstore(self, name: str, pool: str, *args: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess:
        r = subprocess.run(self.cmd(name, sys.executable, "-m", "blockstore", "--pool", pool, *args),
                           capture_output=True, **kw)
        if check and r.returncode != 0:
            raise AssertionError(f"blockstore {' '.join(args)} in {name}: exit {r.returncode}: {r.stderr.decode()}")
        return r

    def cut(self, name: str) -> None:
        _ip("-n", self.hub, "link", "set", self.spaces[name][1], "down")

    def heal(self, name: str) -> None:
        _ip("-n", self.hub, "link", "set", self.spaces[name][1], "up")

    def close(self) -> None:
        for ns, _, _ in self.spaces.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.hub], capture_output=True)
