"""System routes: liveness, readiness (503 until the store and the hub answer), metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from computeswarm.cluster.accounts.roles import Caller, Role
from computeswarm.cluster.api import deps
from computeswarm.cluster.api.schemas import Health, Readiness

router = APIRouter(tags=["system"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def readyz(response: Response, api: deps.ApiServices = Depends(deps.services)) -> Readiness:
    checks = api.readiness()
    ready = all(v == "ok" for v in checks.values())
    response.status_code = 200 if ready else 503
    return Readiness(ready=ready, checks=checks)


@router.get("/metrics", response_class=Response)
def metrics(
    who: Caller = Depends(deps.caller), api: deps.ApiServices = Depends(deps.services)
) -> Response:
    """Prometheus text. Admins only: it names every seller, its public key and its traffic."""
    who.require(Role.ADMIN)
    return Response(generate_latest(api.metrics), media_type=CONTENT_TYPE_LATEST)
