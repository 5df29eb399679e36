"""The lease scheduler: forms, runs and ends leases, acting on the market's decisions.

One loop (a coordinator thread) moves every job and lease along, one phase a module:

    pending job --match--> lease matched (escrow held, sellers leased)        match.py
    matched --start head--> provisioning --all workers attached--> running    provision.py
    running --job ends / cancel / budget or time spent / seller lost--> ...   watch.py
    releasing --workers detached, head stopped, ledger settled--> closed      release.py

Decisions are made in store transactions; processes (Ray heads, `heads.py`) and HTTP
calls (the lease's Jobs API, `ray_jobs.py`) happen between them, never inside one. What
a job's kind adds (its driver, records, model) comes from its `JobKind` (`cluster/kinds`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from computeswarm.cluster.leases import match, provision, release, restart, watch
from computeswarm.cluster.leases.context import Leasing, head_of
from computeswarm.cluster.store.models import Job, Lease
from computeswarm.jobs.states import JobState


class LeaseScheduler:
    def __init__(self, ctx: Leasing, sync_fence: Callable[[], None] = lambda: None):
        self.ctx = ctx
        self.sync_fence = sync_fence
        self._lock = threading.Lock()  # one tick at a time

    @property
    def head_ip(self) -> str:
        """Where lease members reach lease heads: the hub's overlay address."""
        return self.ctx.head_ip()

    def tick(self) -> None:
        with self._lock:
            now = self.ctx.clock()
            match.match_pending(self.ctx, now)
            self.sync_fence()  # members reach their head before they are told to start
            provision.provision(self.ctx, now)
            watch.watch(self.ctx, now)
            release.release(self.ctx, now)
            self.sync_fence()
            release.drop_finished_uploads(self.ctx)

    # -- what the services call -----------------------------------------------------------

    def asks_now(self, db, now: float) -> list:
        return match.asks_now(db, now)

    def start_release(self, db, lease: Lease, reason: str, job_state: JobState) -> None:
        release.start_release(self.ctx, db, lease, reason, job_state)

    def attach_joined(self, now: float) -> None:
        provision.attach_joined(self.ctx, now)

    def job_logs(self, job_id: str) -> str:
        with self.ctx.store.transaction() as db:
            job = db.get(Job, job_id)
            lease = db.get(Lease, job.lease_id) if job and job.lease_id else None
            head = head_of(lease) if lease and job.submission_id else None
        return self.ctx.ray_jobs.logs(job_id, head)

    def job_log_path(self, job_id: str):
        return self.ctx.ray_jobs.log_path(job_id)

    # -- lifecycle --------------------------------------------------------------------------

    def stop_all(self) -> None:
        """Stop every lease head this coordinator runs (on shutdown): none is left behind."""
        self.ctx.heads.stop_all()

    def stop_orphaned_heads(self) -> list[str]:
        return restart.stop_orphaned_heads(self.ctx)
