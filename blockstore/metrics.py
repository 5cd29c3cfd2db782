"""The figures a running mount or node shows to Prometheus (``--metrics HOST:PORT``), made by
prometheus_client from what the engine already keeps; nothing is counted twice for them.

Per LU, from the mount's request counters (native/fastpath.h: every read and write request of
the mount, the C direct path's and the Python fallback's alike): requests and bytes read and
written, and each request's time as a histogram. For the pool: capacity, allocated and provisioned
bytes; per failure group its state and the extents its copy lacks. For the cluster (a node): the
primary, its epoch and each member's state. Everything is read when Prometheus scrapes, under the
engine's own locks, so a scrape costs the scraper's time, not the I/O's.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .errors import InvalidArgument

log = logging.getLogger("blockstore.metrics")

#: Upper bounds (seconds) of the request-time buckets: powers of two microseconds, as the
#: counters in C keep them (bucket i: requests shorter than 2**i microseconds).
BUCKETS = 24
BOUNDS = [2 ** i / 1e6 for i in range(BUCKETS - 1)]


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``:PORT`` or ``PORT``: every interface) as (host, port)."""
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"--metrics takes HOST:PORT (such as 127.0.0.1:9591), not {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class Collector:
    """prometheus_client's custom collector over sources, each a callable giving metric
    families: a source that fails is logged and left out of that scrape, never the others."""

    def __init__(self, sources: Iterable[Callable[[], Iterator[Any]]]) -> None:
        self.sources = list(sources)

    def collect(self) -> Iterator[Any]:
        for source in self.sources:
            try:
                yield from list(source())
            except Exception:  # noqa: BLE001  (a scrape answers with what it can)
                log.exception("metrics: %s failed", getattr(source, "__name__", source))


def lu_requests(stats: Callable[[], dict[str, dict[str, Any]]]) -> Callable[[], Iterator[Any]]:
    """Families of per-LU requests; ``stats()`` maps LU name to ``{"read"|"write": {"ops",
    "bytes", "seconds", "buckets"}}`` (buckets per BUCKETS, not cumulative)."""
    from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

    def families() -> Iterator[Any]:
        ops = CounterMetricFamily("blockstore_lu_requests", "read and write requests served", labels=["lu", "op"])
        size = CounterMetricFamily("blockstore_lu_bytes", "bytes read and written", labels=["lu", "op"])
        took = HistogramMetricFamily("blockstore_lu_request_seconds", "time to serve a request",
                                     labels=["lu", "op"])
        for name, per in sorted(stats().items()):
            for op in ("read", "write"):
                s = per[op]
                ops.add_metric([name, op], s["ops"])
                size.add_metric([name, op], s["bytes"])
                cumulative, total = [], 0
                for bound, n in zip(BOUNDS + [float("inf")], s["buckets"]):
                    total += n
                    cumulative.append(("+Inf" if bound == float("inf") else repr(bound), total))
                took.add_metric([name, op], cumulative, s["seconds"])
        yield from (ops, size, took)
    return families


def pool_figures(pool: Any) -> Callable[[], Iterator[Any]]:
    """Families of the pool's space and its failure groups."""
    from prometheus_client.core import GaugeMetricFamily

    def families() -> Iterator[Any]:
        st = pool.status()
        for key, what in (("capacity", "bytes the pool's data file holds"), ("allocated", "bytes LUs hold"),
                          ("provisioned", "bytes the LUs' sizes add up to")):
            yield GaugeMetricFamily(f"blockstore_pool_{key}_bytes", what, value=st[key])
        state = GaugeMetricFamily("blockstore_failure_group_state", "1 for the group's state",
                                  labels=["group", "state"])
        dirty = GaugeMetricFamily("blockstore_failure_group_dirty_extents", "extents the group's copy lacks",
                                  labels=["group"])
        for g in pool.failure_groups():
            state.add_metric([str(g["group"]), g["state"]], 1)
            dirty.add_metric([str(g["group"])], g["dirty_extents"])
        yield from (state, dirty)
    return families


def cluster_figures(status: Callable[[], dict[str, Any]]) -> Callable[[], Iterator[Any]]:
    """Families of the cluster as ``status()`` (cluster/admin.py) sees it."""
    from prometheus_client.core import GaugeMetricFamily

    def families() -> Iterator[Any]:
        st = status()
        yield GaugeMetricFamily("blockstore_cluster_epoch", "the primary's epoch", value=st["epoch"])
        primary = GaugeMetricFamily("blockstore_cluster_primary", "1 for the primary node", labels=["node"])
        if st.get("primary"):
            primary.add_metric([st["primary"]], 1)
        yield primary
        member = GaugeMetricFamily("blockstore_cluster_node_state", "1 for each node's state",
                                   labels=["node", "state"])
        for n in st["nodes"]:
            member.add_metric([n["name"], n["state"]], 1)
        yield member
    return families


def serve(address: str, sources: Iterable[Callable[[], Iterator[Any]]]) -> Any:
    """Serve the sources' figures at ``http://address/metrics`` from a thread of its own;
    returns the server (``shutdown()`` stops it)."""
    from prometheus_client import CollectorRegistry, start_http_server
    host, port = parse_address(address)
    registry = CollectorRegistry()
    registry.register(Collector(sources))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
