"""Who peers with whom: hub-and-spoke by default, direct links inside a lease. Pure.

Every spoke peers with the hub for the whole overlay range, so any overlay address is
reachable through the hub. A direct link adds the other member's /32 to each side:
WireGuard routes by the most specific AllowedIPs, so direct traffic skips the hub, and
removing the /32 falls back to the hub with no other change.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from computeswarm.tunnel.config import NAT_KEEPALIVE_SECONDS, PeerConfig

# A direct link whose handshake is older than this is considered broken. With keepalives
# on both ends, WireGuard re-handshakes at least every 120 s while the link works.
DIRECT_LINK_STALE_S = 180.0
# A new direct link gets this long to complete its first handshake.
DIRECT_LINK_GRACE_S = 15.0


@dataclass(frozen=True)
class Node:
    """A node as the overlay knows it. `endpoint` is its underlay host:port, if reachable."""

    name: str
    public_key: str
    address: str
    endpoint: str | None = None
    behind_nat: bool = False


def hub_peer_for(spoke: Node) -> PeerConfig:
    """The hub's view of a spoke: only the spoke's own address routes to it."""
    return PeerConfig(
        public_key=spoke.public_key,
        allowed_ips=(f"{spoke.address}/32",),
        endpoint=None if spoke.behind_nat else spoke.endpoint,
        name=spoke.name,
    )


def spoke_peer_for_hub(hub: Node, overlay_cidr: str, *, behind_nat: bool) -> PeerConfig:
    """A spoke's view of the hub: the whole overlay range goes through it."""
    return PeerConfig(
        public_key=hub.public_key,
        allowed_ips=(overlay_cidr,),
        endpoint=hub.endpoint,
        persistent_keepalive=NAT_KEEPALIVE_SECONDS if behind_nat else None,
        name=hub.name,
    )


def direct_peer_for(other: Node) -> PeerConfig:
    """A spoke's direct link to another member of its lease.

    Keepalives on both ends keep NAT mappings open and let the link's health be judged
    by handshake age (see `direct_link_verdict`).
    """
    return PeerConfig(
        public_key=other.public_key,
        allowed_ips=(f"{other.address}/32",),
        endpoint=other.endpoint,
        persistent_keepalive=NAT_KEEPALIVE_SECONDS,
        name=other.name,
    )


def direct_pairs(members: Iterable[Node]) -> list[tuple[Node, Node]]:
    """Pairs of lease members that can link directly: at least one must be reachable.

    Two nodes behind NAT cannot find each other without hole punching; they stay
    relayed through the hub.
    """
    return [
        (a, b)
        for a, b in itertools.combinations(sorted(members, key=lambda n: n.name), 2)
        if _reachable(a) or _reachable(b)
    ]


def _reachable(node: Node) -> bool:
    return node.endpoint is not None and not node.behind_nat


class LinkVerdict(enum.Enum):
    HEALTHY = "healthy"
    PENDING = "pending"  # still within its grace period
    FALL_BACK = "fall_back"  # remove the direct /32; the hub carries the traffic


def direct_link_verdict(latest_handshake: float, configured_at: float, now: float) -> LinkVerdict:
    """Judge a direct link from its last handshake time (0 = never)."""
    if latest_handshake and now - latest_handshake <= DIRECT_LINK_STALE_S:
        return LinkVerdict.HEALTHY
    if not latest_handshake and now - configured_at <= DIRECT_LINK_GRACE_S:
        return LinkVerdict.PENDING
    return LinkVerdict.FALL_BACK
