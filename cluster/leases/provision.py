"""matched --start head--> provisioning --all members attached--> running (job submitted).

Members are attached when the lease's head sees their Ray node alive, never on the
agent's word: a heartbeat saying `running` with no node behind it bills nothing.
"""

from __future__ import annotations

import logging

from sqlalchemy import select

from computeswarm.cluster.kinds import kind_of
from computeswarm.cluster.leases import match
from computeswarm.cluster.leases.context import Leasing, head_of, members
from computeswarm.cluster.leases.release import (
    drop,
    fail_alone,
    lost_member,
    requeue,
    start_release,
)
from computeswarm.cluster.leases.states import LeaseState, MemberState, lease_transition
from computeswarm.cluster.market.book import Match
from computeswarm.cluster.nodes.ray_nodes import process_start
from computeswarm.cluster.store.models import Job, Lease, LeaseMember, Seller
from computeswarm.errors import ComputeSwarmError
from computeswarm.jobs import contract
from computeswarm.jobs.spec import job_from_record
from computeswarm.jobs.states import JobState, job_transition

log = logging.getLogger("computeswarm.scheduler")
PROVISION_TIMEOUT_S = 180.0


def provision(ctx: Leasing, now: float) -> None:
    attach_joined(ctx, now)
    with ctx.store.transaction() as db:
        matched = [
            (lease.id, lease.port_base, lease.token)
            for lease in db.scalars(select(Lease).where(Lease.state == LeaseState.MATCHED.value))
        ]
    for lease_id, port, token in matched:
        try:
            process = ctx.heads.start(lease_id, port, token)
        except Exception as e:
            fail_alone(ctx, lease_id, "cannot start the lease's head", e)
            continue
        with ctx.store.transaction() as db:
            lease = db.get(Lease, lease_id)
            lease.state = lease_transition(LeaseState(lease.state), LeaseState.PROVISIONING).value
            lease.head_session = process.pid
            lease.head_started = process_start(process.pid)
    with ctx.store.transaction() as db:
        ready = []
        for lease in db.scalars(select(Lease).where(Lease.state == LeaseState.PROVISIONING.value)):
            present = members(db, lease.id)
            if lost := lost_member(db, lease.id):
                _replace_before_start(ctx, db, lease, lost, now)
            elif present and all(m.state == MemberState.ATTACHED.value for m in present):
                ready.append(lease.id)
            elif now - lease.created_at > PROVISION_TIMEOUT_S:
                reason = f"lease formation timed out ({PROVISION_TIMEOUT_S:.0f} s)"
                start_release(ctx, db, lease, reason, JobState.FAILED)
    for lease_id in ready:
        try:
            submit(ctx, lease_id, now)
        except Exception as e:
            fail_alone(ctx, lease_id, "cannot start the job", e)


def attach_joined(ctx: Leasing, now: float) -> None:
    """Members whose Ray node the lease head sees alive are attached (metering starts)."""
    with ctx.store.transaction() as db:
        waiting = db.execute(
            select(Lease, Seller.id, Seller.address)
            .join(LeaseMember, LeaseMember.lease_id == Lease.id)
            .join(Seller, Seller.id == LeaseMember.seller_id)
            .where(
                Lease.state.in_([LeaseState.PROVISIONING.value, LeaseState.RUNNING.value]),
                LeaseMember.state == MemberState.ASSIGNED.value,
            )
        ).all()
        heads = {lease.id: head_of(lease) for lease, _, _ in waiting}
    by_lease: dict[str, dict[str, str]] = {}
    for lease, seller_id, address in waiting:
        by_lease.setdefault(lease.id, {})[seller_id] = address
    for lease_id, expected in by_lease.items():
        alive = ctx.ray_jobs.nodes_alive(heads[lease_id])
        joined = [s for s, a in expected.items() if _joined(s, a, alive, ctx.loopback)]
        if not joined:
            continue
        with ctx.store.transaction() as db:
            for member in members(db, lease_id):
                if member.seller_id in joined and member.state == MemberState.ASSIGNED.value:
                    member.state, member.attached_at = MemberState.ATTACHED.value, now


def _joined(seller_id: str, address: str, alive: set[tuple[str, str]], loopback: bool) -> bool:
    """Is the seller's node in the head's list, labelled as its own and joined from its own
    overlay address (which WireGuard ties to the seller's key)? The `none` backend (loopback
    dev mode) has no real overlay addresses, and Ray reports loopback ones as the host's:
    there the label alone is checked."""
    if loopback:
        return any(seller == seller_id for seller, _ in alive)
    return (seller_id, address) in alive


def _replace_before_start(ctx: Leasing, db, lease: Lease, lost: LeaseMember, now: float) -> None:
    """A member's node failed to start (or its seller went offline) while the lease
    was forming: nothing ran yet, so another seller takes its place, the driver's role
    included; without one the job goes back to the queue rather than failing."""
    job = db.get(Job, lease.job_id)
    drop(db, lost)  # handled once: replaced, or the lease ends
    decision = match.replacement(ctx, db, lease, job, now)
    if not isinstance(decision, Match):
        reason = f"seller {lost.seller_id}'s node failed to join ({decision.reason})"
        requeue(ctx, db, lease, reason)
        return
    seller = match.assign(db, lease.id, decision.allocations[0], driver=lost.driver, now=now)
    log.warning(
        "lease %s: %s's node failed to join; %s takes its place",
        lease.id,
        lost.seller_id,
        seller.id,
    )


def submit(ctx: Leasing, lease_id: str, now: float) -> None:
    with ctx.store.transaction() as db:
        lease = db.get(Lease, lease_id)
        job = db.get(Job, lease.job_id)
        spec = job_from_record(job.spec)
        upload, job_id, head = job.upload_path, job.id, head_of(lease)
        if ctx.ray_jobs.client(head) is None:
            return  # the head's dashboard is not up yet: next tick
        try:
            kind = kind_of(job)
            ray_job = kind.render(db, job, spec, lease, ctx.where())
            grant = kind.object_grant(db, job, spec, ctx.where())
        except ComputeSwarmError as e:
            start_release(ctx, db, lease, f"cannot start the job: {e}", JobState.FAILED)
            return
    # The lease's own store key (network, so outside the transaction); revoked at release.
    store_env = ctx.objects.issue(lease_id, grant) if ctx.objects else {}
    runtime_env: dict = {
        "env_vars": {
            **spec.runtime_env.env_vars,
            **ray_job.env_vars,
            **store_env,
            contract.JOB_ID: job_id,
            contract.LEASE_ID: lease_id,
        }
    }
    if upload:
        runtime_env["working_dir"] = upload
    if spec.runtime_env.pip:
        runtime_env["pip"] = spec.runtime_env.pip
    try:
        submission = ctx.ray_jobs.submit(head, job_id, ray_job.entrypoint, runtime_env)
    except Exception as e:  # the head refused: end the lease with the reason
        with ctx.store.transaction() as db:
            reason = f"the lease's Ray cluster refused the job: {e}"
            start_release(ctx, db, db.get(Lease, lease_id), reason, JobState.FAILED)
        return
    with ctx.store.transaction() as db:
        lease, job = db.get(Lease, lease_id), db.get(Job, job_id)
        lease.state = lease_transition(LeaseState(lease.state), LeaseState.RUNNING).value
        lease.started_at = now
        job.state = job_transition(JobState(job.state), JobState.RUNNING).value
        job.submission_id, job.started_at = submission, now
    log.info("job %s submitted to lease %s", job_id, lease_id)
