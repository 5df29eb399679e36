"""Who may see which lease's dashboard: a one-use ticket (made for the owner's API key,
good for a minute) becomes a session (a cookie, good for an hour) on one lease.

In memory on purpose: a browser session is cheap to make again (`jobs dashboard`), and a
coordinator restart should end them. Only hashes are kept: a memory dump or a log line
shows no usable token.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

TICKET_TTL_S = 60.0
SESSION_TTL_S = 3600.0
MAX_LIVE = 10_000  # tickets and sessions together: a flood of them cannot fill memory


@dataclass(frozen=True)
class Grant:
    lease_id: str
    account_id: str
    expires_at: float


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class DashboardSessions:
    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        self._tickets: dict[str, Grant] = {}
        self._sessions: dict[str, Grant] = {}
        self._lock = threading.Lock()

    def ticket(self, lease_id: str, account_id: str) -> str:
        """A one-use ticket for `account_id` to open `lease_id`'s dashboard."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._prune()
            grant = Grant(lease_id, account_id, self.clock() + TICKET_TTL_S)
            self._tickets[_digest(token)] = grant
        return token

    def redeem(self, ticket: str, lease_id: str) -> tuple[str, Grant] | None:
        """(session token, its grant) for a live ticket of this lease; the ticket is spent
        either way, so one that leaked through a URL works for no one else."""
        with self._lock:
            grant = self._tickets.pop(_digest(ticket), None)
            if grant is None or grant.lease_id != lease_id or grant.expires_at <= self.clock():
                return None
            token = secrets.token_urlsafe(32)
            session = Grant(lease_id, grant.account_id, self.clock() + SESSION_TTL_S)
            self._sessions[_digest(token)] = session
            return token, session

    def check(self, session: str | None, lease_id: str) -> Grant | None:
        """The session's grant if it is live and for this lease, else None."""
        if not session:
            return None
        with self._lock:
            grant = self._sessions.get(_digest(session))
        if grant is None or grant.lease_id != lease_id or grant.expires_at <= self.clock():
            return None
        return grant

    def _prune(self) -> None:
        now = self.clock()
        for table in (self._tickets, self._sessions):
            for key in [k for k, g in table.items() if g.expires_at <= now]:
                del table[key]
        while len(self._tickets) + len(self._sessions) >= MAX_LIVE:
            table = self._tickets or self._sessions
            del table[min(table, key=lambda k: table[k].expires_at)]
