"""The coordinator's side of `serve` jobs: the Ray Serve driver on the lease, and the
gateway's backend (which job answers where, and metering each request into the ledger).

Serve's HTTP proxy runs on the lease's head, on a port of the lease's own block, bound to
the hub's overlay address: only the coordinator (the gateway) and the lease's fenced
members can reach it. Buyers reach it through the gateway, with their API keys.

Metering: each request's replica time is priced at the lease's price per GPU-hour and
moved from the lease's escrow to its `metered:` account as it happens; at settlement the
lease is billed for its GPU time as every lease is, and the bill less the metered sum is
the time the replicas stood idle.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from computeswarm.cluster.gateway.core import RequestUsage, ServeTarget
from computeswarm.cluster.kinds.training import SPEC_FILE, RayJob
from computeswarm.cluster.leases.rules import LeaseState
from computeswarm.cluster.ledger import journal as ledger
from computeswarm.cluster.models import registry as model_registry
from computeswarm.cluster.nodes.ray_nodes import PortBlock
from computeswarm.cluster.store.models import Job, Lease, ServeRequest
from computeswarm.jobs.spec import ServeJob, adapter_is_path
from computeswarm.jobs.states import JobState

if TYPE_CHECKING:
    from computeswarm.cluster.coordinator import Coordinator

log = logging.getLogger("computeswarm.serve")
# -I: the buyer's working_dir (the current folder, and on PYTHONPATH) cannot shadow the
# driver's modules.
ENTRYPOINT = f"python -I -m computeswarm.serve.run {SPEC_FILE}"


def serve_dir(storage: Path, job: Job) -> Path:
    return storage / job.account_id / "serve" / job.id


def adapter_folders(db, job: Job, spec: ServeJob) -> dict[str, str]:
    """Served name -> absolute adapter folder: registered versions resolved for the job's
    owner (another buyer's name is not found), folders taken from the upload."""
    out = {}
    for name, ref in spec.adapters.items():
        if adapter_is_path(ref):
            out[name] = str((Path(job.upload_path) / ref).resolve())
        else:
            out[name] = model_registry.resolve(db, job.account_id, ref).artifact_path
    return out


def render(db, job: Job, spec: ServeJob, lease: Lease, head_ip: str, storage: Path) -> RayJob:
    folder = serve_dir(storage, job)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "serve.json").unlink(missing_ok=True)  # a new lease: not ready until it says so
    (Path(job.upload_path) / SPEC_FILE).write_text(json.dumps(job.spec))
    env = {
        "COMPUTESWARM_RUN_DIR": str(folder),
        "COMPUTESWARM_ADAPTERS": json.dumps(adapter_folders(db, job, spec)),
        "COMPUTESWARM_SERVE_HOST": head_ip,
        "COMPUTESWARM_SERVE_PORT": str(serve_port(lease)),
        "COMPUTESWARM_SERVE_PROXY": "HeadOnly",
    }
    return RayJob(ENTRYPOINT, env)


def serve_port(lease: Lease) -> int:
    return PortBlock(lease.port_base).serve


def status(storage: Path, job: Job) -> dict:
    try:
        return json.loads((serve_dir(storage, job) / "serve.json").read_text())
    except (OSError, ValueError):
        return {}


def request_cost_micros(gpu_seconds: float, price_per_gpu_hour_micros: int) -> int:
    """A request's replica time at the lease's price: the ledger's rule (whole micro-units,
    rounded down), but on fractional seconds - requests are short."""
    return int(gpu_seconds * price_per_gpu_hour_micros) // 3600


class ServeGateway:
    """The gateway's backend: where a buyer's serve job answers, and metering.

    A target is looked up in the store once and then kept for `TARGET_TTL_S`: a request
    does not pay a transaction and a spec parse. A job that ended is seen within the TTL;
    its requests in between fail upstream with a retryable error. Metering is written in
    batches every `FLUSH_S`; a coordinator crash loses at most that window of records."""

    TARGET_TTL_S = 2.0
    FLUSH_S = 0.25

    def __init__(self, coordinator: Coordinator):
        self.c = coordinator
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
        with self.c.store.transaction() as db:
            job = db.get(Job, job_id)
            if job is None or job.account_id != account_id or job.kind != "serve":
                return None
            if job.state != JobState.RUNNING.value or not job.lease_id:
                return None
            lease = db.get(Lease, job.lease_id)
            if lease is None or lease.state != LeaseState.RUNNING.value:
                return None
            spec = ServeJob.model_validate(job.spec)
            if status(self.c.storage_root, job).get("state") != "ready":
                return None
            return ServeTarget(
                url=f"http://{self.c.scheduler.head_ip}:{serve_port(lease)}",
                max_tokens=spec.max_tokens,
                requests_per_second=spec.rate_limits.requests_per_second,
                tokens_per_second=spec.rate_limits.tokens_per_second,
            )

    def record(self, usage: RequestUsage) -> None:
        """Queue a request's metering; a writer thread stores queued requests together
        (one transaction and one ledger entry per lease per batch, not per request)."""
        with self._lock:
            self._pending.append((usage, self.c.clock()))
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
        with self.c.store.transaction() as db:
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
            now = self.c.clock()
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


def usage_view(db, job: Job) -> dict:
    row = db.execute(
        select(
            func.count(ServeRequest.id),
            func.coalesce(func.sum(ServeRequest.prompt_tokens), 0),
            func.coalesce(func.sum(ServeRequest.completion_tokens), 0),
            func.coalesce(func.sum(ServeRequest.cost_micros), 0),
        ).where(ServeRequest.job_id == job.id)
    ).one()
    return {
        "requests": int(row[0]),
        "prompt_tokens": int(row[1]),
        "completion_tokens": int(row[2]),
        "metered_micros": int(row[3]),
    }


def _gpus(job: Job) -> int:
    return ServeJob.model_validate(job.spec).resources.gpus.count
