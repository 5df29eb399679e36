"""The gateway's backend on the coordinator: where a buyer's serve job answers, and metering
each request into the ledger.

Metering: each request's replica time is priced at the lease's price per GPU-hour and
moved from the lease's escrow to its `metered:` account as it happens; at settlement the
lease is billed for its GPU time as every lease is, and the bill less the metered sum is
the time the replicas stood idle.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from computeswarm.cluster.gateway.core import RequestUsage, ServeTarget
from computeswarm.cluster.kinds import serve
from computeswarm.cluster.kinds.base import Where
from computeswarm.cluster.leases.states import LeaseState
from computeswarm.cluster.ledger import journal as ledger
from computeswarm.cluster.store.db import Store
from computeswarm.cluster.store.models import Job, Lease, ServeRequest
from computeswarm.jobs.spec import ServeJob
from computeswarm.jobs.states import JobState

log = logging.getLogger("computeswarm.gateway")


def request_cost_micros(gpu_seconds: float, price_per_gpu_hour_micros: int) -> int:
    """A request's replica time at the lease's price: the ledger's rule (whole micro-units,
    rounded down), but on fractional seconds - requests are short."""
    return int(gpu_seconds * price_per_gpu_hour_micros) // 3600


class StoreBackend:
    """The gateway's backend: where a buyer's serve job answers, and metering.

    A target is looked up in the store once and then kept for `TARGET_TTL_S`: a request
    does not pay a transaction and a spec parse. A job that ended is seen within the TTL;
    its requests in between fail upstream with a retryable error. Metering is written in
    batches every `FLUSH_S`; a coordinator crash loses at most that window of records."""

    TARGET_TTL_S = 2.0
    FLUSH_S = 0.25

    def __init__(self, store: Store, clock: Callable[[], float], where: Callable[[], Where]):
        # `where`: the lease heads' address and the object store (serve.json lives there).
        self.store, self.clock, self.where = store, clock, where
        self._targets: dict[str, tuple[float, str, ServeTarget | None]] = {}
        self._lock = threading.Lock()
        self._pending: list[tuple[RequestUsage, float]] = []
        self._writer: threading.Thread | None = None

    def target(self, job_id: str, account_id: str) -> ServeTarget | None:
        now = time.monotonic()
        cached = self._targets.get(job_id)
        if cached and now - cached[0] < self.TARGET_TTL_S and cached[1] == account_id:
            return cached[2]
        found = self._look_up(job_id, account_id)
        if len(self._targets) > 10_000:
            self._targets.clear()
        self._targets[job_id] = (now, account_id, found)
        return found

    def _look_up(self, job_id: str, account_id: str) -> ServeTarget | None:
        with self.store.transaction() as db:
            job = db.get(Job, job_id)
            if job is None or job.account_id != account_id or job.kind != serve.ServeKind.name:
                return None
            if job.state != JobState.RUNNING.value or not job.lease_id:
                return None
            lease = db.get(Lease, job.lease_id)
            if lease is None or lease.state != LeaseState.RUNNING.value:
                return None
            spec = ServeJob.model_validate(job.spec)
            where = self.where()
            if serve.status(where.objects, job).get("state") != serve.READY:
                return None
            return ServeTarget(
                url=f"http://{where.head_ip}:{serve.serve_port(lease)}",
                max_tokens=spec.max_tokens,
                requests_per_second=spec.rate_limits.requests_per_second,
                tokens_per_second=spec.rate_limits.tokens_per_second,
            )

    def record(self, usage: RequestUsage) -> None:
        """Queue a request's metering; a writer thread stores queued requests together
        (one transaction and one ledger entry per lease per batch, not per request)."""
        with self._lock:
            self._pending.append((usage, self.clock()))
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(target=self._write_loop, daemon=True)
                self._writer.start()

    def flush(self) -> None:
        """Store every queued request now (the writer does this every FLUSH_S)."""
        with self._lock:
            batch, self._pending = self._pending, []
        if batch:
            self._store(batch)

    def _write_loop(self) -> None:
        while True:
            time.sleep(self.FLUSH_S)
            try:
                self.flush()
            except Exception:  # the store is down for a moment: the batch is lost, logged
                log.exception("serve metering: could not store a batch")
            with self._lock:
                if not self._pending:
                    self._writer = None
                    return

    def _store(self, batch: list[tuple[RequestUsage, float]]) -> None:
        with self.store.transaction() as db:
            per_lease: dict[str, int] = {}  # metered in this batch
            left: dict[str, int] = {}  # escrow not yet metered
            for usage, at in batch:
                job = db.get(Job, usage.job_id)
                if job is None or not job.lease_id:
                    continue
                lease = db.get(Lease, job.lease_id)
                if lease.id not in left:
                    per_lease[lease.id] = 0
                    left[lease.id] = max(0, ledger.balance(db, ledger.escrow(lease.id)))
                per_gpu = lease.price_per_hour_micros // max(1, _gpus(job))
                cost = min(request_cost_micros(usage.gpu_seconds, per_gpu), left[lease.id])
                left[lease.id] -= cost
                per_lease[lease.id] += cost
                db.add(_row(usage, job.id, lease.id, cost, at))
            now = self.clock()
            for lease_id, cost in per_lease.items():
                if cost:
                    ledger.post(db, ledger.meter(lease_id, cost), now)


def _row(usage: RequestUsage, job_id: str, lease_id: str, cost: int, at: float) -> ServeRequest:
    return ServeRequest(
        job_id=job_id,
        lease_id=lease_id,
        key_id=usage.key_id,
        model=usage.model[:64],
        route=usage.route,
        status=usage.status,
        stream=usage.stream,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        gpu_seconds=usage.gpu_seconds,
        seconds=usage.seconds,
        cost_micros=cost,
        created_at=at,
    )


def _gpus(job: Job) -> int:
    return ServeJob.model_validate(job.spec).resources.gpus.count
