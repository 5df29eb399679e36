"""Hub-and-spoke peers, direct links and their fallback: pure planning."""

from __future__ import annotations

from computeswarm.tunnel.config import NAT_KEEPALIVE_SECONDS
from computeswarm.tunnel.keys import KeyPair
from computeswarm.tunnel.topology import (
    DIRECT_LINK_GRACE_S,
    DIRECT_LINK_STALE_S,
    LinkVerdict,
    Node,
    direct_link_verdict,
    direct_pairs,
    direct_peer_for,
    hub_peer_for,
    spoke_peer_for_hub,
)


def node(name: str, addr: str, *, nat: bool = False) -> Node:
    endpoint = None if nat else f"198.18.0.{addr.rsplit('.', 1)[1]}:51820"
    return Node(name, KeyPair.generate().public, addr, endpoint=endpoint, behind_nat=nat)


HUB = Node("hub", KeyPair.generate().public, "10.90.0.1", endpoint="198.18.0.1:51820")


def test_hub_routes_only_the_spokes_own_address_to_it():
    spoke = node("s1", "10.90.0.2")
    peer = hub_peer_for(spoke)
    assert peer.allowed_ips == ("10.90.0.2/32",)
    assert peer.endpoint == "198.18.0.2:51820"


def test_hub_learns_a_natted_spokes_endpoint_by_roaming():
    assert hub_peer_for(node("s3", "10.90.0.4", nat=True)).endpoint is None


def test_spoke_sends_the_whole_overlay_through_the_hub_and_keeps_nat_open():
    natted = spoke_peer_for_hub(HUB, "10.90.0.0/16", behind_nat=True)
    assert natted.allowed_ips == ("10.90.0.0/16",)
    assert natted.endpoint == HUB.endpoint
    assert natted.persistent_keepalive == NAT_KEEPALIVE_SECONDS
    assert spoke_peer_for_hub(HUB, "10.90.0.0/16", behind_nat=False).persistent_keepalive is None


def test_direct_link_is_more_specific_than_the_hub_route():
    other = node("s2", "10.90.0.3")
    peer = direct_peer_for(other)
    assert peer.allowed_ips == ("10.90.0.3/32",)
    assert peer.persistent_keepalive == NAT_KEEPALIVE_SECONDS


def test_two_natted_members_stay_relayed():
    a, b = node("a", "10.90.0.2", nat=True), node("b", "10.90.0.3", nat=True)
    c = node("c", "10.90.0.4")
    pairs = {(x.name, y.name) for x, y in direct_pairs([a, b, c])}
    assert pairs == {("a", "c"), ("b", "c")}


def test_link_verdicts():
    now = 10_000.0
    assert direct_link_verdict(now - 5, now - 100, now) is LinkVerdict.HEALTHY
    assert direct_link_verdict(0, now - DIRECT_LINK_GRACE_S + 1, now) is LinkVerdict.PENDING
    assert direct_link_verdict(0, now - DIRECT_LINK_GRACE_S - 1, now) is LinkVerdict.FALL_BACK
    stale = now - DIRECT_LINK_STALE_S - 1
    assert direct_link_verdict(stale, now - 1000, now) is LinkVerdict.FALL_BACK
