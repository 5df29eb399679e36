"""running: watch each lease's job, clock, budget and sellers; repair or end it.

A lost seller is replaced from the market when the job can go on without it; a lost
driver ends the lease (a resumable kind goes back to the queue instead).
"""

from __future__ import annotations

import logging

from sqlalchemy import select

from computeswarm.cluster.kinds import kind_of
from computeswarm.cluster.leases import match
from computeswarm.cluster.leases.context import Leasing, head_of, members
from computeswarm.cluster.leases.ray_jobs import DRIVER_NODE_LOST
from computeswarm.cluster.leases.release import (
    driver_lost,
    drop,
    fail_alone,
    lost_member,
    start_release,
)
from computeswarm.cluster.leases.rules import budget_end
from computeswarm.cluster.leases.states import (
    ACTIVE_MEMBER_STATES,
    LeaseState,
    MemberState,
    values,
)
from computeswarm.cluster.market.book import Match
from computeswarm.cluster.sellers.states import SellerEvent, SellerState, transition
from computeswarm.cluster.store.models import Job, Lease, LeaseMember, Seller
from computeswarm.jobs.states import JobState

log = logging.getLogger("computeswarm.scheduler")
RAY_OUTCOMES = {
    "SUCCEEDED": JobState.SUCCEEDED,
    "FAILED": JobState.FAILED,
    "STOPPED": JobState.CANCELLED,
}


def watch(ctx: Leasing, now: float) -> None:
    with ctx.store.transaction() as db:
        running = [
            (head_of(lease), lease.job_id)
            for lease in db.scalars(select(Lease).where(Lease.state == LeaseState.RUNNING.value))
        ]
        _lose_vanished_members(db, now)
    for head, job_id in running:
        try:
            _watch_one(ctx, head, job_id, now)
        except Exception as e:
            fail_alone(ctx, head.lease_id, "cannot watch the job", e)


def _watch_one(ctx: Leasing, head, job_id: str, now: float) -> None:
    """One running lease: its job's status, clock, budget, members and records."""
    info = ctx.ray_jobs.info(head, job_id)
    status, error = (info.status, info.error) if info else (None, None)
    with ctx.store.transaction() as db:
        lease, job = db.get(Lease, head.lease_id), db.get(Job, job_id)
        if status == "FAILED" and error in DRIVER_NODE_LOST:
            driver = next((m.seller_id for m in members(db, lease.id) if m.driver), "?")
            reason = f"seller {driver} (running the job's driver) was lost (Ray: {error})"
            driver_lost(ctx, db, lease, job, reason)
        elif status in RAY_OUTCOMES:
            final = RAY_OUTCOMES[status]
            reason = job.reason or (
                "" if final is JobState.SUCCEEDED else f"the job ended {status.lower()}"
            )
            start_release(ctx, db, lease, reason, final)
        elif now >= lease.deadline:
            start_release(ctx, db, lease, "max_duration reached", JobState.FAILED)
        # One tick early: the lease must end before use passes the escrow, or sellers
        # are paid below their ask and the platform its fee (M2).
        elif now + ctx.market.tick_s >= budget_end(
            (
                (m.attached_at, m.detached_at, m.gpus, m.price_micros)
                for m in members(db, lease.id, everyone=True)
            ),
            lease.escrow_micros,
        ):
            start_release(ctx, db, lease, "budget spent", JobState.FAILED)
        elif lost := lost_member(db, lease.id):
            _repair_or_fail(ctx, db, lease, lost, now)
        else:
            for seller_id in kind_of(job).on_tick(db, job, lease, ctx.where()):
                _let_go(db, lease, seller_id, now)


def _lose_vanished_members(db, now: float) -> None:
    """Members whose seller went offline are lost: metering stops at the last sign, or
    when the lease ended if that was first. Not in a releasing lease: it is over, and its
    release settles its members once it kept the driver's log from their nodes (after a
    coordinator restart every seller's last heartbeat is old; a lost member's seller would
    stop its node at its next heartbeat, and the log with it)."""
    rows = db.execute(
        select(LeaseMember, Seller, Lease)
        .join(Seller, Seller.id == LeaseMember.seller_id)
        .join(Lease, Lease.id == LeaseMember.lease_id)
        .where(
            LeaseMember.state.in_(values(ACTIVE_MEMBER_STATES)),
            Seller.state == SellerState.OFFLINE.value,
            Lease.state != LeaseState.RELEASING.value,
        )
    ).all()
    for member, seller, lease in rows:
        member.state = MemberState.LOST.value
        last_sign = min(now, seller.last_heartbeat or now, lease.ended_at or now)
        member.detached_at = max(member.attached_at or now, last_sign)
        seller.leases_lost += 1
        log.warning("lease %s lost seller %s", member.lease_id, seller.id)


def _repair_or_fail(ctx: Leasing, db, lease: Lease, lost: LeaseMember, now: float) -> None:
    job = db.get(Job, lease.job_id)
    drop(db, lost)  # handled once: replaced, or the lease ends
    if lost.driver:
        reason = f"seller {lost.seller_id} (running the job's driver) was lost"
        driver_lost(ctx, db, lease, job, reason)
        return
    decision = match.replacement(ctx, db, lease, job, now)
    if not isinstance(decision, Match):
        reason = (
            f"seller {lost.seller_id} was lost and no replacement is available ({decision.reason})"
        )
        start_release(ctx, db, lease, reason, JobState.FAILED)
        return
    seller = match.assign(db, lease.id, decision.allocations[0], driver=False, now=now)
    log.info("lease %s repaired: %s replaces %s", lease.id, seller.id, lost.seller_id)


def _let_go(db, lease: Lease, seller_id: str, now: float) -> None:
    """A member the job no longer needs leaves the lease now; it is billed until now."""
    member = db.scalars(
        select(LeaseMember).where(
            LeaseMember.lease_id == lease.id,
            LeaseMember.seller_id == seller_id,
            LeaseMember.state == MemberState.ATTACHED.value,
        )
    ).first()
    if member is None:
        return
    member.state, member.detached_at = MemberState.DETACHED.value, now
    seller = db.get(Seller, seller_id)
    if seller.state == SellerState.LEASED.value:
        seller.state = transition(SellerState.LEASED, SellerEvent.RELEASE).value
    seller.leases_completed += 1
    log.info("lease %s: seller %s released early (no work left for it)", lease.id, seller_id)
