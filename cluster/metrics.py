"""Coordinator metrics for Prometheus: sellers by state, GPUs online and leased, heartbeat lag,
leases by state, the queue and how long matched jobs waited, GPU-seconds and earnings by
seller, API latency.

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
from sqlalchemy import func, select

from computeswarm.cluster.leases.states import ACTIVE_LEASE_STATES
from computeswarm.cluster.sellers.states import SellerState
from computeswarm.cluster.store.db import Store
from computeswarm.cluster.store.models import Job, Lease, LeaseMember, LedgerEntry, Seller


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
        yield from self._market()

    def _market(self) -> Iterator[GaugeMetricFamily]:
        """Demand and what it bought: leases by state, GPUs leased, the queue and its
        oldest wait, GPU-seconds and earnings by seller."""
        leases = GaugeMetricFamily("computeswarm_leases", "Leases by state.", labels=["state"])
        leased = GaugeMetricFamily("computeswarm_gpus_leased", "GPUs in active leases.")
        queue = GaugeMetricFamily("computeswarm_queue_jobs", "Jobs waiting for the market.")
        wait = GaugeMetricFamily(
            "computeswarm_queue_oldest_wait_seconds", "How long the oldest waiting job has waited."
        )
        sold = GaugeMetricFamily(
            "computeswarm_seller_gpu_seconds", "GPU-seconds metered, by seller.", labels=["seller"]
        )
        earned = GaugeMetricFamily(
            "computeswarm_seller_earned_micros", "Settled earnings, by seller.", labels=["seller"]
        )
        active = [s.value for s in ACTIVE_LEASE_STATES]
        with self.store.transaction() as db:
            for state, n in db.execute(select(Lease.state, func.count()).group_by(Lease.state)):
                leases.add_metric([state], n)
            gpus = db.scalar(
                select(func.coalesce(func.sum(LeaseMember.gpus), 0))
                .join(Lease, Lease.id == LeaseMember.lease_id)
                .where(Lease.state.in_(active), LeaseMember.state.in_(["assigned", "attached"]))
            )
            leased.add_metric([], gpus)
            pending = db.execute(
                select(func.count(), func.min(Job.created_at)).where(Job.state == "pending")
            ).one()
            queue.add_metric([], pending[0])
            wait.add_metric([], 0.0 if pending[1] is None else self.clock() - pending[1])
            seconds = db.execute(
                select(
                    LeaseMember.seller_id,
                    func.sum(
                        (LeaseMember.detached_at - LeaseMember.attached_at) * LeaseMember.gpus
                    ),
                )
                .where(LeaseMember.attached_at.is_not(None), LeaseMember.detached_at.is_not(None))
                .group_by(LeaseMember.seller_id)
            )
            for seller, total in seconds:
                sold.add_metric([seller], float(total or 0))
            paid = db.execute(
                select(LedgerEntry.account, func.sum(LedgerEntry.amount_micros))
                .where(LedgerEntry.account.like("seller:%"))
                .group_by(LedgerEntry.account)
            )
            for account, total in paid:
                earned.add_metric([account.split(":", 1)[1]], float(total or 0))
        yield from (leases, leased, queue, wait, sold, earned)


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


class MarketMeters:
    """What the scheduler counts as it goes: GPU-seconds sold, money settled by recipient
    (`sellers`, `platform`), and how long matched jobs queued."""

    def __init__(self, registry: CollectorRegistry):
        self.sold = Counter(
            "computeswarm_gpu_seconds_sold", "Metered GPU-seconds settled.", registry=registry
        )
        self.revenue = Counter(
            "computeswarm_revenue_micros",
            "Money settled from buyers, by recipient.",
            ["to"],
            registry=registry,
        )
        self.match_wait = Histogram(
            "computeswarm_match_wait_seconds",
            "Seconds from a job joining the queue (submit or requeue) to its lease's match.",
            registry=registry,
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
        )

    def record_sale(self, usages) -> None:
        for usage in usages:
            self.sold.inc(usage.gpus * usage.seconds)
            self.revenue.labels("sellers").inc(usage.seller_micros)
            self.revenue.labels("platform").inc(usage.fee_micros)

    def record_match(self, wait_s: float) -> None:
        self.match_wait.observe(wait_s)
