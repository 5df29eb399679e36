"""What routes depend on: the authenticated caller, rate limits, and the services.

`create_app` builds one `ApiServices` from the coordinator and keeps it on `app.state`;
routes get a service with `Depends(sellers)` and never see the coordinator itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CollectorRegistry

from computeswarm.cluster.accounts.roles import Caller, KeyCache
from computeswarm.cluster.api.ratelimit import RateLimiter
from computeswarm.cluster.errors import RateLimited, Unauthorized
from computeswarm.cluster.services.accounts import AccountsService
from computeswarm.cluster.services.datasets import DatasetsService
from computeswarm.cluster.services.models import ModelsService
from computeswarm.cluster.services.sellers import SellersService
from computeswarm.cluster.services.volumes import VolumesService

if TYPE_CHECKING:
    from computeswarm.cluster.coordinator import Coordinator
    from computeswarm.cluster.services.jobs import JobsService


@dataclass(frozen=True)
class Gate:
    """Who may call: API keys, a token bucket per key (per address when anonymous), and a
    stricter one per address for wrong keys."""

    keys: KeyCache
    limiter: RateLimiter
    failed_logins: RateLimiter

    def authenticate(self, request: Request) -> Caller:
        presented = presented_key(request)
        client = _client_address(request)
        if presented is not None and (wait := self.failed_logins.peek(client)) > 0:
            raise RateLimited(wait)  # checked before the key: a lucky guess gets nothing
        try:
            who = self.keys.authenticate(presented)
        except Unauthorized:
            if presented is not None:
                self.failed_logins.check(client)
            raise
        self.rate_limit(f"key:{who.key_id}")
        request.scope.setdefault("state", {})["key_id"] = who.key_id
        return who

    def rate_limit(self, key: str) -> None:
        wait = self.limiter.check(key)
        if wait > 0:
            raise RateLimited(wait)


@dataclass(frozen=True)
class ApiServices:
    gate: Gate
    sellers: SellersService
    accounts: AccountsService
    models: ModelsService
    jobs: JobsService
    datasets: DatasetsService
    volumes: VolumesService
    readiness: Callable[[], dict[str, str]]
    metrics: CollectorRegistry

    @classmethod
    def of(cls, c: Coordinator) -> ApiServices:
        """The services over one coordinator's store, clock and hub."""
        return cls(
            gate=Gate(c.keys, c.limiter, c.failed_logins),
            sellers=SellersService(
                c.store,
                c.clock,
                c,
                invite_ttl_s=c.config.invite_ttl_s,
                head_ip=lambda: c.scheduler.head_ip,
                wake_scheduler=c.wake_scheduler,
            ),
            accounts=AccountsService(c.store, c.clock),
            models=ModelsService(c.store),
            jobs=c.jobs,
            datasets=c.datasets,
            volumes=c.volumes,
            readiness=c.readiness,
            metrics=c.metrics,
        )


def services(request: Request) -> ApiServices:
    return request.app.state.services


async def caller(request: Request) -> Caller:
    """The authenticated caller (401 without a valid key; 429 past its rate)."""
    # Async on purpose: a cached key is checked without a thread-pool hop (most calls).
    # A key not cached needs the store, which must never run on the event loop: one
    # SQLite lock held by a writer would stall every request.
    gate = services(request).gate
    if gate.keys.knows(presented_key(request)):
        return gate.authenticate(request)
    return await run_in_threadpool(gate.authenticate, request)


def presented_key(request: Request) -> str | None:
    """The API key in `Authorization: Bearer <key>`, if any."""
    header = request.headers.get("authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else None


def anonymous(request: Request) -> None:
    """Rate limits for routes without a key (per client address)."""
    services(request).gate.rate_limit(_client_address(request))


def sellers(request: Request) -> SellersService:
    return services(request).sellers


def accounts(request: Request) -> AccountsService:
    return services(request).accounts


def models(request: Request) -> ModelsService:
    return services(request).models


def jobs(request: Request) -> JobsService:
    return services(request).jobs


def datasets(request: Request) -> DatasetsService:
    return services(request).datasets


def volumes(request: Request) -> VolumesService:
    return services(request).volumes


def _client_address(request: Request) -> str:
    return f"ip:{request.client.host if request.client else '?'}"
