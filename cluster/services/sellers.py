"""What the coordinator does for sellers: invites, enrollment, heartbeats, offers, leaving.

The store is the truth; the hub (the coordinator's WireGuard side) is told after each
commit, by the `SellerHub` operations, which stay with the coordinator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from computeswarm.cluster.accounts.roles import Caller, Role
from computeswarm.cluster.api.schemas import (
    Assignment,
    Enrolled,
    EnrollRequest,
    HeartbeatReply,
    HeartbeatRequest,
    HubInfo,
    InviteCreated,
    OfferRequest,
    OfferView,
    SellerEarnings,
    SellerView,
)
from computeswarm.cluster.errors import ApiError
from computeswarm.cluster.ledger import journal as ledger
from computeswarm.cluster.sellers import registry
from computeswarm.cluster.sellers.earnings import RATE_WINDOW_S, Payout, summary
from computeswarm.cluster.sellers.states import SellerState
from computeswarm.cluster.store.db import Store
from computeswarm.cluster.store.models import Offer, Seller
from computeswarm.jobs.money import money_text


class SellerHub(Protocol):
    """The hub operations a seller's lifecycle needs: each commits, then changes peers."""

    def hub_info(self) -> dict: ...

    def enroll(self, **request) -> registry.Enrollment: ...

    def leave(self, caller: Caller, seller_id: str) -> Seller: ...

    def disable(self, caller: Caller, seller_id: str) -> Seller: ...


class SellersService:
    def __init__(
        self,
        store: Store,
        clock: Callable[[], float],
        hub: SellerHub,
        *,
        invite_ttl_s: float,
        head_ip: Callable[[], str],
        wake_scheduler: Callable[[], None],
    ):
        self.store = store
        self.clock = clock
        self.hub = hub
        self.invite_ttl_s = invite_ttl_s
        self.head_ip = head_ip
        self.wake_scheduler = wake_scheduler

    # -- enrollment -----------------------------------------------------------------------

    def hub_info(self, observed_client_host: str | None) -> HubInfo:
        return HubInfo(**self.hub.hub_info(), observed_client_host=observed_client_host)

    def create_invite(self, caller: Caller, ttl_s: float | None, note: str) -> InviteCreated:
        with self.store.transaction() as db:
            token, expires = registry.create_invite(
                db, caller, ttl_s or self.invite_ttl_s, note, self.clock()
            )
        return InviteCreated(invite=token, expires_at=expires)

    def enroll(self, request: EnrollRequest) -> Enrolled:
        enrollment = self.hub.enroll(**request.model_dump())
        return Enrolled(
            seller_id=enrollment.seller.id,
            address=enrollment.seller.address,
            api_key=enrollment.api_key,
            rejoined=enrollment.rejoined,
            hub=HubInfo(**self.hub.hub_info()),
        )

    # -- the sellers ----------------------------------------------------------------------

    def list(self, caller: Caller, include_left: bool) -> list[SellerView]:
        with self.store.transaction() as db:
            sellers = registry.visible_sellers(db, caller, include_left=include_left)
            ids = [s.id for s in sellers]
            offers = (
                {o.seller_id: o for o in db.query(Offer).filter(Offer.seller_id.in_(ids))}
                if sellers
                else {}
            )
            return [seller_view(s, offers.get(s.id), caller) for s in sellers]

    def get(self, caller: Caller, seller_id: str) -> SellerView:
        with self.store.transaction() as db:
            seller = (
                registry.seller_for_buyer(db, seller_id)
                if caller.role is Role.BUYER
                else registry.own_seller(db, caller, seller_id)
            )
            return seller_view(seller, db.get(Offer, seller_id), caller)

    def heartbeat(self, caller: Caller, seller_id: str, body: HeartbeatRequest) -> HeartbeatReply:
        # A connection, not an ORM session: the hottest path (every seller, every few s).
        with self.store.connection() as db:
            state = registry.heartbeat(
                db,
                caller,
                seller_id,
                gpus=[g.model_dump() for g in body.gpus],
                simulated=body.simulated,
                rtt_ms=body.rtt_ms,
                bandwidth_mbps=body.bandwidth_mbps,
                now=self.clock(),
            )
            work = []
            if body.workers:
                registry.report_workers(db, seller_id, body.workers, self.clock())
                self.wake_scheduler()
            if state is SellerState.LEASED:
                work = registry.assignments(db, seller_id, self.head_ip())
        return HeartbeatReply(state=state.value, assignments=[Assignment(**a) for a in work])

    def put_offer(self, caller: Caller, seller_id: str, body: OfferRequest) -> OfferView:
        now = self.clock()
        if body.available_until is not None and body.available_until <= now:
            raise ApiError("available_until is in the past")
        with self.store.transaction() as db:
            offer = registry.set_offer(
                db,
                caller,
                seller_id,
                price_micros=body.price_micros,
                available_from=body.available_from,
                available_until=body.available_until,
                max_lease_hours=body.max_lease_hours,
                now=now,
            )
            return offer_view(offer)

    def earnings(self, caller: Caller, seller_id: str) -> SellerEarnings:
        now = self.clock()
        with self.store.transaction() as db:
            registry.own_seller(db, caller, seller_id)
            payouts = [
                Payout(e.ref, e.amount_micros, e.created_at)
                for e in ledger.entries_for(db, [ledger.seller(seller_id)])
            ]
            stints = registry.stints(db, seller_id, since=now - RATE_WINDOW_S)
        return SellerEarnings(**summary(payouts, stints, now))

    def leave(self, caller: Caller, seller_id: str) -> SellerView:
        return seller_view(self.hub.leave(caller, seller_id), None, caller)

    def disable(self, caller: Caller, seller_id: str) -> SellerView:
        return seller_view(self.hub.disable(caller, seller_id), None, caller)


def seller_view(seller: Seller, offer: Offer | None, caller: Caller) -> SellerView:
    """A seller as `caller` may see it: its overlay identity only for itself and admins."""
    view = SellerView(
        id=seller.id,
        name=seller.name,
        state=seller.state,
        gpus=seller.gpus or [],
        gpus_simulated=seller.gpus_simulated,
        rtt_ms=seller.rtt_ms,
        bandwidth_mbps=seller.bandwidth_mbps,
        last_heartbeat=seller.last_heartbeat,
        offer=offer_view(offer) if offer else None,
    )
    if caller.role is Role.ADMIN or seller.account_id == caller.account_id:
        view.address, view.public_key = seller.address, seller.public_key
        view.endpoint, view.behind_nat = seller.endpoint, seller.behind_nat
        view.left_at = seller.left_at
    return view


def offer_view(offer: Offer) -> OfferView:
    return OfferView(
        price_per_gpu_hour=money_text(offer.price_per_gpu_hour_micros),
        price_per_gpu_hour_micros=offer.price_per_gpu_hour_micros,
        available_from=offer.available_from,
        available_until=offer.available_until,
        max_lease_hours=offer.max_lease_hours,
    )
