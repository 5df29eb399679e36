"""The coordinator API: every endpoint checks the caller's role and ownership.

What a caller may not know exists is a 404, never a 403. Errors are JSON
`{"error": code, "detail": message}`; 429s carry `Retry-After`.
"""

from __future__ import annotations

import base64
import binascii
import math
from decimal import Decimal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from computeswarm import __version__
from computeswarm.cluster.accounts.roles import Caller, Role, create_account
from computeswarm.cluster.api.middleware import AccessLog, BodyLimit
from computeswarm.cluster.api.routes.gateway import gateway_router
from computeswarm.cluster.api.schemas import (
    MICROS,
    AccountCreate,
    AccountCreated,
    Deposit,
    Enrolled,
    EnrollRequest,
    HeartbeatReply,
    HeartbeatRequest,
    HubInfo,
    InviteCreate,
    InviteCreated,
    JobSubmit,
    OfferRequest,
    OfferView,
    QuoteRequest,
    SellerView,
)
from computeswarm.cluster.coordinator import Coordinator
from computeswarm.cluster.errors import ApiError, RateLimited, Unauthorized
from computeswarm.cluster.gateway.core import MAX_BODY_BYTES as GATEWAY_MAX_BODY_BYTES
from computeswarm.cluster.models import registry as model_registry
from computeswarm.cluster.sellers import registry
from computeswarm.cluster.sellers.states import SellerState
from computeswarm.cluster.store.models import Offer, Seller
from computeswarm.errors import UserError

PROBE_MAX_BYTES = 8 * 1024 * 1024


def create_app(coordinator: Coordinator) -> FastAPI:
    app = FastAPI(title="ComputeSwarm coordinator", version=__version__)
    app.state.coordinator = coordinator
    _add_error_handlers(app)
    _add_routes(app, coordinator)
    app.add_middleware(AccessLog, latency=coordinator.latency)
    app.add_middleware(
        BodyLimit,
        max_bytes=coordinator.config.limits.max_body_bytes,
        larger={
            "/v1/jobs": coordinator.config.market.max_upload_bytes * 4 // 3 + 65536,
            "/v1/serve/": GATEWAY_MAX_BODY_BYTES,  # prompts: the gateway checks its own cap
        },
    )
    return app


def _add_routes(app: FastAPI, c: Coordinator) -> None:
    async def caller(request: Request) -> Caller:
        # Async on purpose: a cached key is checked without a thread-pool hop (most calls).
        header = request.headers.get("authorization", "")
        presented = header[7:].strip() if header.lower().startswith("bearer ") else None
        client = f"ip:{request.client.host if request.client else '?'}"
        if presented is not None and (wait := c.failed_logins.peek(client)) > 0:
            raise RateLimited(wait)  # checked before the key: a lucky guess gets nothing
        try:
            who = c.keys.authenticate(presented)
        except Unauthorized:
            if presented is not None:
                c.failed_logins.check(client)
            raise
        _rate_limit(c, f"key:{who.key_id}")
        request.scope.setdefault("state", {})["key_id"] = who.key_id
        return who

    def anonymous(request: Request) -> None:
        _rate_limit(c, f"ip:{request.client.host if request.client else '?'}")

    # -- system ---------------------------------------------------------------------------

    @app.get("/healthz", tags=["system"])
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["system"])
    def readyz() -> JSONResponse:
        checks = c.readiness()
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["system"])
    def metrics(who: Caller = Depends(caller)) -> Response:
        # Admins only: it names every seller, its public key and its traffic.
        who.require(Role.ADMIN)
        return Response(generate_latest(c.metrics), media_type=CONTENT_TYPE_LATEST)

    # -- enrollment -----------------------------------------------------------------------

    @app.get(
        "/v1/hub", response_model=HubInfo, tags=["enrollment"], dependencies=[Depends(anonymous)]
    )
    def hub(request: Request) -> dict:
        """What a node needs before enrolling: the hub's public key and endpoint."""
        return {
            **c.hub_info(),
            "observed_client_host": request.client.host if request.client else None,
        }

    @app.post("/v1/invites", response_model=InviteCreated, tags=["enrollment"])
    def create_invite(body: InviteCreate, who: Caller = Depends(caller)) -> dict:
        with c.store.transaction() as db:
            token, expires = registry.create_invite(
                db, who, body.ttl_s or c.config.invite_ttl_s, body.note, c.clock()
            )
        return {"invite": token, "expires_at": expires}

    @app.post(
        "/v1/enroll",
        response_model=Enrolled,
        tags=["enrollment"],
        dependencies=[Depends(anonymous)],
    )
    def enroll(body: EnrollRequest) -> dict:
        """Redeem an invite with the node's public key and proof of possession."""
        enrollment = c.enroll(**body.model_dump())
        seller = enrollment.seller
        return {
            "seller_id": seller.id,
            "address": seller.address,
            "api_key": enrollment.api_key,
            "rejoined": enrollment.rejoined,
            "hub": c.hub_info(),
        }

    # -- accounts -------------------------------------------------------------------------

    @app.post("/v1/accounts", response_model=AccountCreated, tags=["accounts"])
    def create_account_route(body: AccountCreate, who: Caller = Depends(caller)) -> dict:
        who.require(Role.ADMIN)
        with c.store.transaction() as db:
            account, key = create_account(db, body.name, Role(body.role), c.clock())
        return {
            "account_id": account.id,
            "name": account.name,
            "role": account.role,
            "api_key": key,
        }

    # -- sellers --------------------------------------------------------------------------

    @app.get("/v1/sellers", response_model=list[SellerView], tags=["sellers"])
    def list_sellers(include_left: bool = False, who: Caller = Depends(caller)) -> list[dict]:
        with c.store.transaction() as db:
            sellers = registry.visible_sellers(db, who, include_left=include_left)
            offers = (
                {
                    o.seller_id: o
                    for o in db.query(Offer).filter(Offer.seller_id.in_([s.id for s in sellers]))
                }
                if sellers
                else {}
            )
            return [_seller_view(s, offers.get(s.id), who) for s in sellers]

    @app.get("/v1/sellers/{seller_id}", response_model=SellerView, tags=["sellers"])
    def get_seller(seller_id: str, who: Caller = Depends(caller)) -> dict:
        with c.store.transaction() as db:
            seller = (
                registry.seller_for_buyer(db, seller_id)
                if who.role is Role.BUYER
                else registry.own_seller(db, who, seller_id)
            )
            return _seller_view(seller, db.get(Offer, seller_id), who)

    @app.post("/v1/sellers/{seller_id}/heartbeat", response_model=HeartbeatReply, tags=["sellers"])
    def heartbeat(seller_id: str, body: HeartbeatRequest, who: Caller = Depends(caller)) -> dict:
        # In the thread pool, like every route that touches the store: inline on the event
        # loop, one held SQLite write lock froze the whole API and the gateway (M1).
        with c.store.connection() as db:
            state = registry.heartbeat(
                db,
                who,
                seller_id,
                gpus=[g.model_dump() for g in body.gpus],
                simulated=body.simulated,
                rtt_ms=body.rtt_ms,
                bandwidth_mbps=body.bandwidth_mbps,
                now=c.clock(),
            )
            work = []
            if body.workers:
                registry.report_workers(db, seller_id, body.workers, c.clock())
                c.wake_scheduler()
            if state is SellerState.LEASED:
                work = registry.assignments(db, seller_id, c.scheduler.head_ip)
        return {"state": state.value, "assignments": work}

    @app.put("/v1/sellers/{seller_id}/offer", response_model=OfferView, tags=["sellers"])
    def put_offer(seller_id: str, body: OfferRequest, who: Caller = Depends(caller)) -> dict:
        now = c.clock()
        if body.available_until is not None and body.available_until <= now:
            raise ApiError("available_until is in the past")
        with c.store.transaction() as db:
            offer = registry.set_offer(
                db,
                who,
                seller_id,
                price_micros=body.price_micros,
                available_from=body.available_from,
                available_until=body.available_until,
                max_lease_hours=body.max_lease_hours,
                now=now,
            )
            return _offer_view(offer)

    @app.post("/v1/sellers/{seller_id}/leave", response_model=SellerView, tags=["sellers"])
    def leave(seller_id: str, who: Caller = Depends(caller)) -> dict:
        seller = c.leave(who, seller_id)
        return _seller_view(seller, None, who)

    @app.post("/v1/sellers/{seller_id}/disable", response_model=SellerView, tags=["sellers"])
    def disable(seller_id: str, who: Caller = Depends(caller)) -> dict:
        seller = c.disable(who, seller_id)
        return _seller_view(seller, None, who)

    # -- jobs, market, ledger -------------------------------------------------------------

    @app.post("/v1/jobs", tags=["jobs"])
    def submit_job(body: JobSubmit, who: Caller = Depends(caller)) -> dict:
        """Submit a job spec (and its working_dir as a base64 zip); it waits for the market."""
        upload = None
        if body.working_dir_zip is not None:
            try:
                upload = base64.b64decode(body.working_dir_zip, validate=True)
            except (binascii.Error, ValueError):
                raise ApiError("working_dir_zip is not valid base64") from None
        return c.jobs.submit(who, body.spec, upload)

    @app.get("/v1/jobs", tags=["jobs"])
    def list_jobs(who: Caller = Depends(caller)) -> list[dict]:
        return c.jobs.list(who)

    @app.get("/v1/jobs/{job_id}", tags=["jobs"])
    def get_job(job_id: str, who: Caller = Depends(caller)) -> dict:
        return c.jobs.view(who, job_id)

    @app.get("/v1/jobs/{job_id}/logs", tags=["jobs"])
    def job_logs(job_id: str, offset: int = 0, who: Caller = Depends(caller)) -> dict:
        return c.jobs.logs(who, job_id, max(0, offset))

    @app.get("/v1/sweeps/{job_id}", tags=["jobs"])
    def get_sweep(job_id: str, who: Caller = Depends(caller)) -> dict:
        return c.jobs.sweep(who, job_id)

    @app.post("/v1/jobs/{job_id}/cancel", tags=["jobs"])
    def cancel_job(job_id: str, who: Caller = Depends(caller)) -> dict:
        return c.jobs.cancel(who, job_id)

    @app.post("/v1/market/quote", tags=["jobs"])
    def quote(body: QuoteRequest, who: Caller = Depends(caller)) -> dict:
        """The sellers, price and cost the market would choose now; nothing is leased."""
        return c.jobs.quote(who, body.spec, body.explain)

    @app.get("/v1/ledger", tags=["ledger"])
    def get_ledger(account: str | None = None, who: Caller = Depends(caller)) -> dict:
        return c.jobs.ledger_view(who, account)

    @app.post("/v1/accounts/{account_id}/deposit", tags=["ledger"])
    def deposit(account_id: str, body: Deposit, who: Caller = Depends(caller)) -> dict:
        return c.jobs.deposit(who, account_id, body.micros)

    # -- models -------------------------------------------------------------------------

    @app.get("/v1/models", tags=["models"])
    def list_models(account: str | None = None, who: Caller = Depends(caller)) -> list[dict]:
        """Your model versions (admins: every account's, or one with `?account=`)."""
        with c.store.transaction() as db:
            versions = model_registry.list_versions(db, _model_owner(who, account))
            return [model_registry.view(v) for v in versions]

    @app.get("/v1/models/{name}", tags=["models"])
    def get_model(name: str, account: str | None = None, who: Caller = Depends(caller)) -> dict:
        """All versions of one of your models, oldest first."""
        with c.store.transaction() as db:
            versions = model_registry.list_versions(db, _model_owner(who, account), name)
            return {"name": name, "versions": [model_registry.view(v) for v in versions]}

    @app.get("/v1/models/{name}/versions/{version}", tags=["models"])
    def get_model_version(
        name: str, version: str, account: str | None = None, who: Caller = Depends(caller)
    ) -> dict:
        """One version: `N`, or `latest`."""
        with c.store.transaction() as db:
            found = model_registry.resolve(
                db, _model_owner(who, account), _model_ref(name, version)
            )
            return model_registry.view(found)

    @app.get("/v1/models/{name}/versions/{version}/download", tags=["models"])
    def download_model_version(
        name: str, version: str, account: str | None = None, who: Caller = Depends(caller)
    ) -> Response:
        """The version's files as a zip."""
        with c.store.transaction() as db:
            found = model_registry.resolve(
                db, _model_owner(who, account), _model_ref(name, version)
            )
        filename = f"{found.name}-{found.version}.zip"
        return Response(
            model_registry.pack(found),
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )

    @app.get("/v1/probe/bytes", tags=["sellers"])
    def probe_bytes(size: int = 1024 * 1024, who: Caller = Depends(caller)) -> Response:
        """Bytes to time a download with: the agent's bandwidth measurement over the overlay."""
        size = max(1, min(size, PROBE_MAX_BYTES))
        return Response(b"\0" * size, media_type="application/octet-stream")

    # -- inference gateway: /v1/serve/{job_id}/v1/... -------------------------------------
    if getattr(c, "gateway", None) is not None:
        app.include_router(gateway_router(c.gateway, caller))


def _rate_limit(c: Coordinator, key: str) -> None:
    wait = c.limiter.check(key)
    if wait > 0:
        raise RateLimited(wait)


def _model_owner(who: Caller, account: str | None) -> str | None:
    """Whose models a caller sees: their own; admins everyone's (None) or one account's."""
    return (account or None) if who.role is Role.ADMIN else who.account_id


def _model_ref(name: str, version: str) -> str:
    """The path's name and version as one reference, `NAME` (latest) or `NAME@N`."""
    if "@" in name or "@" in version:
        raise ApiError(f"model name {name!r} and version {version!r} may not contain '@'")
    return name if version == "latest" else f"{name}@{version}"


def _seller_view(seller: Seller, offer: Offer | None, who: Caller) -> dict:
    view = {
        "id": seller.id,
        "name": seller.name,
        "state": seller.state,
        "gpus": seller.gpus or [],
        "gpus_simulated": seller.gpus_simulated,
        "rtt_ms": seller.rtt_ms,
        "bandwidth_mbps": seller.bandwidth_mbps,
        "last_heartbeat": seller.last_heartbeat,
        "offer": _offer_view(offer) if offer else None,
    }
    if who.role is Role.ADMIN or seller.account_id == who.account_id:
        view |= {
            "address": seller.address,
            "public_key": seller.public_key,
            "endpoint": seller.endpoint,
            "behind_nat": seller.behind_nat,
            "left_at": seller.left_at,
        }
    return view


def _offer_view(offer: Offer) -> dict:
    price = Decimal(offer.price_per_gpu_hour_micros) / MICROS
    return {
        "price_per_gpu_hour": f"{price:.6f}".rstrip("0").rstrip("."),
        "price_per_gpu_hour_micros": offer.price_per_gpu_hour_micros,
        "available_from": offer.available_from,
        "available_until": offer.available_until,
        "max_lease_hours": offer.max_lease_hours,
    }


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    def api_error(_request: Request, e: ApiError) -> JSONResponse:
        headers = {}
        if isinstance(e, RateLimited):
            headers["Retry-After"] = str(max(1, math.ceil(e.retry_after_s)))
        return JSONResponse(
            {"error": e.code, "detail": e.detail}, status_code=e.status, headers=headers
        )

    @app.exception_handler(UserError)
    def user_error(_request: Request, e: UserError) -> JSONResponse:
        return JSONResponse({"error": "bad_request", "detail": str(e)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    def invalid(_request: Request, e: RequestValidationError) -> JSONResponse:
        problems = []
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"] if p != "body") or "body"
            problems.append(
                f"unknown field {where!r}"
                if err["type"] == "extra_forbidden"
                else f"{where}: {err['msg']}"
            )
        return JSONResponse(
            {"error": "invalid_request", "detail": "; ".join(problems)}, status_code=422
        )

    @app.exception_handler(404)
    def not_found(_request: Request, _e: Exception) -> PlainTextResponse | JSONResponse:
        return JSONResponse({"error": "not_found", "detail": "no such endpoint"}, status_code=404)
