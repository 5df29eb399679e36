"""No tunnel: overlay addresses map onto loopback, for machines without root or WireGuard.

Linux routes all of 127.0.0.0/8 to `lo`, so 10.90.0.7 becomes 127.90.0.7 and services
bind and connect exactly as they would over the overlay, on one machine. Peers are only
recorded: there is no encryption and no isolation in this mode, and it says so.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from computeswarm.tunnel.backends.base import Capability, Tunnel, TunnelBackend, TunnelSpec
from computeswarm.tunnel.config import PeerConfig
from computeswarm.tunnel.keys import KeyPair
from computeswarm.tunnel.wg import PeerStatus

LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


def loopback_address(overlay_address: str) -> str:
    """The loopback stand-in for an overlay address: keep the low 24 bits."""
    addr = ipaddress.IPv4Address(overlay_address.split("/")[0])
    return str(LOOPBACK.network_address + (int(addr) & 0x00FFFFFF))


class NoneBackend(TunnelBackend):
    name = "none"

    def check(self) -> Capability:
        return Capability(True, "always available: loopback addresses, no encryption or fencing")

    def up(self, spec: TunnelSpec) -> LoopbackTunnel:
        return LoopbackTunnel(spec)


class LoopbackTunnel(Tunnel):
    def __init__(self, spec: TunnelSpec):
        self.spec = spec
        self._peers: dict[str, PeerConfig] = {}
        for peer in spec.config.peers:
            self.set_peer(peer)

    @property
    def address(self) -> str:
        return loopback_address(self.spec.address)

    def set_peer(self, peer: PeerConfig) -> None:
        self._peers[peer.public_key] = peer

    def remove_peer(self, public_key: str) -> None:
        self._peers.pop(public_key, None)

    def rekey(self, pair: KeyPair) -> None:
        self.spec = replace(self.spec, config=replace(self.spec.config, private_key=pair.private))

    def peers(self) -> list[PeerStatus]:
        return [
            PeerStatus(p.public_key, p.endpoint, p.allowed_ips, 0, 0, 0, p.persistent_keepalive)
            for p in self._peers.values()
        ]

    def down(self) -> None:
        self._peers.clear()
