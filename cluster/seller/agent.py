"""The seller agent: publishes the offer, heartbeats, and measures the path to the hub.

It runs inside the seller's workload namespace (where the WireGuard interface is), so
everything it sends goes over the overlay - the same path Ray traffic will take.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from computeswarm.cluster.client import CoordinatorClient
from computeswarm.cluster.errors import ApiError, CoordinatorUnreachable, NotFound, Unauthorized
from computeswarm.cluster.seller.uptime import UptimeLog
from computeswarm.cluster.seller.workers import LeaseWorkers
from computeswarm.cluster.sellers.gpus import Gpu

log = logging.getLogger("computeswarm.agent")
STATUS_FILE = "agent-status.json"
PID_FILE = "agent.pid"


@dataclass(frozen=True)
class OfferTerms:
    price_per_gpu_hour: str
    max_lease_hours: int = 24
    available_hours: float | None = None  # from when the agent starts; None: open-ended


class SellerAgent:
    """One loop: offer once, then a heartbeat every `interval_s`, measuring now and then."""

    def __init__(
        self,
        client: CoordinatorClient,
        seller_id: str,
        gpus: list[Gpu],
        offer: OfferTerms,
        *,
        interval_s: float,
        measure_every_s: float = 60.0,
        state_dir: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        workers: LeaseWorkers | None = None,
    ):
        self.client = client
        self.seller_id = seller_id
        self.gpus = gpus
        self.offer = offer
        self.interval_s = interval_s
        self.measure_every_s = measure_every_s
        self.state_dir = state_dir
        self.clock = clock
        self.offer_published = False
        self.last_measured: float | None = None
        self.rtt_ms: float | None = None
        self.bandwidth_mbps: float | None = None
        self.last_state: str | None = None
        self.last_error: str | None = None
        self.workers = workers  # None: this agent runs no Ray nodes (tests, dry runs)
        self._reported: dict[str, str] = {}
        self.uptime = UptimeLog(state_dir) if state_dir else None

    def run(self, stop: threading.Event) -> int:
        """Until `stop` is set or the coordinator says this seller is gone (exit code 3)."""
        self._write_pid()
        if self.workers:
            self.workers.stop_leftovers()
        try:
            while not stop.is_set():
                try:
                    self.tick()
                except (NotFound, Unauthorized) as e:
                    log.error("the coordinator no longer knows this seller: %s", e)
                    self._write_status(error=str(e))
                    return 3
                self._wait(stop)
            return 0
        finally:
            if self.workers:
                self.workers.stop_all()

    def tick(self) -> None:
        """One round: publish the offer if not yet done, measure if due, heartbeat, and
        start or stop lease nodes as the reply says."""
        try:
            if not self.offer_published:
                hours = self.offer.available_hours
                self.client.put_offer(
                    self.seller_id,
                    price_per_gpu_hour=self.offer.price_per_gpu_hour,
                    max_lease_hours=self.offer.max_lease_hours,
                    available_until=time.time() + hours * 3600 if hours else None,
                )
                self.offer_published = True
            if self._measure_due():
                self._measure()
            workers = self.workers.statuses() if self.workers else {}
            reply = self.client.heartbeat(
                self.seller_id,
                gpus=[g.to_dict() for g in self.gpus],
                simulated=any(g.simulated for g in self.gpus),
                rtt_ms=self.rtt_ms,
                bandwidth_mbps=self.bandwidth_mbps,
                workers=workers,
            )
            self._reported = workers
            self.last_state, self.last_error = reply["state"], None
            if self.uptime:
                self.uptime.beat(time.time())
            if self.workers:
                self.workers.reconcile(reply.get("assignments", []))
        except (NotFound, Unauthorized):
            raise
        except (CoordinatorUnreachable, ApiError) as e:
            # Keep trying: the coordinator may be restarting or the link briefly down.
            self.last_error = str(e)
            log.warning("heartbeat failed: %s", e)
        self._write_status()

    def _wait(self, stop: threading.Event) -> None:
        """Sleep until the next heartbeat, but report a lease node's change at once."""
        deadline = self.clock() + self.interval_s
        while not stop.is_set() and self.clock() < deadline:
            if self.workers and self.workers.statuses() != self._reported:
                return
            stop.wait(min(0.25, self.interval_s))

    def _measure_due(self) -> bool:
        return (
            self.last_measured is None or self.clock() - self.last_measured >= self.measure_every_s
        )

    def _measure(self) -> None:
        self.last_measured = self.clock()
        self.rtt_ms = round(self.client.rtt_ms(), 3)
        self.bandwidth_mbps = round(self.client.bandwidth_mbps(), 1)

    def _write_pid(self) -> None:
        if self.state_dir:
            (self.state_dir / PID_FILE).write_text(f"{os.getpid()}\n")

    def _write_status(self, error: str | None = None) -> None:
        if not self.state_dir:
            return
        status = {
            "seller_id": self.seller_id,
            "state": self.last_state,
            "error": error or self.last_error,
            "rtt_ms": self.rtt_ms,
            "bandwidth_mbps": self.bandwidth_mbps,
            "updated_at": time.time(),
            "pid": os.getpid(),
        }
        if self.workers and self.workers.datasets:
            status["datasets"] = {
                "bytes_fetched": self.workers.datasets.bytes_fetched,
                "cache_bytes": self.workers.datasets.cache.size(),
            }
        tmp = self.state_dir / (STATUS_FILE + ".tmp")
        tmp.write_text(json.dumps(status))
        tmp.replace(self.state_dir / STATUS_FILE)
