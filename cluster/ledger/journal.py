"""The double-entry ledger in integer micro-units. The core is pure; `post` writes.

Accounts: `external` (money from outside: deposits), `buyer:<account>`, `escrow:<lease>`,
`metered:<lease>` (escrow already attributed to served requests), `seller:<seller>`,
`platform`. Every transaction's entries sum to zero, and a balance is
always the sum of an account's entries - nothing is stored that could drift from them.

A lease's money moves in three steps: escrow is held when it is matched (budget, or max
price x GPUs x max duration), metered use is paid out of it when it ends (each seller its
ask, the platform its fee), and the rest of the escrow goes back to the buyer.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from computeswarm.cluster.store.models import LedgerEntry

EXTERNAL = "external"
PLATFORM = "platform"


def buyer(account_id: str) -> str:
    return f"buyer:{account_id}"


def escrow(lease_id: str) -> str:
    return f"escrow:{lease_id}"


def metered(lease_id: str) -> str:
    return f"metered:{lease_id}"


def seller(seller_id: str) -> str:
    return f"seller:{seller_id}"


@dataclass(frozen=True)
class Transaction:
    kind: str
    ref: str
    entries: tuple[tuple[str, int], ...]  # (account, micros)

    def __post_init__(self) -> None:
        total = sum(amount for _, amount in self.entries)
        if total != 0:
            raise ValueError(f"transaction {self.kind} {self.ref} does not balance: {total}")
        if any(not isinstance(amount, int) for _, amount in self.entries):
            raise TypeError("ledger amounts are integer micro-units")


@dataclass(frozen=True)
class Usage:
    """One seller's metered time in a lease."""

    seller_id: str
    gpus: int
    seconds: int
    ask_micros: int  # per GPU-hour, to the seller
    price_micros: int  # per GPU-hour, from the buyer (ask + fee)

    @property
    def seller_micros(self) -> int:
        return self.ask_micros * self.gpus * self.seconds // 3600

    @property
    def fee_micros(self) -> int:
        return (self.price_micros - self.ask_micros) * self.gpus * self.seconds // 3600

    @property
    def buyer_micros(self) -> int:
        return self.seller_micros + self.fee_micros


def metered_seconds(attached_at: float | None, detached_at: float | None) -> int:
    """Whole seconds from attach to detach (a partial last second is not billed)."""
    if attached_at is None or detached_at is None or detached_at <= attached_at:
        return 0
    return int(detached_at - attached_at)


def deposit(account_id: str, micros: int, ref: str = "") -> Transaction:
    return Transaction("deposit", ref, ((EXTERNAL, -micros), (buyer(account_id), micros)))


def hold(account_id: str, lease_id: str, micros: int) -> Transaction:
    return Transaction(
        "escrow_hold", lease_id, ((buyer(account_id), -micros), (escrow(lease_id), micros))
    )


def meter(lease_id: str, micros: int) -> Transaction:
    """A served request's share of the lease, attributed as it happens (still escrow)."""
    return Transaction(
        "meter", lease_id, ((escrow(lease_id), -micros), (metered(lease_id), micros))
    )


def settle(
    account_id: str, lease_id: str, held_micros: int, usages: list[Usage], metered_micros: int = 0
) -> Transaction:
    """Pay sellers and the platform from escrow; return what is left to the buyer.

    `metered_micros` of the held escrow sit in the lease's metered account (served
    requests); both accounts are emptied. Use beyond the escrow cannot happen (the lease
    ends when it runs out); should rounding ever get there, payouts are cut to what was
    held, sellers first.
    """
    entries: list[tuple[str, int]] = [(escrow(lease_id), metered_micros - held_micros)]
    if metered_micros:
        entries.append((metered(lease_id), -metered_micros))
    left = held_micros
    for usage in usages:
        paid = min(usage.seller_micros, left)
        left -= paid
        entries.append((seller(usage.seller_id), paid))
    fee = min(sum(u.fee_micros for u in usages), left)
    left -= fee
    entries += [(PLATFORM, fee), (buyer(account_id), left)]
    return Transaction(
        "settle", lease_id, tuple(e for e in entries if e[1] or e[0] == escrow(lease_id))
    )


def storage(account_id: str, micros: int, ref: str) -> Transaction:
    """What the buyer's volumes and datasets held over a metering period, to the platform
    (which runs the store)."""
    return Transaction("storage", ref, ((buyer(account_id), -micros), (PLATFORM, micros)))


def post(db: Session, txn: Transaction, now: float) -> str:
    txn_id = f"t-{secrets.token_hex(6)}"
    for account, amount in txn.entries:
        db.add(
            LedgerEntry(
                txn_id=txn_id,
                account=account,
                amount_micros=amount,
                kind=txn.kind,
                ref=txn.ref,
                created_at=now,
            )
        )
    return txn_id


def balance(db: Session, account: str) -> int:
    total = db.scalar(
        select(func.coalesce(func.sum(LedgerEntry.amount_micros), 0)).where(
            LedgerEntry.account == account
        )
    )
    return int(total)


def entries_for(db: Session, accounts: list[str] | None = None) -> list[LedgerEntry]:
    query = select(LedgerEntry).order_by(LedgerEntry.id)
    if accounts is not None:
        query = query.where(LedgerEntry.account.in_(accounts))
    return list(db.scalars(query))
