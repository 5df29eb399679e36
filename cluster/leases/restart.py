"""After a coordinator crash: the heads of leases from before are still running. Ask each
how its job ended meanwhile and end its lease; its release keeps the driver's log and
stops the head. A job Ray saw finish keeps that outcome, billed to when it finished; the
rest fail (or, resumable kinds, go back to the queue) with the reason."""

from __future__ import annotations

import logging

from sqlalchemy import select

from computeswarm.cluster.kinds import kind_of
from computeswarm.cluster.leases.context import Leasing, head_of
from computeswarm.cluster.leases.heads import stop_head
from computeswarm.cluster.leases.release import requeue, start_release
from computeswarm.cluster.leases.states import LeaseState
from computeswarm.cluster.leases.watch import RAY_OUTCOMES
from computeswarm.cluster.nodes.ray_nodes import process_start, session_pids
from computeswarm.cluster.store.models import Job, Lease
from computeswarm.jobs.states import JobState

log = logging.getLogger("computeswarm.scheduler")
ORPHAN_STOP_GRACE_S = 5.0


def stop_orphaned_heads(ctx: Leasing) -> list[str]:
    """The leases whose left-over head is stopped: now, or (a lease that was running) by
    the release that first keeps what its driver printed, which lives on its nodes."""
    with ctx.store.transaction() as db:
        leases = [
            (lease.id, lease.head_session, lease.head_started, lease.state)
            for lease in db.scalars(select(Lease).where(Lease.head_session.is_not(None)))
        ]
    stopped = []
    for lease_id, session, started, state in leases:
        # Ours only if the PID still names the process we started: after a reboot or
        # PID reuse it may lead an unrelated program's session.
        ours = started is not None and process_start(session) == started
        alive = ours and bool(session_pids(session))
        active = state in (LeaseState.PROVISIONING.value, LeaseState.RUNNING.value)
        releasing = active or state == LeaseState.RELEASING.value
        if active:
            ended = _ended_meanwhile(ctx, lease_id) if alive else None
            with ctx.store.transaction() as db:
                _end_after_restart(ctx, db, db.get(Lease, lease_id), ended)
        if not alive:
            with ctx.store.transaction() as db:
                db.get(Lease, lease_id).head_session = None  # nothing to stop; never a stranger
            continue
        if not releasing:
            stop_head(session, lease_id, ORPHAN_STOP_GRACE_S)
        stopped.append(lease_id)
    return stopped


def _ended_meanwhile(ctx: Leasing, lease_id: str) -> tuple[JobState, float] | None:
    """(outcome, when) of the lease's job if Ray saw it finish, else None."""
    with ctx.store.transaction() as db:
        lease = db.get(Lease, lease_id)
        job = db.get(Job, lease.job_id)
        submitted = bool(job and job.submission_id)
        head, job_id = head_of(lease), lease.job_id
    if not submitted:
        return None
    info = ctx.ray_jobs.info(head, job_id)  # None: the head no longer answers
    outcome = RAY_OUTCOMES.get(info.status) if info else None
    if outcome is None or not info.end_time:
        return None
    return outcome, info.end_time


def _end_after_restart(ctx: Leasing, db, lease: Lease, ended) -> None:
    reason = "the coordinator restarted"
    job = db.get(Job, lease.job_id)
    if ended is not None:
        outcome, when = ended
        why = "" if outcome is JobState.SUCCEEDED else f"the job ended {outcome.value}"
        start_release(ctx, db, lease, why, outcome)
        # Billed until the job ended, not through the coordinator's outage.
        lease.ended_at = max(lease.started_at or when, min(when, lease.ended_at))
    elif kind_of(job).resumable and job.state == JobState.RUNNING.value:
        requeue(ctx, db, lease, reason)
    else:
        start_release(ctx, db, lease, reason, JobState.FAILED)
