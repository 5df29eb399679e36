"""The narrow interface every tunnel backend implements: check, bring up, update, tear down."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from computeswarm.tunnel.config import InterfaceConfig, PeerConfig
from computeswarm.tunnel.errors import InterfaceNameError
from computeswarm.tunnel.keys import KeyPair
from computeswarm.tunnel.wg import PeerStatus

# Linux allows 15 bytes; wireguard-go's control socket is /var/run/wireguard/<name>.sock,
# shared by every namespace, so a name must be unique on the whole machine.
_IFNAME = re.compile(r"^[A-Za-z0-9_=+-][A-Za-z0-9_=+.-]{0,14}$")


@dataclass(frozen=True)
class Capability:
    """Whether a backend can run here, and why (not)."""

    ok: bool
    reason: str


@dataclass(frozen=True)
class TunnelSpec:
    """What to bring up.

    `netns` is where the node's underlay lives (and where the UDP socket stays);
    `workload_netns`, when set, receives the interface itself, so processes there see
    the overlay and nothing else (the seller-isolation pattern).
    """

    iface: str
    config: InterfaceConfig
    state_dir: Path
    netns: str | None = None
    workload_netns: str | None = None

    def __post_init__(self) -> None:
        check_interface_name(self.iface)

    @property
    def address(self) -> str:
        return self.config.addresses[0].split("/")[0] if self.config.addresses else ""


class Tunnel(ABC):
    """A running tunnel interface; peers change live, never by re-creating it."""

    spec: TunnelSpec

    @property
    def address(self) -> str:
        """The overlay address other nodes reach this one at."""
        return self.spec.address

    @abstractmethod
    def set_peer(self, peer: PeerConfig) -> None: ...

    @abstractmethod
    def remove_peer(self, public_key: str) -> None: ...

    @abstractmethod
    def rekey(self, pair: KeyPair) -> None:
        """Switch this interface to a new key pair; its address stays."""

    @abstractmethod
    def peers(self) -> list[PeerStatus]: ...

    @abstractmethod
    def down(self) -> None:
        """Remove the interface and stop its processes. Safe to call twice."""


class TunnelBackend(ABC):
    """A way to run WireGuard on a machine: `kernel`, `userspace` or `none`."""

    name: ClassVar[str]

    @abstractmethod
    def check(self) -> Capability:
        """Can this backend run here? Cheap, and says why not."""

    @abstractmethod
    def up(self, spec: TunnelSpec) -> Tunnel: ...


def check_interface_name(name: str) -> None:
    if not _IFNAME.match(name) or name in (".", ".."):
        raise InterfaceNameError(
            f"interface name {name!r} is invalid: 1-15 characters of letters, digits, _=+.-"
        )
