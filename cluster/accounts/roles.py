"""Accounts and their API keys; who is calling, and may they?"""

from __future__ import annotations

import enum
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from computeswarm.cluster.accounts.credentials import (
    API_KEY_KIND,
    new_token,
    parse_token,
    secret_matches,
)
from computeswarm.cluster.errors import Conflict, Forbidden, Unauthorized
from computeswarm.cluster.store.models import Account, ApiKey


class Role(enum.StrEnum):
    ADMIN = "admin"
    BUYER = "buyer"
    SELLER = "seller"


@dataclass(frozen=True)
class Caller:
    """The authenticated account behind a request."""

    account_id: str
    role: Role
    key_id: str

    def require(self, *roles: Role) -> None:
        if self.role not in roles:
            needed = " or ".join(r.value for r in roles)
            raise Forbidden(f"this needs a {needed} key; yours is {self.role.value}")


def create_account(db: Session, name: str, role: Role, now: float) -> tuple[Account, str]:
    """A new account and its first API key (returned in plaintext, once)."""
    if db.scalar(select(Account).where(Account.name == name)):
        raise Conflict(f"an account named {name!r} already exists")
    account = Account(id=f"acct-{secrets.token_hex(6)}", name=name, role=role.value, created_at=now)
    db.add(account)
    return account, issue_key(db, account.id, now)


def issue_key(db: Session, account_id: str, now: float) -> str:
    token = new_token(API_KEY_KIND)
    db.add(
        ApiKey(id=token.id, account_id=account_id, secret_hash=token.secret_hash, created_at=now)
    )
    return str(token)


def revoke_keys(db: Session, account_id: str, now: float) -> None:
    for key in db.scalars(
        select(ApiKey).where(ApiKey.account_id == account_id, ApiKey.revoked_at.is_(None))
    ):
        key.revoked_at = now


def authenticate(db: Session, presented: str | None) -> Caller:
    """The caller behind `Authorization: Bearer <key>`; one message for every failure."""
    if not presented:
        raise Unauthorized("missing API key: send `Authorization: Bearer csk_...`")
    token = parse_token(presented, API_KEY_KIND)
    key = db.get(ApiKey, token.id) if token else None
    if not key or key.revoked_at is not None or not secret_matches(token.secret, key.secret_hash):
        raise Unauthorized("invalid or revoked API key")
    account = db.get(Account, key.account_id)
    return Caller(account.id, Role(account.role), key.id)


class KeyCache:
    """Authenticated keys remembered for `ttl_s`, so hot paths skip the store.

    Revocations made by this coordinator evict at once (`forget_account`); the TTL bounds
    how long a key revoked by another process could still be honoured. It is many
    heartbeat intervals long: with 10 s, 5,000 sellers beating in turn at under 500/s
    each found its key expired, paid a store lookup, and the coordinator slowed further
    (the heartbeat benchmark settled at half its rate).
    """

    def __init__(self, store, clock: Callable[[], float], ttl_s: float = 60.0):
        self.store = store
        self.clock = clock
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[str, Caller, float]] = {}
        self._lock = threading.Lock()

    def knows(self, presented: str | None) -> bool:
        """Whether `presented` is a key remembered now (no store needed)."""
        return self._cached(presented) is not None

    def authenticate(self, presented: str | None) -> Caller:
        if (caller := self._cached(presented)) is not None:
            return caller
        with self.store.transaction() as db:
            caller = authenticate(db, presented)
            secret_hash = db.get(ApiKey, caller.key_id).secret_hash
        with self._lock:
            self._entries[caller.key_id] = (secret_hash, caller, self.clock() + self.ttl_s)
        return caller

    def _cached(self, presented: str | None) -> Caller | None:
        token = parse_token(presented or "", API_KEY_KIND)
        if token is None:
            return None
        with self._lock:
            entry = self._entries.get(token.id)
        if entry and entry[2] > self.clock() and secret_matches(token.secret, entry[0]):
            return entry[1]
        return None

    def forget_account(self, account_id: str) -> None:
        with self._lock:
            for key_id in [
                k for k, (_, c, _) in self._entries.items() if c.account_id == account_id
            ]:
                del self._entries[key_id]
