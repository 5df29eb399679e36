"""What the coordinator does with accounts: an admin creates them, each with its first key."""

from __future__ import annotations

from collections.abc import Callable

from computeswarm.cluster.accounts.roles import Caller, Role, create_account
from computeswarm.cluster.api.schemas import AccountCreated
from computeswarm.cluster.store.db import Store


class AccountsService:
    def __init__(self, store: Store, clock: Callable[[], float]):
        self.store = store
        self.clock = clock

    def create(self, caller: Caller, name: str, role: str) -> AccountCreated:
        caller.require(Role.ADMIN)
        with self.store.transaction() as db:
            account, key = create_account(db, name, Role(role), self.clock())
        return AccountCreated(
            account_id=account.id, name=account.name, role=account.role, api_key=key
        )
