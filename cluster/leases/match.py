"""pending job --match--> lease matched: escrow held, sellers leased, files decided.

The market (`cluster/market/`) decides; this phase reads its inputs from the store and
writes its decision back, in one transaction.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections import Counter
from pathlib import Path

from sqlalchemy import select

from computeswarm.cluster.kinds import kind_of
from computeswarm.cluster.leases.context import Leasing, end_job
from computeswarm.cluster.leases.heads import HEAD_SLOTS
from computeswarm.cluster.leases.release import why
from computeswarm.cluster.leases.states import (
    ACTIVE_LEASE_STATES,
    LeaseState,
    MemberState,
    values,
)
from computeswarm.cluster.ledger import journal as ledger
from computeswarm.cluster.market.batch import place_round
from computeswarm.cluster.market.book import Match, OrderBook
from computeswarm.cluster.market.orders import ask_for, bid_for, reliability
from computeswarm.cluster.nodes import sandbox
from computeswarm.cluster.sellers.states import SellerEvent, SellerState, transition
from computeswarm.cluster.store.models import Job, Lease, LeaseMember, Offer, Seller
from computeswarm.jobs.money import money_text
from computeswarm.jobs.spec import AnyJob, job_from_record
from computeswarm.jobs.states import JobState, job_transition

log = logging.getLogger("computeswarm.scheduler")
JOIN_TRIES = 3  # per seller and lease: node starts that may fail before it is passed over


@dataclasses.dataclass(frozen=True)
class Opening:
    """A matched job's lease, decided before anything of it is written."""

    job: Job
    spec: AnyJob
    match: Match
    port: int
    escrow: int
    files: dict[str, list[str]]


def match_pending(ctx: Leasing, now: float) -> None:
    with ctx.store.transaction() as db:
        jobs = db.scalars(
            select(Job).where(Job.state == JobState.PENDING.value).order_by(Job.created_at)
        ).all()
        if not jobs:
            return
        book = OrderBook(asks_now(db, now), now, ctx.market.fee_bps)
        used_ports = db.scalars(
            select(Lease.port_base).where(Lease.state.in_(values(ACTIVE_LEASE_STATES)))
        ).all()
        # Every job that may be matched now is one round: the market places its bids
        # together (`place_round`), not each in turn against what the earlier took.
        ready = []
        for job in jobs:
            # One bad job (a spec this code cannot render, a missing model) fails alone
            # with its reason; the rest of the queue is matched as usual. Nothing of a
            # job is written before `open_lease`, so a failure leaves no half-lease.
            try:
                spec = _ready(ctx, db, job, used_ports, now)
            except Exception as e:
                _cannot_match(job, e, now)
                continue
            if spec is not None:
                ready.append((job, spec))
        decisions = place_round(book, [bid_for(job.id, spec) for job, spec in ready])
        for (job, spec), decision in zip(ready, decisions, strict=True):
            try:
                opening = _opening(ctx, db, job, spec, decision, used_ports, now)
            except Exception as e:
                _cannot_match(job, e, now)
                continue
            if opening is not None:
                used_ports = [*used_ports, opening.port]
                ctx.on_match(now - _waiting_since(db, job))
                open_lease(db, opening, now)


def _cannot_match(job: Job, error: Exception, now: float) -> None:
    log.exception("job %s: cannot be matched", job.id)
    end_job(job, JobState.FAILED, now, f"cannot lease: {why(error)}")


def _waiting_since(db, job: Job) -> float:
    """When the job joined the queue: its submit, or (requeued) its last lease's end."""
    earlier = db.get(Lease, job.lease_id) if job.lease_id else None
    return (earlier.ended_at if earlier else None) or job.created_at


def _ready(ctx: Leasing, db, job: Job, used_ports, now: float) -> AnyJob | None:
    """The job's spec if it may be matched now; None: it waits, or has ended, with its
    reason."""
    if job.lease_id and db.get(Lease, job.lease_id).state in values(ACTIVE_LEASE_STATES):
        return None  # requeued: its escrow comes back when the old lease settles
    spec = job_from_record(job.spec)
    if not _funded(db, job, spec, now):
        return None
    if ctx.heads.free_block(used_ports) is None:
        job.reason = f"waiting for a lease slot: all {HEAD_SLOTS} on this coordinator are in use"
        return None
    return spec


def _funded(db, job: Job, spec: AnyJob, now: float) -> bool:
    """Whether the buyer can put the job's escrow aside now; else the job fails, saying so."""
    escrow = spec.escrow_micros
    funds = ledger.balance(db, ledger.buyer(job.account_id))
    if funds >= escrow:
        return True
    reason = (
        f"insufficient funds: {money_text(funds)} available, {money_text(escrow)} "
        "needed in escrow (budget, or max price x GPUs x max_duration)"
    )
    end_job(job, JobState.FAILED, now, reason)
    return False


def _opening(ctx: Leasing, db, job: Job, spec: AnyJob, decision, used_ports, now: float):
    """The job's `Opening` for the market's decision, or None: the job waits, or has
    ended, with its reason."""
    if not isinstance(decision, Match):
        if spec.queue:
            job.reason = f"waiting for supply: {decision.reason}"
        else:
            end_job(job, JobState.FAILED, now, f"no match (queue: false): {decision.reason}")
        return None
    if not _funded(db, job, spec, now):  # an earlier job of the round took the funds
        return None
    port = ctx.heads.free_block(used_ports)
    if port is None:  # the round matched more jobs than there are slots left
        job.reason = f"waiting for a lease slot: all {HEAD_SLOTS} on this coordinator are in use"
        return None
    files = lease_files(ctx, db, job, spec)  # what its sandboxes see
    if sandbox.check().ok:  # the lease's uid writes its run folder, on every host
        for folder in files["write"]:
            sandbox.hand_over(Path(folder), sandbox.lease_uid(port))
    return Opening(job, spec, decision, port, spec.escrow_micros, files)


def lease_files(ctx: Leasing, db, job: Job, spec: AnyJob) -> dict[str, list[str]]:
    """Which host files a lease's sandboxes see beyond the system's, decided by the
    coordinator when it opens the lease: only what its kind names (none does now). Never
    anything a spec or an upload names by itself. The job's upload is not among them: Ray
    ships the working dir to every node, and runs, status and model versions go through
    the object store, so no node of a lease reads the coordinator's disk."""
    return kind_of(job).lease_files(db, job, spec, ctx.where())


def open_lease(db, opening: Opening, now: float) -> None:
    job, match = opening.job, opening.match
    lease = Lease(
        id=f"l-{secrets.token_hex(6)}",
        account_id=job.account_id,
        job_id=job.id,
        state=LeaseState.MATCHED.value,
        reason="",
        token=secrets.token_urlsafe(24),
        port_base=opening.port,
        price_per_hour_micros=match.price_per_hour_micros,
        escrow_micros=opening.escrow,
        created_at=now,
        deadline=now + opening.spec.max_duration,
        files=opening.files,
    )
    db.add(lease)
    db.flush()
    for index, allocation in enumerate(match.allocations):
        assign(db, lease.id, allocation, driver=index == 0, now=now)
    ledger.post(db, ledger.hold(job.account_id, lease.id, opening.escrow), now)
    job.state = job_transition(JobState(job.state), JobState.SCHEDULED).value
    job.lease_id, job.reason = lease.id, ""
    log.info(
        "job %s matched: lease %s on %s at %d micros/h",
        job.id,
        lease.id,
        [a.seller_id for a in match.allocations],
        match.price_per_hour_micros,
    )


def asks_now(db, now: float) -> list:
    """Every online seller's ask, as offered now."""
    rows = db.execute(
        select(Seller, Offer)
        .join(Offer, Offer.seller_id == Seller.id)
        .where(Seller.state == SellerState.ONLINE.value, Seller.left_at.is_(None))
    ).all()
    asks = []
    for seller, offer in rows:
        if offer.available_from and offer.available_from > now:
            continue
        ask = ask_for(
            seller.id,
            seller.gpus or [],
            offer.price_per_gpu_hour_micros,
            reliability(seller.leases_completed, seller.leases_lost),
            offer.max_lease_hours,
            offer.available_until,
        )
        if ask:
            asks.append(ask)
    return asks


def replacement(ctx: Leasing, db, lease: Lease, job: Job, now: float):
    """The market's pick of one seller for `job`'s lease, from sellers not in it: never one
    it lost after its node had joined; one whose node only failed to start (a raylet that
    timed out on a loaded head, the seller still there) may try again, a few times."""
    history = list(db.scalars(select(LeaseMember).where(LeaseMember.lease_id == lease.id)))
    excluded = {m.seller_id for m in history if not _failed_join(m)}
    tries = Counter(m.seller_id for m in history if _failed_join(m))
    excluded |= {seller for seller, n in tries.items() if n >= JOIN_TRIES}
    asks = [a for a in asks_now(db, now) if a.seller_id not in excluded]
    single = dataclasses.replace(bid_for(job.id, job_from_record(job.spec)), nodes=1)
    return OrderBook(asks, now, ctx.market.fee_bps).place(single)


def _failed_join(member: LeaseMember) -> bool:
    """A member dropped before its node ever joined."""
    return member.state == MemberState.DROPPED.value and member.attached_at is None


def assign(db, lease_id: str, allocation, *, driver: bool, now: float) -> Seller:
    """Add a seller to a lease at its allocated price; the seller becomes leased."""
    db.add(
        LeaseMember(
            lease_id=lease_id,
            seller_id=allocation.seller_id,
            gpus=allocation.gpus,
            ask_micros=allocation.ask_micros,
            price_micros=allocation.price_micros,
            driver=driver,
            state=MemberState.ASSIGNED.value,
            assigned_at=now,
        )
    )
    seller = db.get(Seller, allocation.seller_id)
    seller.state = transition(SellerState(seller.state), SellerEvent.LEASE).value
    return seller
