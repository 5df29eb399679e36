"""Account routes: an admin creates accounts."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from computeswarm.cluster.accounts.roles import Caller
from computeswarm.cluster.api import deps
from computeswarm.cluster.api.schemas import AccountCreate, AccountCreated
from computeswarm.cluster.services.accounts import AccountsService

router = APIRouter(tags=["accounts"])


@router.post("/v1/accounts", response_model=AccountCreated)
def create_account(
    body: AccountCreate,
    who: Caller = Depends(deps.caller),
    accounts: AccountsService = Depends(deps.accounts),
) -> AccountCreated:
    """A new account and its API key (shown once)."""
    return accounts.create(who, body.name, body.role)
