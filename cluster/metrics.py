"""Coordinator metrics for Prometheus: sellers by state, GPUs online, heartbeat lag, API latency.

Store-derived gauges are computed at scrape time from one query, so they are never stale.
Each coordinator has its own registry (several can run in one test process).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import select

from computeswarm.cluster.sellers.states import SellerState
from computeswarm.cluster.store.db import Store
from computeswarm.cluster.store.models import Seller


class SellerCollector(Collector):
    def __init__(self, store: Store, clock: Callable[[], float] = time.time):
        self.store = store
        self.clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        by_state = GaugeMetricFamily("computeswarm_sellers", "Sellers by state.", labels=["state"])
        gpus = GaugeMetricFamily(
            "computeswarm_gpus_online",
            "GPUs of online sellers (simulated ones labelled).",
            labels=["model", "simulated"],
        )
        lag = GaugeMetricFamily(
            "computeswarm_heartbeat_lag_seconds",
            "Seconds since the oldest heartbeat among online sellers.",
        )
        counts = {state.value: 0 for state in SellerState if state is not SellerState.INVITED}
        gpu_counts: dict[tuple[str, str], int] = {}
        oldest = None
        with self.store.transaction() as db:
            rows = db.execute(
                select(
                    Seller.state, Seller.gpus, Seller.gpus_simulated, Seller.last_heartbeat
                ).where(Seller.left_at.is_(None))
            )
            for state, seller_gpus, simulated, last in rows:
                counts[state] = counts.get(state, 0) + 1
                if state != SellerState.ONLINE.value:
                    continue
                for gpu in seller_gpus or []:
                    key = (gpu.get("model", "?"), str(bool(simulated)).lower())
                    gpu_counts[key] = gpu_counts.get(key, 0) + 1
                if last is not None:
                    oldest = last if oldest is None else min(oldest, last)
        for state, count in sorted(counts.items()):
            by_state.add_metric([state], count)
        for (model, simulated), count in sorted(gpu_counts.items()):
            gpus.add_metric([model, simulated], count)
        lag.add_metric([], 0.0 if oldest is None else max(0.0, self.clock() - oldest))
        yield from (by_state, gpus, lag)


class StorageCollector(Collector):
    """Bytes each account keeps in the object store (storage is a cost the buyer sees):
    one listing of the bucket per scrape, at most every `every_s`."""

    def __init__(self, bytes_by_account: Callable[[], dict[str, int]], every_s: float = 15.0):
        self.bytes_by_account, self.every_s = bytes_by_account, every_s
        self._last: tuple[float, dict[str, int]] = (-every_s, {})

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = time.monotonic()
        if now - self._last[0] >= self.every_s:
            # A store that is down shows in /readyz; the last figures stay.
            with contextlib.suppress(Exception):
                self._last = (now, self.bytes_by_account())
        stored = GaugeMetricFamily(
            "computeswarm_storage_bytes",
            "Bytes in the object store, by account.",
            labels=["account"],
        )
        for account, size in sorted(self._last[1].items()):
            stored.add_metric([account], size)
        yield stored


def api_latency(registry: CollectorRegistry) -> Histogram:
    return Histogram(
        "computeswarm_api_request_seconds",
        "Coordinator API latency by route and status.",
        ["method", "route", "status"],
        registry=registry,
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    )


def sales_counters(registry: CollectorRegistry) -> tuple[Counter, Counter]:
    """GPU-seconds sold, and money settled by recipient (`sellers`, `platform`, `storage`)."""
    sold = Counter(
        "computeswarm_gpu_seconds_sold", "Metered GPU-seconds settled.", registry=registry
    )
    revenue = Counter(
        "computeswarm_revenue_micros",
        "Money settled from buyers, by recipient.",
        ["to"],
        registry=registry,
    )
    return sold, revenue
