"""Enrollment routes: the hub's identity, invites, and redeeming one."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from computeswarm.cluster.accounts.roles import Caller
from computeswarm.cluster.api import deps
from computeswarm.cluster.api.schemas import (
    Enrolled,
    EnrollRequest,
    HubInfo,
    InviteCreate,
    InviteCreated,
)
from computeswarm.cluster.services.sellers import SellersService

router = APIRouter(tags=["enrollment"])


@router.get("/v1/hub", response_model=HubInfo, dependencies=[Depends(deps.anonymous)])
def hub(request: Request, sellers: SellersService = Depends(deps.sellers)) -> HubInfo:
    """What a node needs before enrolling: the hub's public key and endpoint."""
    return sellers.hub_info(request.client.host if request.client else None)


@router.post("/v1/invites", response_model=InviteCreated)
def create_invite(
    body: InviteCreate,
    who: Caller = Depends(deps.caller),
    sellers: SellersService = Depends(deps.sellers),
) -> InviteCreated:
    return sellers.create_invite(who, body.ttl_s, body.note)


@router.post("/v1/enroll", response_model=Enrolled, dependencies=[Depends(deps.anonymous)])
def enroll(body: EnrollRequest, sellers: SellersService = Depends(deps.sellers)) -> Enrolled:
    """Redeem an invite with the node's public key and proof of possession."""
    return sellers.enroll(body)
