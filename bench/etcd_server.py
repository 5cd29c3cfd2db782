"""A real etcd for the tests and bench/: members started by the caller itself (Debian's
etcd-server), each on addresses it chose (loopback, or a network namespace of a test's own), with
a data directory of its own, stopped by pid. etcd's own service unit is never used."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Etcd:
    """An etcd cluster of ``len(hosts)`` members, member i listening on ``hosts[i]`` and run by
    ``wrap(i, argv)`` (a namespace's ``ip netns exec``, say; default: as it is)."""

    def __init__(self, root: str, hosts: list[str] | None = None,
                 wrap: Callable[[int, list[str]], list[str]] | None = None) -> None:
        self.root, self.hosts = root, hosts or ["127.0.0.1"]
        self.wrap = wrap or (lambda i, argv: argv)
        self.ports = [(free_port(), free_port()) for _ in self.hosts]
        self.names = [f"m{i}" for i in range(len(self.hosts))]
        self.procs: dict[int, subprocess.Popen] = {}
        self.initial = ",".join(f"{n}=http://{h}:{pp}" for n, h, (_, pp) in zip(self.names, self.hosts, self.ports))

    @property
    def url(self) -> str:
        """The store URL naming every member (etcd://HOST:PORT,...)."""
        return "etcd://" + ",".join(f"{h}:{cp}" for h, (cp, _) in zip(self.hosts, self.ports))

    def endpoint(self, i: int) -> str:
        return f"{self.hosts[i]}:{self.ports[i][0]}"

    def start(self, i: int | None = None) -> "Etcd":
        """Start member ``i`` (default: every member), and wait until the cluster answers."""
        for k in range(len(self.hosts)) if i is None else [i]:
            h, (cp, pp) = self.hosts[k], self.ports[k]
            data = os.path.join(self.root, self.names[k])
            os.makedirs(data, exist_ok=True)
            argv = ["etcd", "--name", self.names[k], "--data-dir", data,
                    "--listen-client-urls", f"http://{h}:{cp}", "--advertise-client-urls", f"http://{h}:{cp}",
                    "--listen-peer-urls", f"http://{h}:{pp}", "--initial-advertise-peer-urls", f"http://{h}:{pp}",
                    "--initial-cluster", self.initial, "--initial-cluster-state", "new",
                    "--heartbeat-interval", "100", "--election-timeout", "1000", "--logger", "zap",
                    "--log-outputs", os.path.join(self.root, f"{self.names[k]}.log")]
            self.procs[k] = subprocess.Popen(self.wrap(k, argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_healthy([k for k in range(len(self.hosts)) if k in self.procs])
        return self

    def wait_healthy(self, members: list[int], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            r = subprocess.run(self.wrap(members[0], ["etcdctl", "--endpoints",
                                                      ",".join(f"http://{self.endpoint(k)}" for k in members),
                                                      "endpoint", "health"]),
                               capture_output=True, env={**os.environ, "ETCDCTL_API": "3"})
            if r.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"etcd did not come up: {r.stderr.decode()[-500:]}")
            time.sleep(0.2)

    def signal(self, i: int, sig: signal.Signals) -> None:
        self.procs[i].send_signal(sig)

    def kill(self, i: int) -> None:
        p = self.procs.pop(i)
        p.kill()
        p.wait()

    def close(self) -> None:
        for i in list(self.procs):
            p = self.procs[i]
            p.send_signal(signal.SIGCONT)
            self.kill(i)
        shutil.rmtree(self.root, ignore_errors=True)
