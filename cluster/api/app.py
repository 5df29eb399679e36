"""The coordinator API: every endpoint checks the caller's role and ownership.

What a caller may not know exists is a 404, never a 403. Errors are JSON
`{"error": code, "detail": message}`; 429s carry `Retry-After`. Routes live in `routes/`,
one thin router per resource over `services/`; `deps.py` authenticates and hands out the
services.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from computeswarm import __version__
from computeswarm.cluster.api import deps
from computeswarm.cluster.api.errors import api_error_body, error_json, validation_problems
from computeswarm.cluster.api.fastpath import ROUTE, HeartbeatFastPath
from computeswarm.cluster.api.middleware import AccessLog, BodyLimit
from computeswarm.cluster.api.routes import (
    accounts,
    datasets,
    enrollment,
    health,
    jobs,
    ledger,
    market,
    models,
    sellers,
    volumes,
)
from computeswarm.cluster.api.routes.dashboards import dashboard_router
from computeswarm.cluster.api.routes.gateway import gateway_router
from computeswarm.cluster.coordinator import Coordinator
from computeswarm.cluster.dashboards.service import DashboardService
from computeswarm.cluster.dashboards.sessions import DashboardSessions
from computeswarm.cluster.errors import ApiError
from computeswarm.cluster.gateway.core import MAX_BODY_BYTES as GATEWAY_MAX_BODY_BYTES
from computeswarm.cluster.services.datasets import MAX_MANIFEST_BYTES
from computeswarm.errors import UserError

ROUTERS = (
    health,
    enrollment,
    accounts,
    sellers,
    jobs,
    market,
    ledger,
    models,
    datasets,
    volumes,
)


def create_app(coordinator: Coordinator) -> FastAPI:
    """The API over one coordinator, with its gateway, size limits and access log."""
    services = deps.ApiServices.of(coordinator)
    app = api_app(services)
    # The inference gateway: /v1/serve/{job_id}/v1/...
    app.include_router(gateway_router(coordinator.gateway, deps.caller))
    # Leases' Ray dashboards: /dashboards/{lease_id}/...
    service = DashboardService(coordinator.store, DashboardSessions(), coordinator.head_ip)
    app.include_router(dashboard_router(service, deps.caller))
    app.add_middleware(HeartbeatFastPath, services=services)  # innermost: logged, limited
    app.add_middleware(AccessLog, latency=coordinator.latency, quiet=frozenset({ROUTE.path}))
    app.add_middleware(
        BodyLimit,
        max_bytes=coordinator.config.limits.max_body_bytes,
        larger={
            "/v1/jobs": coordinator.config.market.max_upload_bytes * 4 // 3 + 65536,
            "/v1/serve/": GATEWAY_MAX_BODY_BYTES,  # prompts: the gateway checks its own cap
            # Chunks (8 MiB at most, checked by the route) and manifests.
            "/v1/datasets/": MAX_MANIFEST_BYTES,
            "/v1/volumes/": MAX_MANIFEST_BYTES,
            "/v1/leases/": MAX_MANIFEST_BYTES,  # volumes' chunks and commits, from sellers
        },
    )
    return app


JSON = "application/json"


def api_app(services: deps.ApiServices) -> FastAPI:
    """The routes and error handlers over `services` (tests give it fakes)."""
    app = FastAPI(title="ComputeSwarm coordinator", version=__version__)
    app.state.services = services
    _add_error_handlers(app)
    for module in ROUTERS:
        app.include_router(module.router)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    def api_error(_request: Request, e: ApiError) -> Response:
        status, body, headers = api_error_body(e)
        return Response(body, status_code=status, headers=headers, media_type=JSON)

    @app.exception_handler(UserError)
    def user_error(_request: Request, e: UserError) -> Response:
        return Response(error_json("bad_request", str(e)), status_code=400, media_type=JSON)

    @app.exception_handler(RequestValidationError)
    def invalid(_request: Request, e: RequestValidationError) -> Response:
        body = error_json("invalid_request", validation_problems(e.errors()))
        return Response(body, status_code=422, media_type=JSON)

    @app.exception_handler(404)
    def not_found(_request: Request, _e: Exception) -> Response:
        return Response(
            error_json("not_found", "no such endpoint"), status_code=404, media_type=JSON
        )
