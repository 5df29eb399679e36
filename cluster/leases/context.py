"""What every phase of the lease scheduler works with, passed explicitly."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from computeswarm.cluster.config import MarketConfig
from computeswarm.cluster.kinds.base import Where
from computeswarm.cluster.leases.heads import Heads
from computeswarm.cluster.leases.ray_jobs import Head, RayJobs
from computeswarm.cluster.leases.states import ACTIVE_MEMBER_STATES, values
from computeswarm.cluster.ledger.journal import Usage
from computeswarm.cluster.objects.plane import ObjectPlane
from computeswarm.cluster.store.db import Store
from computeswarm.cluster.store.models import Job, Lease, LeaseMember
from computeswarm.jobs.states import JobState, job_transition


@dataclass
class Leasing:
    store: Store
    clock: Callable[[], float]
    market: MarketConfig
    models: Path  # registered model versions
    head_ip: Callable[[], str]  # the hub's overlay address, where lease heads listen
    heads: Heads
    ray_jobs: RayJobs
    on_sale: Callable[[list[Usage]], None]  # metrics of settled GPU time
    on_match: Callable[[float], None] = lambda _wait_s: None  # metrics: how long it queued
    loopback: bool = False  # the `none` backend: no real overlay addresses
    objects: ObjectPlane | None = None  # the object store; each lease gets a key of its own

    def where(self) -> Where:
        objects = self.objects.store if self.objects else None
        return Where(self.models, self.head_ip(), objects)


def head_of(lease: Lease) -> Head:
    return Head(lease.id, lease.port_base, lease.token)


def members(db, lease_id: str, everyone: bool = False) -> list[LeaseMember]:
    """The lease's members in it now (assigned or attached), or everyone it ever had."""
    query = select(LeaseMember).where(LeaseMember.lease_id == lease_id)
    if not everyone:
        query = query.where(LeaseMember.state.in_(values(ACTIVE_MEMBER_STATES)))
    return list(db.scalars(query))


def end_job(job: Job, state: JobState, now: float, reason: str) -> None:
    job.state = job_transition(JobState(job.state), state).value
    job.reason, job.ended_at = reason[:500], now
