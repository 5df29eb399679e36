"""running --job ends / cancel / budget or time spent / seller lost--> releasing --> settled.

Releasing stops the job, keeps its log and records, registers its model, settles the
ledger and frees the sellers; the head is stopped (and its temp dir removed) off the
tick. Each step is guarded: a driver's malformed record or log never keeps a lease from
settling (escrow held forever) or its head from stopping.
"""

from __future__ import annotations

import logging
import shutil

from sqlalchemy import select

from computeswarm.cluster.kinds import kind_of
from computeswarm.cluster.leases.context import Leasing, end_job, head_of, members
from computeswarm.cluster.leases.states import (
    ACTIVE_MEMBER_STATES,
    SETTLED_LEASE_STATES,
    LeaseState,
    MemberState,
    lease_transition,
    values,
)
from computeswarm.cluster.ledger import journal as ledger
from computeswarm.cluster.sellers.states import SellerEvent, SellerState, transition
from computeswarm.cluster.store.models import Job, Lease, LeaseMember, Seller
from computeswarm.errors import ComputeSwarmError
from computeswarm.jobs.states import JobState, job_transition

log = logging.getLogger("computeswarm.scheduler")


# -- decisions (in the caller's transaction) --------------------------------------------------


def start_release(ctx: Leasing, db, lease: Lease, reason: str, job_state: JobState) -> None:
    """End the lease, and its job with `job_state` unless the job has ended already."""
    lease.state = lease_transition(LeaseState(lease.state), LeaseState.RELEASING).value
    lease.reason = reason
    # Metering stops now: stopping the job, saving its logs and tearing the cluster
    # down afterwards are not the buyer's time.
    lease.ended_at = ctx.clock()
    job = db.get(Job, lease.job_id)
    if job and not JobState(job.state).is_terminal:
        end_job(job, job_state, ctx.clock(), reason)


def requeue(ctx: Leasing, db, lease: Lease, reason: str) -> None:
    """End the lease but not its job: the job waits for a new lease and resumes there
    (sweeps restore their Tune experiment from the run folder; serve jobs redeploy)."""
    lease.state = lease_transition(LeaseState(lease.state), LeaseState.RELEASING).value
    lease.reason, lease.ended_at = reason, ctx.clock()
    job = db.get(Job, lease.job_id)
    job.state = job_transition(JobState(job.state), JobState.PENDING).value
    job.reason = f"requeued ({reason}): resumes on a new lease"
    log.warning("job %s requeued: %s", job.id, reason)


def driver_lost(ctx: Leasing, db, lease: Lease, job: Job, reason: str) -> None:
    """A resumable kind goes back to the queue; the others fail."""
    if kind_of(job).resumable:
        requeue(ctx, db, lease, reason)
    else:
        start_release(ctx, db, lease, reason, JobState.FAILED)


def drop(db, member: LeaseMember) -> None:
    """A lost member, handled (replaced, or its lease ends): its seller, if it is still
    leased (its node failed to start or died, but its agent is there), is free again."""
    member.state = MemberState.DROPPED.value
    seller = db.get(Seller, member.seller_id)
    if seller.state == SellerState.LEASED.value:
        seller.state = transition(SellerState.LEASED, SellerEvent.RELEASE).value


def lost_member(db, lease_id: str) -> LeaseMember | None:
    return db.scalars(
        select(LeaseMember).where(
            LeaseMember.lease_id == lease_id,
            LeaseMember.state == MemberState.LOST.value,
            LeaseMember.detached_at.is_not(None),
        )
    ).first()


def fail_alone(ctx: Leasing, lease_id: str, what: str, error: Exception) -> None:
    """One lease broke: it ends with the reason, the tick goes on for the others."""
    log.exception("lease %s: %s", lease_id, what)
    with ctx.store.transaction() as db:
        lease = db.get(Lease, lease_id)
        if lease is not None and lease.state in values(
            (LeaseState.MATCHED, LeaseState.PROVISIONING, LeaseState.RUNNING)
        ):
            start_release(ctx, db, lease, f"{what}: {why(error)}", JobState.FAILED)


def why(error: Exception) -> str:
    """What a buyer is told of an error: our own errors say what to fix; anything else is
    ours to fix, and its text (paths, internals) stays in the operator's log."""
    if isinstance(error, ComputeSwarmError):
        return str(error)
    return f"internal error ({type(error).__name__}); the coordinator's log has the details"


# -- releasing -> closed | failed -------------------------------------------------------------


def release(ctx: Leasing, now: float) -> None:
    with ctx.store.transaction() as db:
        releasing = [
            (head_of(lease), lease.head_session, lease.job_id)
            for lease in db.scalars(select(Lease).where(Lease.state == LeaseState.RELEASING.value))
        ]
    for head, session, job_id in releasing:
        lease_id = head.lease_id
        _guarded(lease_id, "stopping the job", ctx.ray_jobs.stop, lease_id, job_id)
        if not _guarded(lease_id, "saving the log", save_log, ctx, head, job_id):
            continue  # its driver's node has not answered yet: the next tick asks again
        _guarded(lease_id, "reading the last records", _last_records, ctx, job_id)
        _guarded(lease_id, "registering the model", _register_model, ctx, job_id)
        if ctx.objects:  # a key left by a failure here is revoked by the next sweep
            _guarded(lease_id, "revoking its store key", ctx.objects.revoke, lease_id)
        try:
            with ctx.store.transaction() as db:
                _settle(ctx, db, db.get(Lease, lease_id), ctx.clock())
        except Exception:
            log.exception("lease %s: settling failed; the next tick retries", lease_id)
            continue
        ctx.heads.stop_later(lease_id, session)
        ctx.ray_jobs.forget(lease_id)


def save_log(ctx: Leasing, head, job_id: str) -> bool:
    path = ctx.ray_jobs.log_path(job_id)
    with ctx.store.transaction() as db:
        if not JobState(db.get(Job, job_id).state).is_terminal:
            path = path.with_name(f"driver-{head.lease_id}.log")  # requeued: a later lease's
    return ctx.ray_jobs.save_log(head, job_id, path)


def _last_records(ctx: Leasing, job_id: str) -> None:
    with ctx.store.transaction() as db:
        job = db.get(Job, job_id)
        if job is not None:
            kind_of(job).on_release(db, job, ctx.where())


def _register_model(ctx: Leasing, job_id: str) -> None:
    """A succeeded job's model (a `lora` adapter, a sweep's best trial's) becomes the next
    version of its name."""
    try:
        with ctx.store.transaction() as db:
            job = db.get(Job, job_id)
            if job is None or job.state != JobState.SUCCEEDED.value:
                return
            version = kind_of(job).register(db, job, ctx.where(), ctx.clock())
            if version:
                job.reason = f"registered model {version['name']}@{version['version']}"
                log.info("job %s: %s", job_id, job.reason)
    except Exception as e:  # the job's result stays in its run folder either way
        log.warning("job %s: could not register its model: %s", job_id, e)
        with ctx.store.transaction() as db:
            db.get(Job, job_id).reason = f"finished, but the model was not registered: {e}"


def _settle(ctx: Leasing, db, lease: Lease, now: float) -> None:
    """Detach everyone, pay out of escrow, return the rest, free the sellers.

    A lease that never started its job (it failed to form: a node never joined, and the
    job was requeued or failed) bills nothing: waiting for the platform to assemble a
    cluster is not the buyer's time. Its requeued job would otherwise pay twice."""
    usages = []
    for member in members(db, lease.id, everyone=True):
        if member.state in values(ACTIVE_MEMBER_STATES):
            member.detached_at = (lease.ended_at or now) if member.attached_at else None
            member.state = MemberState.DETACHED.value
            seller = db.get(Seller, member.seller_id)
            if seller.state == SellerState.LEASED.value:
                seller.state = transition(SellerState.LEASED, SellerEvent.RELEASE).value
            if member.attached_at:
                seller.leases_completed += 1
        elif member.state == MemberState.LOST.value:
            drop(db, member)
        seconds = ledger.metered_seconds(member.attached_at, member.detached_at)
        if seconds and lease.started_at is not None:
            usages.append(
                ledger.Usage(
                    member.seller_id, member.gpus, seconds, member.ask_micros, member.price_micros
                )
            )
    txn = ledger.settle(
        lease.account_id,
        lease.id,
        lease.escrow_micros,
        usages,
        metered_micros=ledger.balance(db, ledger.metered(lease.id)),
    )
    ledger.post(db, txn, now)
    ctx.on_sale(usages)
    # A lease fails with its job; one ended by success or by the buyer's cancel closes.
    failed = db.get(Job, lease.job_id).state == JobState.FAILED.value
    lease.state = (LeaseState.FAILED if failed else LeaseState.CLOSED).value
    lease.ended_at = lease.ended_at or now
    lease.token = ""  # its cluster is gone: no credential outlives it (L4)
    log.info("lease %s %s: %s", lease.id, lease.state, lease.reason or "job done")


def drop_finished_uploads(ctx: Leasing) -> None:
    """A finished job's uploaded working_dir is deleted once its lease has settled (the
    release reads it: datasets' hashes, the registered model), and no longer counts
    against the buyer's quota. Its logs, run folder and models stay."""
    with ctx.store.transaction() as db:
        finished = db.execute(
            select(Job.id, Job.upload_path)
            .outerjoin(Lease, Lease.id == Job.lease_id)
            .where(
                Job.state.in_([s.value for s in JobState if s.is_terminal]),
                Job.upload_bytes > 0,
                (Lease.id.is_(None)) | Lease.state.in_(values(SETTLED_LEASE_STATES)),
            )
        ).all()
    for job_id, upload in finished:
        if upload:
            shutil.rmtree(upload, ignore_errors=True)
        with ctx.store.transaction() as db:
            db.get(Job, job_id).upload_bytes = 0


def _guarded(lease_id: str, what: str, step, *args) -> bool:
    """False only when the step says it is not done yet; a failed step is logged and
    releasing goes on without it."""
    try:
        return step(*args) is not False
    except Exception:
        log.exception("lease %s: %s failed; releasing goes on", lease_id, what)
        return True
