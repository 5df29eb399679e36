"""Ledger routes: the balances and entries a caller may see; an admin's deposits."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from computeswarm.cluster.accounts.roles import Caller
from computeswarm.cluster.api import deps
from computeswarm.cluster.api.schemas import Deposit
from computeswarm.cluster.api.views import Deposited, LedgerView
from computeswarm.cluster.services.jobs import JobsService

router = APIRouter(tags=["ledger"])
Jobs = Depends(deps.jobs)
Who = Depends(deps.caller)


@router.get("/v1/ledger", response_model=LedgerView)
def get_ledger(account: str | None = None, who: Caller = Who, jobs: JobsService = Jobs) -> dict:
    """A buyer's spend and escrows, a seller's earnings; admins any account's."""
    return jobs.ledger_view(who, account)


@router.post("/v1/accounts/{account_id}/deposit", response_model=Deposited)
def deposit(account_id: str, body: Deposit, who: Caller = Who, jobs: JobsService = Jobs) -> dict:
    """Credit a buyer's account (admins; the money comes from outside the swarm)."""
    return jobs.deposit(who, account_id, body.micros)
