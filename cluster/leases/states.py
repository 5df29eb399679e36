"""A lease's states and its members' states: the one place that names them.

A lease is a Ray cluster: a head on the head host (no CPUs, no GPUs, its own token and port
block) and one worker node per leased seller, attached over the overlay. A seller serves
at most one lease at a time, so its workload namespace holds one lease's code only.
"""

from __future__ import annotations

import enum


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


def lease_transition(current: LeaseState, target: LeaseState) -> LeaseState:
    if target not in LEASE_TRANSITIONS[current]:
        raise ValueError(f"a {current.value} lease cannot become {target.value}")
    return target


# A lease holds escrow, sellers and a port block until it has settled.
ACTIVE_LEASE_STATES = (
    LeaseState.MATCHED,
    LeaseState.PROVISIONING,
    LeaseState.RUNNING,
    LeaseState.RELEASING,
)
SETTLED_LEASE_STATES = (LeaseState.CLOSED, LeaseState.FAILED)
# A member is in its lease (and its seller leased) until it is detached or lost.
ACTIVE_MEMBER_STATES = (MemberState.ASSIGNED, MemberState.ATTACHED)


def values(states) -> list[str]:
    """The stored values of `states`, for a query's `in_`."""
    return [s.value for s in states]
