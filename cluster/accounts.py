"""Accounts and their API keys; who is calling, and may they?"""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from computeswarm.cluster.credentials import API_KEY_KIND, new_token, parse_token, secret_matches
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
