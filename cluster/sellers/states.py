"""Seller lifecycle: the states and every allowed transition, in one place.

    invited -> enrolled -> online <-> leased -> draining -> offline      (+ disabled)

`invited` is the state of an invite not yet redeemed (no seller row exists yet).
"""

from __future__ import annotations

import enum

from computeswarm.cluster.errors import InvalidTransition


class SellerState(enum.StrEnum):
    INVITED = "invited"
    ENROLLED = "enrolled"
    ONLINE = "online"
    LEASED = "leased"
    DRAINING = "draining"
    OFFLINE = "offline"
    DISABLED = "disabled"

    @property
    def is_terminal(self) -> bool:
        return self is SellerState.DISABLED

    @property
    def is_available(self) -> bool:
        """Can the market offer this seller's GPUs now?"""
        return self is SellerState.ONLINE


class SellerEvent(enum.StrEnum):
    ENROLL = "enroll"
    HEARTBEAT = "heartbeat"
    HEARTBEAT_MISSED = "heartbeat_missed"
    LEASE = "lease"
    RELEASE = "release"
    LEAVE = "leave"
    DRAINED = "drained"
    DISABLE = "disable"


S, E = SellerState, SellerEvent

TRANSITIONS: dict[tuple[SellerState, SellerEvent], SellerState] = {
    (S.INVITED, E.ENROLL): S.ENROLLED,
    (S.ENROLLED, E.HEARTBEAT): S.ONLINE,
    (S.OFFLINE, E.HEARTBEAT): S.ONLINE,
    (S.ONLINE, E.HEARTBEAT): S.ONLINE,
    (S.LEASED, E.HEARTBEAT): S.LEASED,
    (S.DRAINING, E.HEARTBEAT): S.DRAINING,
    (S.ENROLLED, E.HEARTBEAT_MISSED): S.OFFLINE,
    (S.ONLINE, E.HEARTBEAT_MISSED): S.OFFLINE,
    (S.LEASED, E.HEARTBEAT_MISSED): S.OFFLINE,
    (S.DRAINING, E.HEARTBEAT_MISSED): S.OFFLINE,
    (S.ONLINE, E.LEASE): S.LEASED,
    (S.LEASED, E.RELEASE): S.ONLINE,
    (S.ENROLLED, E.LEAVE): S.DRAINING,
    (S.ONLINE, E.LEAVE): S.DRAINING,
    (S.LEASED, E.LEAVE): S.DRAINING,
    (S.OFFLINE, E.LEAVE): S.DRAINING,
    (S.DRAINING, E.DRAINED): S.OFFLINE,
    **{(state, E.DISABLE): S.DISABLED for state in S if state is not S.DISABLED},
}


def transition(state: SellerState, event: SellerEvent) -> SellerState:
    """The state after `event`, or InvalidTransition naming what is allowed."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        allowed = sorted(e.value for (s, e) in TRANSITIONS if s is state)
        raise InvalidTransition(
            f"a seller that is {state.value} cannot {event.value}"
            + (f" (possible: {', '.join(allowed)})" if allowed else " (it is final)"),
            state=state.value,
        ) from None
