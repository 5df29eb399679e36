"""What the coordinator does with registered models: list, show and hand out versions."""

from __future__ import annotations

from computeswarm.cluster.accounts.roles import Caller, Role
from computeswarm.cluster.api.schemas import ModelVersions, ModelVersionView
from computeswarm.cluster.errors import ApiError
from computeswarm.cluster.models import registry
from computeswarm.cluster.store.db import Store


class ModelsService:
    def __init__(self, store: Store):
        self.store = store

    def list(self, caller: Caller, account: str | None) -> list[ModelVersionView]:
        """The caller's model versions (admins: every account's, or one account's)."""
        with self.store.transaction() as db:
            versions = registry.list_versions(db, _owner(caller, account))
            return [ModelVersionView(**registry.view(v)) for v in versions]

    def versions(self, caller: Caller, name: str, account: str | None) -> ModelVersions:
        """All versions of one model, oldest first."""
        with self.store.transaction() as db:
            versions = registry.list_versions(db, _owner(caller, account), name)
            return ModelVersions(
                name=name, versions=[ModelVersionView(**registry.view(v)) for v in versions]
            )

    def version(
        self, caller: Caller, name: str, version: str, account: str | None
    ) -> ModelVersionView:
        """One version: `N`, or `latest`."""
        with self.store.transaction() as db:
            found = registry.resolve(db, _owner(caller, account), _ref(name, version))
            return ModelVersionView(**registry.view(found))

    def download(
        self, caller: Caller, name: str, version: str, account: str | None
    ) -> tuple[str, bytes]:
        """The version's file name and its files as a zip (packed after the transaction)."""
        with self.store.transaction() as db:
            found = registry.resolve(db, _owner(caller, account), _ref(name, version))
        return f"{found.name}-{found.version}.zip", registry.pack(found)


def _owner(caller: Caller, account: str | None) -> str | None:
    """Whose models a caller sees: their own; admins everyone's (None) or one account's."""
    return (account or None) if caller.role is Role.ADMIN else caller.account_id


def _ref(name: str, version: str) -> str:
    """The path's name and version as one reference, `NAME` (latest) or `NAME@N`."""
    if "@" in name or "@" in version:
        raise ApiError(f"model name {name!r} and version {version!r} may not contain '@'")
    return name if version == "latest" else f"{name}@{version}"
