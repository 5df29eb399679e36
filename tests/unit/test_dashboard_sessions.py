"""Dashboard tickets and sessions: one use, one lease, short-lived."""

from computeswarm.cluster.dashboards.sessions import (
    SESSION_TTL_S,
    TICKET_TTL_S,
    DashboardSessions,
)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_ticket_opens_one_session_on_its_lease_once():
    clock = Clock()
    sessions = DashboardSessions(clock)
    ticket = sessions.ticket("l-1", "buyerA")
    assert sessions.redeem(ticket, "l-2") is None  # another lease's path: spent, refused
    assert sessions.redeem(ticket, "l-1") is None  # and gone
    ticket = sessions.ticket("l-1", "buyerA")
    session, grant = sessions.redeem(ticket, "l-1")
    assert (grant.lease_id, grant.account_id) == ("l-1", "buyerA")
    assert sessions.redeem(ticket, "l-1") is None  # one use
    assert sessions.check(session, "l-1") == grant
    assert sessions.check(session, "l-2") is None
    assert sessions.check(ticket, "l-1") is None  # a ticket is no session
    assert sessions.check(None, "l-1") is None
    assert sessions.check("forged", "l-1") is None


def test_tickets_and_sessions_expire():
    clock = Clock()
    sessions = DashboardSessions(clock)
    late = sessions.ticket("l-1", "buyerA")
    clock.now += TICKET_TTL_S + 1
    assert sessions.redeem(late, "l-1") is None
    session, _ = sessions.redeem(sessions.ticket("l-1", "buyerA"), "l-1")
    clock.now += SESSION_TTL_S - 1
    assert sessions.check(session, "l-1") is not None
    clock.now += 2
    assert sessions.check(session, "l-1") is None


def test_only_hashes_are_kept():
    sessions = DashboardSessions(Clock())
    ticket = sessions.ticket("l-1", "buyerA")
    session, _ = sessions.redeem(sessions.ticket("l-1", "buyerA"), "l-1")
    kept = repr(vars(sessions))
    assert ticket not in kept and session not in kept
