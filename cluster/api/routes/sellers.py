"""Seller routes: the market's sellers, heartbeats, offers, leaving; the bandwidth probe."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from computeswarm.cluster.accounts.roles import Caller
from computeswarm.cluster.api import deps
from computeswarm.cluster.api.schemas import (
    HeartbeatReply,
    HeartbeatRequest,
    OfferRequest,
    OfferView,
    SellerEarnings,
    SellerView,
)
from computeswarm.cluster.services.sellers import SellersService

PROBE_MAX_BYTES = 8 * 1024 * 1024
router = APIRouter(tags=["sellers"])
Sellers = Depends(deps.sellers)
Who = Depends(deps.caller)


@router.get("/v1/sellers", response_model=list[SellerView])
def list_sellers(
    include_left: bool = False, who: Caller = Who, sellers: SellersService = Sellers
) -> list[SellerView]:
    """Admins see every seller; a seller itself; buyers the market (online sellers)."""
    return sellers.list(who, include_left)


@router.get("/v1/sellers/{seller_id}", response_model=SellerView)
def get_seller(seller_id: str, who: Caller = Who, sellers: SellersService = Sellers) -> SellerView:
    return sellers.get(who, seller_id)


@router.post("/v1/sellers/{seller_id}/heartbeat", response_model=HeartbeatReply)
def heartbeat(
    seller_id: str, body: HeartbeatRequest, who: Caller = Who, sellers: SellersService = Sellers
) -> HeartbeatReply:
    # In the thread pool, like every route that touches the store: inline on the event
    # loop, one held SQLite write lock froze the whole API and the gateway (M1).
    return sellers.heartbeat(who, seller_id, body)


@router.put("/v1/sellers/{seller_id}/offer", response_model=OfferView)
def put_offer(
    seller_id: str, body: OfferRequest, who: Caller = Who, sellers: SellersService = Sellers
) -> OfferView:
    return sellers.put_offer(who, seller_id, body)


@router.get("/v1/sellers/{seller_id}/earnings", response_model=SellerEarnings)
def earnings(
    seller_id: str, who: Caller = Who, sellers: SellersService = Sellers
) -> SellerEarnings:
    """Released and pending earnings, the last 15 minutes' rate, 30 days by day (the seller
    itself and admins)."""
    return sellers.earnings(who, seller_id)


@router.post("/v1/sellers/{seller_id}/leave", response_model=SellerView)
def leave(seller_id: str, who: Caller = Who, sellers: SellersService = Sellers) -> SellerView:
    """Drain and retire a seller: its key is revoked, its address never reused."""
    return sellers.leave(who, seller_id)


@router.post("/v1/sellers/{seller_id}/disable", response_model=SellerView)
def disable(seller_id: str, who: Caller = Who, sellers: SellersService = Sellers) -> SellerView:
    return sellers.disable(who, seller_id)


@router.get("/v1/probe/bytes", response_class=Response, dependencies=[Who])
def probe_bytes(size: int = 1024 * 1024) -> Response:
    """Bytes to time a download with: the agent's bandwidth measurement over the overlay."""
    size = max(1, min(size, PROBE_MAX_BYTES))
    return Response(b"\0" * size, media_type="application/octet-stream")
