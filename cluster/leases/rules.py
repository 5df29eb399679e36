"""Leases: their states, and the pure decisions the scheduler acts on.

A lease is a Ray cluster: a head on the head host (no CPUs, no GPUs, its own token and port
block) and one worker node per leased seller, attached over the overlay. A seller serves
at most one lease at a time, so its workload namespace holds one lease's code only.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable

from computeswarm.cluster.market.book import Ask, Bid
from computeswarm.jobs.spec import AnyJob


class LeaseState(enum.StrEnum):
    REQUESTED = "requested"
    MATCHED = "matched"
    PROVISIONING = "provisioning"
    RUNNING = "running"
    RELEASING = "releasing"
    CLOSED = "closed"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        return self in (LeaseState.CLOSED, LeaseState.FAILED)


LEASE_TRANSITIONS: dict[LeaseState, frozenset[LeaseState]] = {
    LeaseState.REQUESTED: frozenset({LeaseState.MATCHED, LeaseState.FAILED}),
    LeaseState.MATCHED: frozenset({LeaseState.PROVISIONING, LeaseState.RELEASING}),
    LeaseState.PROVISIONING: frozenset({LeaseState.RUNNING, LeaseState.RELEASING}),
    LeaseState.RUNNING: frozenset({LeaseState.RELEASING}),
    LeaseState.RELEASING: frozenset({LeaseState.CLOSED, LeaseState.FAILED}),
    LeaseState.CLOSED: frozenset(),
    LeaseState.FAILED: frozenset(),
}


class MemberState(enum.StrEnum):
    ASSIGNED = "assigned"  # told to start a worker node
    ATTACHED = "attached"  # its node is up in the lease's cluster: metering runs
    DETACHED = "detached"  # released normally
    LOST = "lost"  # the seller vanished mid-lease: metering stopped at the loss
    DROPPED = "dropped"  # a lost member, handled: replaced, or its lease ended

    @property
    def is_active(self) -> bool:
        return self in (MemberState.ASSIGNED, MemberState.ATTACHED)


def lease_transition(current: LeaseState, target: LeaseState) -> LeaseState:
    if target not in LEASE_TRANSITIONS[current]:
        raise ValueError(f"a {current.value} lease cannot become {target.value}")
    return target


def bid_for(job_id: str, spec: AnyJob) -> Bid:
    gpus = spec.resources.gpus
    return Bid(
        job_id=job_id,
        gpu_model=gpus.model,
        min_vram_gb=gpus.min_vram_gb,
        nodes=spec.resources.nodes,
        gpus_per_node=spec.resources.gpus_per_node,
        max_price_micros=spec.pricing.max_price_micros,
        min_reliability=spec.min_reliability,
        duration_s=spec.max_duration,
    )


def ask_for(
    seller_id: str,
    gpus: list[dict],
    ask_micros: int,
    reliability: float,
    max_lease_hours: int,
    available_until: float | None,
) -> Ask | None:
    """A seller's ask as the market sees it (None if it offers no GPUs)."""
    if not gpus:
        return None
    first = gpus[0]
    return Ask(
        seller_id=seller_id,
        gpu_model=first["model"],
        vram_gb=min(g["vram_gb"] for g in gpus),
        free_gpus=len(gpus),
        ask_micros=ask_micros,
        reliability=reliability,
        max_lease_s=max_lease_hours * 3600,
        available_until=available_until,
    )


def reliability(completed: int, lost: int) -> float:
    """Share of leases served to the end, starting from a 9-in-10 prior for newcomers."""
    return (completed + 9) / (completed + lost + 10)


def free_port_base(
    used: Iterable[int],
    start: int,
    block: int,
    count: int,
    is_free: Callable[[int], bool] = lambda base: True,
) -> int | None:
    """The first port block from `start` that no active lease uses (and that `is_free`
    confirms: another program on the host may hold it); None when every one is taken."""
    taken = set(used)
    for slot in range(count):
        base = start + slot * block
        if base not in taken and is_free(base):
            return base
    return None


def budget_end(
    members: Iterable[tuple[float | None, float | None, int, int]], escrow_micros: int
) -> float:
    """When the buyer's metered use reaches the escrow held for the lease.

    `members` are (attached_at, detached_at, gpus, price per GPU-hour) of everyone who was
    in the lease, each at its own price (a repair may cost more): metering runs from each
    member's attach, so the budget does too. Detached members' use is fixed; the rest
    grows with time."""
    spent, rate, offset = 0.0, 0.0, 0.0
    for attached_at, detached_at, gpus, price in members:
        if attached_at is None:
            continue
        if detached_at is not None:
            spent += price * gpus * max(0.0, detached_at - attached_at) / 3600
        else:
            rate += price * gpus / 3600
            offset += price * gpus * attached_at / 3600
    if rate <= 0:
        return float("inf")
    return (escrow_micros - spent + offset) / rate
