"""Bounded resources on every listener: the mount's control channel (control.py) holds idle
connections in one selector thread, with a deadline, and serves a burst of asks without EAGAIN."""
from __future__ import annotations

import os
import socket
import threading
import time

from blockstore import control
from blockstore.pool import Pool


def test_idle_connections_cost_no_thread_and_a_burst_of_asks_is_served(tmp_path):
    with Pool.create(str(tmp_path / "pool"), "16M", extent_size="64K") as p:
        p.create_lu("a", "1M").close()
        server = control.ControlServer(p).start()
        try:
            before = threading.active_count()
            idle = []
            for _ in range(400):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(server.path)
                idle.append(s)
            time.sleep(0.5)
            assert threading.active_count() <= before + 2  # was one thread per connection
            results, errors = [], []

            def one() -> None:
                try:
                    results.append(control.ask(p.path, os.getpid(), {"op": "status", "lu": "a"}))
                except Exception as e:  # noqa: BLE001
                    errors.append(e)
            askers = [threading.Thread(target=one) for _ in range(60)]
            for t in askers:
                t.start()
            for t in askers:
                t.join(60)
            assert not errors, errors[:3]  # was EAGAIN with a backlog of 16
            assert len(results) == 60 and all(r["name"] == "a" for r in results)
            time.sleep(control.REQUEST_DEADLINE + 1.5)  # idle ones are dropped at their deadline
            assert all(s.recv(1) == b"" for s in idle[-10:])
            for s in idle:
                s.close()
            bad = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            bad.connect(server.path)
            bad.sendall(b"not json\n")
            assert b"error" in bad.recv(4096)
            bad.close()
        finally:
            server.stop()
