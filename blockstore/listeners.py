"""The pool's listeners, and the thread that calls them.

An engine event (an LU created, the threshold crossed, a copy degraded, a checksum mismatch) is
raised where it happens: often under the pool lock, in the middle of a write. A listener may be
slow (the cluster bridge writes and fsyncs a payload file per event), so events are queued and
handed to the listeners, in order, by a thread of their own: no listener runs under the pool lock
or holds up the write that raised the event. ``drain`` waits until every queued event has been
delivered; the pool drains at close, and at interpreter exit whatever was not drained is
delivered then. A listener that raises is logged; the others still hear the event.
"""
from __future__ import annotations

import atexit
import copy
import logging
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any

log = logging.getLogger("blockstore.listeners")

Listener = Callable[[str, dict[str, Any]], None]


class Listeners(list):  # type: ignore[type-arg]
    """A list of listeners (append to it) with ``emit`` and ``drain``."""

    def __init__(self) -> None:
        super().__init__()
        self._queue: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()

    def emit(self, kind: str, info: dict[str, Any]) -> None:
        """Queue an event for every listener; returns at once. ``info`` is copied now: the
        caller may go on changing what it holds (a record it updates again) before delivery."""
        if not self:
            return
        with self._start:
            if self._thread is None or not self._thread.is_alive():  # not started, or forked away
                if self._thread is None:
                    atexit.register(_drain_at_exit, weakref.ref(self))
                self._thread = threading.Thread(target=self._deliver, name="pool-events", daemon=True)
                self._thread.start()
        self._queue.put((kind, copy.deepcopy(info)))

    def drain(self) -> None:
        """Wait until every event queued so far has been delivered."""
        if self._thread is not None:
            self._queue.join()

    def _deliver(self) -> None:
        while True:
            kind, info = self._queue.get()
            try:
                for listener in list(self):
                    try:
                        listener(kind, info)
                    except Exception:
                        log.exception("a listener failed on %s", kind)
            finally:
                self._queue.task_done()


def _drain_at_exit(ref: "weakref.ref[Listeners]") -> None:
    listeners = ref()
    if listeners is not None:
        listeners.drain()
