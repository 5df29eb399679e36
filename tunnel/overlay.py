"""The two roles in the overlay, acting on the pure plans of `topology` and `fencing`.

`HubNode` runs on the head host: one peer per spoke, forwarding between spokes of a
shared group. `SpokeNode` runs on a seller: one peer for the hub plus direct links to
fellow lease members. The coordinator and the seller agent drive these; so do the demo
and the e2e tests.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from computeswarm.tunnel import fencing, netns
from computeswarm.tunnel.backends import Tunnel, TunnelBackend, TunnelSpec
from computeswarm.tunnel.backends.none import LoopbackTunnel
from computeswarm.tunnel.config import InterfaceConfig
from computeswarm.tunnel.keys import KeyPair
from computeswarm.tunnel.topology import (
    LinkVerdict,
    Node,
    direct_link_verdict,
    direct_peer_for,
    hub_peer_for,
    spoke_peer_for_hub,
)


@dataclass
class NodePlacement:
    """Where a node's pieces live on this machine."""

    iface: str
    state_dir: Path
    netns: str | None = None  # the node's underlay namespace (None: this host's)
    underlay_ifaces: tuple[str, ...] = ("eth0",)
    workload_netns: str | None = None  # sellers: the fenced namespace for buyer code
    fence_table: str | None = None  # nft table name; None: do not fence


class HubNode:
    """The hub: forwards between spokes that share a group, and nothing else."""

    def __init__(
        self,
        node: Node,
        overlay_cidr: str,
        tunnel: Tunnel,
        placement: NodePlacement,
        public_tcp_ports: tuple[int, ...],
    ):
        self.node = node
        self.overlay_cidr = overlay_cidr
        self.tunnel = tunnel
        self.placement = placement
        self.public_tcp_ports = public_tcp_ports
        self.spokes: dict[str, Node] = {}
        self.groups: dict[str, frozenset[str]] = {}
        self.services: dict[str, tuple[int, int]] = {}
        # None: the hub's own ports are open to the whole overlay (plain overlay use);
        # a tuple: only these, plus each group's service range for its members.
        self.overlay_tcp_ports: tuple[int, ...] | None = None
        # Local processes fenced by uid (lease heads' sandboxes): each group's own uid,
        # and the whole range of such uids (None: no local fence).
        self.local_uids: dict[str, int] = {}
        self.fenced_uids: tuple[int, int] | None = None

    @classmethod
    def start(
        cls,
        backend: TunnelBackend,
        node: Node,
        keypair: KeyPair,
        overlay_cidr: str,
        listen_port: int,
        placement: NodePlacement,
        public_tcp_ports: tuple[int, ...] = (),
        overlay_tcp_ports: tuple[int, ...] | None = None,
        fenced_uids: tuple[int, int] | None = None,
    ) -> HubNode:
        """`public_tcp_ports` are open on the underlay; `overlay_tcp_ports`, when given,
        are the only hub ports open to every spoke (see `set_groups` for the rest)."""
        prefix = overlay_cidr.split("/")[1]
        config = InterfaceConfig(
            private_key=keypair.private,
            addresses=(f"{node.address}/{prefix}",),
            listen_port=listen_port,
        )
        tunnel = backend.up(
            TunnelSpec(placement.iface, config, placement.state_dir, netns=placement.netns)
        )
        hub = cls(node, overlay_cidr, tunnel, placement, public_tcp_ports)
        hub.overlay_tcp_ports = overlay_tcp_ports
        hub.fenced_uids = fenced_uids
        try:
            if hub.fenced:
                netns.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], netns=placement.netns)
                hub._apply_fence()
        except BaseException:
            hub.stop()
            raise
        return hub

    @property
    def fenced(self) -> bool:
        return self.placement.fence_table is not None and not _is_loopback(self.tunnel)

    def add_spoke(self, spoke: Node) -> None:
        self.tunnel.set_peer(hub_peer_for(spoke))
        self.spokes[spoke.public_key] = spoke

    def remove_spoke(self, public_key: str) -> None:
        """Cut a spoke off at once; its address is retired, never reused."""
        self.tunnel.remove_peer(public_key)
        self.spokes.pop(public_key, None)

    def rekey_spoke(self, old_public_key: str, spoke: Node) -> None:
        """Swap a spoke's key; it keeps its address, other peers are untouched."""
        self.remove_spoke(old_public_key)
        self.add_spoke(spoke)

    def set_groups(
        self,
        groups: Mapping[str, frozenset[str]],
        services: Mapping[str, tuple[int, int]] | None = None,
        local_uids: Mapping[str, int] | None = None,
    ) -> None:
        """Replace the forwarding groups (group -> overlay addresses), the port range on
        the hub each group alone may reach, and the uid of each group's local processes,
        atomically."""
        self.groups = {name: frozenset(members) for name, members in groups.items()}
        if services is not None:
            self.services = dict(services)
        if local_uids is not None:
            self.local_uids = dict(local_uids)
        if self.fenced:
            self._apply_fence()

    def stop(self) -> None:
        if self.fenced:
            fencing.remove(self.placement.fence_table, namespace=self.placement.netns)
        self.tunnel.down()

    def _apply_fence(self) -> None:
        fencing.apply(
            self.placement.fence_table,
            fencing.UnderlayFence(
                self.placement.underlay_ifaces,
                self.tunnel.spec.config.listen_port or 0,
                self.public_tcp_ports,
            ),
            fencing.HubFence(
                self.placement.iface,
                self.groups,
                self.services,
                self.overlay_tcp_ports,
                self.local_uids,
                self.fenced_uids,
            ),
            namespace=self.placement.netns,
        )


class SpokeNode:
    """A seller's end: the hub for the whole range, plus direct links inside its lease."""

    def __init__(
        self, node: Node, hub: Node, overlay_cidr: str, tunnel: Tunnel, placement: NodePlacement
    ):
        self.node = node
        self.hub = hub
        self.overlay_cidr = overlay_cidr
        self.tunnel = tunnel
        self.placement = placement
        self.direct: dict[str, tuple[Node, float]] = {}  # public key -> (node, linked at)

    @classmethod
    def start(
        cls,
        backend: TunnelBackend,
        node: Node,
        keypair: KeyPair,
        hub: Node,
        overlay_cidr: str,
        listen_port: int,
        placement: NodePlacement,
    ) -> SpokeNode:
        prefix = overlay_cidr.split("/")[1]
        config = InterfaceConfig(
            private_key=keypair.private,
            addresses=(f"{node.address}/{prefix}",),
            listen_port=listen_port,
            peers=(spoke_peer_for_hub(hub, overlay_cidr, behind_nat=node.behind_nat),),
        )
        spec = TunnelSpec(
            placement.iface,
            config,
            placement.state_dir,
            netns=placement.netns,
            workload_netns=placement.workload_netns,
        )
        spoke = cls(node, hub, overlay_cidr, backend.up(spec), placement)
        try:
            if spoke.fenced:
                fencing.apply(
                    placement.fence_table,
                    fencing.UnderlayFence(placement.underlay_ifaces, listen_port),
                    namespace=placement.netns,
                )
        except BaseException:
            spoke.stop()
            raise
        return spoke

    @property
    def fenced(self) -> bool:
        return self.placement.fence_table is not None and not _is_loopback(self.tunnel)

    def reconnect(self) -> None:
        """Drop the session with the hub and handshake afresh (after the hub re-admits us).

        A spoke whose peer entry was removed on the hub keeps sending on its old session,
        which the hub no longer knows, until WireGuard gives up on it (~15 s); re-setting
        the hub peer starts a new handshake at the next packet.
        """
        peer = spoke_peer_for_hub(self.hub, self.overlay_cidr, behind_nat=self.node.behind_nat)
        self.tunnel.remove_peer(peer.public_key)
        self.tunnel.set_peer(peer)

    def link_direct(self, other: Node, now: float | None = None) -> None:
        self.tunnel.set_peer(direct_peer_for(other))
        self.direct[other.public_key] = (other, time.time() if now is None else now)

    def unlink_direct(self, public_key: str) -> None:
        """Drop a direct link; the hub's range route carries that traffic again."""
        self.tunnel.remove_peer(public_key)
        self.direct.pop(public_key, None)

    def check_direct_links(self, now: float | None = None) -> list[Node]:
        """Fall back to the hub for every direct link that is broken; return those nodes."""
        now = time.time() if now is None else now
        seen = {p.public_key: p.latest_handshake for p in self.tunnel.peers()}
        fallen = []
        for key, (other, since) in list(self.direct.items()):
            if direct_link_verdict(seen.get(key, 0), since, now) is LinkVerdict.FALL_BACK:
                self.unlink_direct(key)
                fallen.append(other)
        return fallen

    def rekey(self, pair: KeyPair) -> None:
        """Switch to a new key pair (the hub must be given the new public key)."""
        self.tunnel.rekey(pair)
        self.node = Node(
            self.node.name, pair.public, self.node.address, self.node.endpoint, self.node.behind_nat
        )

    def stop(self) -> None:
        if self.fenced:
            fencing.remove(self.placement.fence_table, namespace=self.placement.netns)
        self.tunnel.down()


def _is_loopback(tunnel: Tunnel) -> bool:
    # Without a real interface there is nothing to fence (the `none` backend says so).
    return isinstance(tunnel, LoopbackTunnel)
