"""The seller registry: enrollment, heartbeats, offers, leaving. Runs inside a transaction.

Each function takes the open session and returns values; the coordinator commits, and only
then touches the network (the hub) - never inside the transaction.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from computeswarm.cluster.accounts.credentials import (
    INVITE_KIND,
    new_token,
    parse_token,
    secret_matches,
)
from computeswarm.cluster.accounts.roles import Caller, Role, create_account, issue_key, revoke_keys
from computeswarm.cluster.errors import Busy, Conflict, InvalidInvite, NotFound
from computeswarm.cluster.leases.states import LeaseState, MemberState
from computeswarm.cluster.nodes.sandbox import lease_uid
from computeswarm.cluster.sellers.earnings import Stint
from computeswarm.cluster.sellers.states import SellerEvent, SellerState, transition
from computeswarm.cluster.store.models import Invite, Job, Lease, LeaseMember, Offer, Seller
from computeswarm.tunnel.addresses import AddressPool
from computeswarm.tunnel.keys import KeyPair, parse_public_key, verify_possession

# Sellers whose heartbeats are watched: every state where an agent should be running.
WATCHED = (SellerState.ENROLLED, SellerState.ONLINE, SellerState.LEASED, SellerState.DRAINING)


@dataclass(frozen=True)
class Enrollment:
    seller: Seller
    api_key: str
    rejoined: bool  # the same node redeemed the same invite again (e.g. after a crash)


def create_invite(
    db: Session, caller: Caller, ttl_s: float, note: str, now: float
) -> tuple[str, float]:
    caller.require(Role.ADMIN)
    token = new_token(INVITE_KIND)
    expires = now + ttl_s
    db.add(
        Invite(
            id=token.id,
            secret_hash=token.secret_hash,
            created_by=caller.account_id,
            created_at=now,
            expires_at=expires,
            note=note[:200],
        )
    )
    return str(token), expires


def enroll(
    db: Session,
    *,
    invite: str,
    public_key: str,
    proof: str,
    name: str,
    endpoint: str | None,
    behind_nat: bool,
    hub_keys: KeyPair,
    overlay_cidr: str,
    now: float,
) -> Enrollment:
    """Redeem an invite for a node's public key: an address, an account, an API key."""
    public_key = parse_public_key(public_key)
    row = _find_invite(db, invite)
    # Expiry and proof of possession first, for a rejoin too: an invite and a public key
    # (both may be known to others) must not re-issue a seller's API key.
    if now >= row.expires_at:
        raise InvalidInvite(
            f"this invite expired {now - row.expires_at:.0f} s ago; ask the "
            "operator for a new one (computeswarm invite create)"
        )
    verify_possession(hub_keys, public_key, invite.strip(), proof)
    if row.redeemed_at is not None:
        if row.redeemed_by_key != public_key:
            raise InvalidInvite(
                "this invite was already used by another node; ask the "
                "operator for a new one (computeswarm invite create)"
            )
        # The same node again: it crashed before saving its enrollment. Re-issue its key.
        seller = db.get(Seller, row.seller_id)
        if seller.left_at is not None or seller.state == SellerState.DISABLED:
            raise InvalidInvite(
                "this invite's seller has left or was disabled; ask the operator for a new invite"
            )
        revoke_keys(db, seller.account_id, now)
        return Enrollment(seller, issue_key(db, seller.account_id, now), rejoined=True)
    if db.scalar(select(Seller.id).where(Seller.public_key == public_key)):
        raise Conflict("this public key is already enrolled; a node keeps one key for life")

    address = _next_address(db, overlay_cidr)
    seller_id = f"s-{secrets.token_hex(6)}"
    account, api_key = create_account(db, f"seller:{seller_id}", Role.SELLER, now)
    seller = Seller(
        id=seller_id,
        account_id=account.id,
        name=name,
        public_key=public_key,
        address=str(address),
        address_int=int(address),
        state=transition(SellerState.INVITED, SellerEvent.ENROLL).value,
        endpoint=endpoint,
        behind_nat=behind_nat,
        gpus=[],
        gpus_simulated=False,
        enrolled_at=now,
        updated_at=now,
    )
    db.add(seller)
    row.redeemed_at, row.redeemed_by_key, row.seller_id = now, public_key, seller_id
    db.flush()  # surfaces a duplicate address/key now, inside this transaction
    return Enrollment(seller, api_key, rejoined=False)


def heartbeat(
    db: Session | Connection,
    caller: Caller,
    seller_id: str,
    *,
    gpus: list[dict],
    simulated: bool,
    rtt_ms: float | None,
    bandwidth_mbps: float | None,
    now: float,
) -> SellerState:
    """Record a heartbeat; returns the seller's state after it.

    The hottest path of the coordinator (every seller, every few seconds): one narrow read
    and one UPDATE statement, no ORM object loading. The UPDATE applies only if the state is
    still the one read, so a heartbeat never undoes what the scheduler decided meanwhile
    (say, leasing this seller); if it changed, the heartbeat re-reads and tries again.
    """
    for _ in range(5):
        row = db.execute(
            select(Seller.state, Seller.account_id, Seller.left_at).where(Seller.id == seller_id)
        ).one_or_none()
        if row is None or (caller.role is not Role.ADMIN and row.account_id != caller.account_id):
            raise NotFound(f"no seller {seller_id}")
        if row.left_at is not None or row.state == SellerState.DISABLED.value:
            raise NotFound(f"seller {seller_id} has left or was disabled")
        state = transition(SellerState(row.state), SellerEvent.HEARTBEAT)
        done = db.execute(
            update(Seller)
            .where(Seller.id == seller_id, Seller.state == row.state)
            .values(
                state=state.value,
                gpus=gpus,
                gpus_simulated=simulated,
                rtt_ms=rtt_ms,
                bandwidth_mbps=bandwidth_mbps,
                last_heartbeat=now,
                updated_at=now,
            )
        )
        if done.rowcount == 1:
            return state
    raise Busy(f"seller {seller_id} is changing state; heartbeat again")


def set_offer(
    db: Session,
    caller: Caller,
    seller_id: str,
    *,
    price_micros: int,
    available_from: float | None,
    available_until: float | None,
    max_lease_hours: int,
    now: float,
) -> Offer:
    seller = own_seller(db, caller, seller_id)
    _refuse_if_gone(seller)
    offer = db.get(Offer, seller_id) or Offer(seller_id=seller_id)
    offer.price_per_gpu_hour_micros = price_micros
    offer.available_from, offer.available_until = available_from, available_until
    offer.max_lease_hours, offer.updated_at = max_lease_hours, now
    db.add(offer)
    return offer


def leave(db: Session, caller: Caller, seller_id: str, now: float) -> Seller:
    """Drain and retire a seller: its key is revoked, its address is never reused."""
    seller = own_seller(db, caller, seller_id)
    if seller.left_at is not None:
        return seller
    state = transition(SellerState(seller.state), SellerEvent.LEAVE)
    # With no leases yet to wind down, draining ends at once.
    seller.state = transition(state, SellerEvent.DRAINED).value
    seller.left_at = seller.updated_at = now
    revoke_keys(db, seller.account_id, now)
    return seller


def disable(db: Session, caller: Caller, seller_id: str, now: float) -> Seller:
    caller.require(Role.ADMIN)
    seller = own_seller(db, caller, seller_id)
    seller.state = transition(SellerState(seller.state), SellerEvent.DISABLE).value
    seller.updated_at = now
    revoke_keys(db, seller.account_id, now)
    return seller


def mark_missed_heartbeats(db: Session, now: float, timeout_s: float) -> list[Seller]:
    """Move every watched seller silent for longer than `timeout_s` to offline."""
    cutoff = now - timeout_s
    stale = db.scalars(
        select(Seller).where(
            Seller.state.in_([s.value for s in WATCHED]),
            func.coalesce(Seller.last_heartbeat, Seller.enrolled_at) < cutoff,
        )
    ).all()
    for seller in stale:
        seller.state = transition(SellerState(seller.state), SellerEvent.HEARTBEAT_MISSED).value
        seller.updated_at = now
    return list(stale)


def own_seller(db: Session, caller: Caller, seller_id: str) -> Seller:
    """The seller, if the caller may see it: admins all, a seller itself; else 404."""
    seller = db.get(Seller, seller_id)
    if seller is None or not _may_see(caller, seller):
        raise NotFound(f"no seller {seller_id}")
    return seller


def visible_sellers(db: Session, caller: Caller, *, include_left: bool = False) -> list[Seller]:
    """Admins see every seller; a seller sees itself; buyers see the market (online ones)."""
    query = select(Seller).order_by(Seller.enrolled_at)
    if caller.role is Role.SELLER:
        query = query.where(Seller.account_id == caller.account_id)
    elif caller.role is Role.BUYER:
        query = query.where(Seller.state == SellerState.ONLINE.value)
    if not include_left:
        query = query.where(Seller.left_at.is_(None))
    return list(db.scalars(query))


def seller_for_buyer(db: Session, seller_id: str) -> Seller:
    seller = db.get(Seller, seller_id)
    if seller is None or seller.state != SellerState.ONLINE.value or seller.left_at:
        raise NotFound(f"no seller {seller_id}")
    return seller


def _may_see(caller: Caller, seller: Seller) -> bool:
    return caller.role is Role.ADMIN or seller.account_id == caller.account_id


def _refuse_if_gone(seller: Seller) -> None:
    if seller.left_at is not None or seller.state == SellerState.DISABLED.value:
        raise NotFound(f"seller {seller.id} has left or was disabled")


def _find_invite(db: Session, text: str) -> Invite:
    token = parse_token(text, INVITE_KIND)
    if token is None:
        raise InvalidInvite(
            "malformed invite: expected csi_<id>_<secret>, as printed by "
            "`computeswarm invite create`; check it was copied whole"
        )
    row = db.get(Invite, token.id, with_for_update=True)
    if row is None or not secret_matches(token.secret, row.secret_hash):
        raise InvalidInvite(
            "invite not recognised by this coordinator (forged, mistyped, or for another swarm)"
        )
    return row


def _next_address(db: Session, overlay_cidr: str) -> ipaddress.IPv4Address:
    highest = db.scalar(select(func.max(Seller.address_int)))
    issued = [str(ipaddress.IPv4Address(highest))] if highest else []
    return AddressPool.from_cidr(overlay_cidr, issued=issued).allocate()


WORKER_PORT_START = 30000


def worker_port_base(address_int: int) -> int:
    """A seller's worker port block: distinct per seller even when all share one host
    (the `none` backend), since it derives from the seller's overlay address."""
    return WORKER_PORT_START + 100 * (address_int % 340)


def report_workers(
    db: Session | Connection, seller_id: str, workers: dict[str, str], now: float
) -> None:
    """The agent's view of its lease nodes. Only `failed` is taken at its word (a seller
    giving up its own place); attaching, which starts metering, is decided from the lease
    head's node list (`LeaseScheduler.attach_joined`), never from this claim."""
    for lease_id, status in workers.items():
        member = db.execute(
            select(LeaseMember.id, LeaseMember.state).where(
                LeaseMember.lease_id == lease_id,
                LeaseMember.seller_id == seller_id,
                LeaseMember.state.in_([MemberState.ASSIGNED.value, MemberState.ATTACHED.value]),
            )
        ).first()
        if member is None:
            continue
        if status == "failed":
            db.execute(
                update(LeaseMember)
                .where(LeaseMember.id == member.id)
                .values(state=MemberState.LOST.value, detached_at=now)
            )


def assignments(db: Session | Connection, seller_id: str, head_ip: str) -> list[dict]:
    """The lease nodes this seller should run now (its lease's head must be started)."""
    rows = db.execute(
        select(
            LeaseMember.gpus,
            LeaseMember.driver,
            Lease.id,
            Lease.port_base,
            Lease.token,
            Lease.files,
            Job.spec,
            Job.datasets,
            Seller.address_int,
        )
        .join(Lease, Lease.id == LeaseMember.lease_id)
        .join(Job, Job.id == Lease.job_id)
        .join(Seller, Seller.id == LeaseMember.seller_id)
        .where(
            LeaseMember.seller_id == seller_id,
            LeaseMember.state.in_([MemberState.ASSIGNED.value, MemberState.ATTACHED.value]),
            # A releasing lease keeps its nodes until it is settled: the driver's log is
            # read from the seller's node during the release.
            Lease.state.in_(
                [
                    LeaseState.PROVISIONING.value,
                    LeaseState.RUNNING.value,
                    LeaseState.RELEASING.value,
                ]
            ),
        )
    ).all()
    out = []
    for row in rows:
        resources = row.spec.get("resources", {})
        out.append(
            {
                "lease_id": row.id,
                "head": f"{head_ip}:{row.port_base}",
                "token": row.token,
                "gpus": row.gpus,
                "cpus": float(resources.get("cpus_per_node", 1.0)),
                "memory_bytes": int(float(resources.get("memory_gb_per_node", 2.0)) * 2**30),
                "driver": row.driver,
                "port_base": worker_port_base(row.address_int),
                "labels": {"cs-seller": seller_id, "cs-lease": row.id},
                "uid": lease_uid(row.port_base),
                "files": row.files or {},
                "datasets": sorted(row.datasets or {}),
                "volumes": sorted(row.spec.get("volumes") or {}),  # their mount paths
            }
        )
    return out


def stints(db: Session, seller_id: str, since: float) -> list[Stint]:
    """The seller's lease memberships that are not settled or ran after `since`."""
    settled = (LeaseState.CLOSED.value, LeaseState.FAILED.value)
    rows = db.execute(
        select(LeaseMember, Lease.state, Lease.ended_at)
        .join(Lease, Lease.id == LeaseMember.lease_id)
        .where(
            LeaseMember.seller_id == seller_id,
            LeaseMember.attached_at.is_not(None),
            Lease.state.not_in(settled)
            | LeaseMember.detached_at.is_(None)
            | (LeaseMember.detached_at > since),
        )
    ).all()
    return [
        Stint(
            m.lease_id,
            m.gpus,
            m.ask_micros,
            m.attached_at,
            m.detached_at if m.detached_at is not None else ended_at,
            state in settled,
        )
        for m, state, ended_at in rows
    ]
