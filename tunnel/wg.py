"""`wg` as a library: live peer updates on a running interface, and `wg show dump` parsed.

Every change goes through `wg set` (never by re-creating the interface), so adding,
removing or re-keying one peer leaves every other peer's session and traffic untouched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from computeswarm.tunnel import netns
from computeswarm.tunnel.config import InterfaceConfig, PeerConfig


@dataclass(frozen=True)
class PeerStatus:
    """One peer as the running interface sees it."""

    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    latest_handshake: int  # unix seconds; 0 = never
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive: int | None

    def handshake_age(self, now: float) -> float | None:
        """Seconds since the last handshake, or None if there never was one."""
        return max(0.0, now - self.latest_handshake) if self.latest_handshake else None


def parse_dump(text: str) -> tuple[str, int, list[PeerStatus]]:
    """Parse `wg show IFACE dump`: (own public key, listen port, peers)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError("empty `wg show dump` output")
    head = lines[0].split("\t")
    public, port = head[1], int(head[2])
    peers = []
    for line in lines[1:]:
        key, _psk, endpoint, allowed, handshake, rx, tx, keepalive = line.split("\t")[:8]
        peers.append(
            PeerStatus(
                public_key=key,
                endpoint=None if endpoint == "(none)" else endpoint,
                allowed_ips=() if allowed == "(none)" else tuple(allowed.split(",")),
                latest_handshake=int(handshake),
                rx_bytes=int(rx),
                tx_bytes=int(tx),
                persistent_keepalive=None if keepalive == "off" else int(keepalive),
            )
        )
    return public, port, peers


def show(iface: str, *, namespace: str | None = None) -> tuple[str, int, list[PeerStatus]]:
    return parse_dump(netns.run(["wg", "show", iface, "dump"], netns=namespace).stdout)


def setconf(iface: str, config: InterfaceConfig, *, namespace: str | None = None) -> None:
    """Load a whole config (first bring-up). The file holds a private key: 0600, then gone."""
    with _private_file(config.render(for_wg=True)) as path:
        netns.run(["wg", "setconf", iface, str(path)], netns=namespace)


def set_peer(iface: str, peer: PeerConfig, *, namespace: str | None = None) -> None:
    """Add a peer or update it in place (allowed IPs are replaced, not merged)."""
    argv = ["wg", "set", iface, "peer", peer.public_key, "allowed-ips", ",".join(peer.allowed_ips)]
    if peer.endpoint:
        argv += ["endpoint", peer.endpoint]
    argv += ["persistent-keepalive", str(peer.persistent_keepalive or "off")]
    if peer.preshared_key:
        with _private_file(peer.preshared_key + "\n") as path:
            netns.run([*argv, "preshared-key", str(path)], netns=namespace)
        return
    netns.run(argv, netns=namespace)


def remove_peer(iface: str, public_key: str, *, namespace: str | None = None) -> None:
    """Remove a peer: its session keys are dropped, so it is cut off at once."""
    netns.run(["wg", "set", iface, "peer", public_key, "remove"], netns=namespace)


def set_private_key(iface: str, private_key: str, *, namespace: str | None = None) -> None:
    with _private_file(private_key + "\n") as path:
        netns.run(["wg", "set", iface, "private-key", str(path)], netns=namespace)


@contextlib.contextmanager
def _private_file(content: str) -> Iterator[Path]:
    """A temp file created 0600 for secrets `wg` reads by path, removed afterwards."""
    fd, name = tempfile.mkstemp(prefix="cs-wg-", suffix=".conf")
    with os.fdopen(fd, "w") as f:
        f.write(content)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)
