"""Overlay address allocation: pure, monotonic, never reuses an address once given out.

Addresses are identity in the overlay (fencing rules, Ray node IPs, logs name them), so a
retired seller's address is never handed to a newcomer: allocation always moves past the
highest address ever issued. The caller persists `issued` (the coordinator's store).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from computeswarm.tunnel.errors import AddressPoolExhausted

DEFAULT_OVERLAY_CIDR = "10.90.0.0/16"


@dataclass
class AddressPool:
    """Hands out host addresses of `network`; the first host address is the hub's."""

    network: ipaddress.IPv4Network
    issued: set[ipaddress.IPv4Address] = field(default_factory=set)

    @classmethod
    def from_cidr(cls, cidr: str = DEFAULT_OVERLAY_CIDR, issued: Iterable[str] = ()) -> AddressPool:
        try:
            network = ipaddress.IPv4Network(cidr, strict=True)
        except ValueError as e:
            raise ValueError(f"invalid overlay range {cidr!r}: {e}") from None
        if network.num_addresses < 4:
            raise ValueError(f"overlay range {cidr} is too small: it needs a hub and a peer")
        pool = cls(network)
        for addr in issued:
            pool.reserve(addr)
        return pool

    @property
    def hub(self) -> ipaddress.IPv4Address:
        return self.network.network_address + 1

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen

    def allocate(self) -> ipaddress.IPv4Address:
        """Return the next never-issued address above every address issued so far."""
        floor = max(self.issued, default=self.hub)
        candidate = floor + 1
        if candidate >= self.network.broadcast_address:
            raise AddressPoolExhausted(str(self.network), len(self.issued))
        self.issued.add(candidate)
        return candidate

    def reserve(self, addr: str | ipaddress.IPv4Address) -> None:
        """Mark an address as issued (loading state, or a statically assigned peer)."""
        addr = ipaddress.IPv4Address(addr)
        if addr not in self.network or addr in (
            self.network.network_address,
            self.network.broadcast_address,
        ):
            raise ValueError(f"{addr} is not a host address of overlay range {self.network}")
        if addr == self.hub:
            raise ValueError(f"{addr} is the hub's address in {self.network}")
        self.issued.add(addr)

    def interface_address(self, addr: ipaddress.IPv4Address) -> str:
        """`addr/prefix` as written in wg-quick's Address= line."""
        return f"{addr}/{self.prefixlen}"
