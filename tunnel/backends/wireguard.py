"""What the kernel and userspace backends share: the interface once its link exists.

The two differ only in how the link is born (`ip link add type wireguard` vs a
wireguard-go process); addresses, peers, keys and teardown are the same `ip`/`wg` calls.
"""

from __future__ import annotations

import subprocess
from abc import abstractmethod

from computeswarm.tunnel import netns, wg
from computeswarm.tunnel.backends.base import Tunnel, TunnelBackend, TunnelSpec
from computeswarm.tunnel.config import PeerConfig
from computeswarm.tunnel.keys import KeyPair
from computeswarm.tunnel.wg import PeerStatus

DEFAULT_MTU = 1420  # 1500 minus WireGuard's IPv4 overhead


class WireGuardTunnel(Tunnel):
    """A real WireGuard interface, configured with `ip` and `wg`."""

    def __init__(self, spec: TunnelSpec, process: subprocess.Popen | None = None):
        self.spec = spec
        self.process = process  # wireguard-go, for the userspace backend
        self._down = False

    @property
    def link_netns(self) -> str | None:
        """The namespace the interface lives in (the workload's, when fenced)."""
        return self.spec.workload_netns or self.spec.netns

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def configure(self) -> None:
        """Load keys and peers, move the link where it belongs, then address it and go up."""
        spec, ns = self.spec, self.spec.netns
        wg.setconf(spec.iface, spec.config, namespace=ns)
        if spec.workload_netns:
            # The UDP socket stays in `ns`; only the interface moves (see RAY-NOTES.md).
            netns.run(["ip", "link", "set", spec.iface, "netns", spec.workload_netns], netns=ns)
        for addr in spec.config.addresses:
            netns.run(["ip", "addr", "add", addr, "dev", spec.iface], netns=self.link_netns)
        mtu = str(spec.config.mtu or DEFAULT_MTU)
        netns.run(["ip", "link", "set", spec.iface, "mtu", mtu, "up"], netns=self.link_netns)

    def set_peer(self, peer: PeerConfig) -> None:
        wg.set_peer(self.spec.iface, peer, namespace=self.link_netns)

    def remove_peer(self, public_key: str) -> None:
        wg.remove_peer(self.spec.iface, public_key, namespace=self.link_netns)

    def rekey(self, pair: KeyPair) -> None:
        wg.set_private_key(self.spec.iface, pair.private, namespace=self.link_netns)

    def peers(self) -> list[PeerStatus]:
        return wg.show(self.spec.iface, namespace=self.link_netns)[2]

    def public_key(self) -> str:
        return wg.show(self.spec.iface, namespace=self.link_netns)[0]

    def down(self) -> None:
        if self._down:
            return
        self._down = True
        for ns in {self.link_netns, self.spec.netns}:
            if ns is None or netns.exists(ns):
                netns.run(["ip", "link", "del", self.spec.iface], netns=ns, check=False)
        self._stop_process()

    def _stop_process(self) -> None:
        """Hook for backends that run a process per interface."""


class WireGuardBackend(TunnelBackend):
    """Brings up a WireGuardTunnel once the subclass has created the link."""

    def up(self, spec: TunnelSpec) -> WireGuardTunnel:
        tunnel = self.create_link(spec)
        try:
            tunnel.configure()
        except BaseException:
            tunnel.down()
            raise
        return tunnel

    @abstractmethod
    def create_link(self, spec: TunnelSpec) -> WireGuardTunnel: ...
