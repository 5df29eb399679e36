"""Hub and spoke roles acting on the plans, on the loopback backend (no commands run)."""

from __future__ import annotations

from pathlib import Path

from computeswarm.tunnel.addresses import AddressPool
from computeswarm.tunnel.backends.none import NoneBackend, loopback_address
from computeswarm.tunnel.keys import KeyPair
from computeswarm.tunnel.overlay import HubNode, NodePlacement, SpokeNode
from computeswarm.tunnel.topology import Node
from computeswarm.tunnel.wg import PeerStatus


def start(tmp_path: Path):
    pool = AddressPool.from_cidr()
    hub_keys = KeyPair.generate()
    hub_node = Node("hub", hub_keys.public, str(pool.hub), endpoint="127.0.0.1:51820")
    hub = HubNode.start(
        NoneBackend(),
        hub_node,
        hub_keys,
        "10.90.0.0/16",
        51820,
        NodePlacement("cshub", tmp_path / "hub", fence_table="cs_fence"),
    )
    keys = KeyPair.generate()
    node = Node("s1", keys.public, str(pool.allocate()))
    hub.add_spoke(node)
    spoke = SpokeNode.start(
        NoneBackend(),
        node,
        keys,
        hub_node,
        "10.90.0.0/16",
        51820,
        NodePlacement("css1", tmp_path / "s1", fence_table="cs_fence"),
    )
    return hub, spoke


def test_loopback_backend_maps_overlay_to_loopback(tmp_path):
    hub, spoke = start(tmp_path)
    assert hub.tunnel.address == "127.90.0.1"
    assert spoke.tunnel.address == loopback_address("10.90.0.2") == "127.90.0.2"
    assert not hub.fenced  # nothing to fence without a real interface


def test_hub_adds_removes_and_rekeys_spokes(tmp_path):
    hub, spoke = start(tmp_path)
    [peer] = hub.tunnel.peers()
    assert peer.allowed_ips == ("10.90.0.2/32",)
    new = KeyPair.generate()
    spoke.rekey(new)
    hub.rekey_spoke(peer.public_key, spoke.node)
    [peer] = hub.tunnel.peers()
    assert peer.public_key == new.public and peer.allowed_ips == ("10.90.0.2/32",)
    hub.remove_spoke(new.public)
    assert hub.tunnel.peers() == []


class _Peers:
    """Stands in for `tunnel.peers()` with chosen handshake times."""

    def __init__(self, handshakes: dict[str, int]):
        self.handshakes = handshakes

    def __call__(self) -> list[PeerStatus]:
        return [PeerStatus(k, None, (), t, 0, 0, None) for k, t in self.handshakes.items()]


def test_broken_direct_link_falls_back_to_the_hub(tmp_path):
    _, spoke = start(tmp_path)
    healthy = Node("s2", KeyPair.generate().public, "10.90.0.3", "127.0.0.1:1")
    broken = Node("s3", KeyPair.generate().public, "10.90.0.4", "127.0.0.1:2")
    spoke.link_direct(healthy, now=1000.0)
    spoke.link_direct(broken, now=1000.0)
    spoke.tunnel.peers = _Peers({healthy.public_key: 1050, broken.public_key: 0})
    fallen = spoke.check_direct_links(now=1060.0)
    assert fallen == [broken]
    assert set(spoke.direct) == {healthy.public_key}
