"""WireGuard interface + peers model, rendered to and parsed from wg-quick `.conf` files.

`render()` writes a file wg-quick accepts; `render(for_wg=True)` drops wg-quick's own keys
(Address, MTU) so `wg setconf` accepts it. `parse()` inverts `render()` exactly.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from dataclasses import dataclass, field

from computeswarm.tunnel.errors import ConfigParseError
from computeswarm.tunnel.keys import parse_private_key, parse_public_key

DEFAULT_LISTEN_PORT = 51820
# Keepalive that holds a NAT mapping open (most NATs expire UDP mappings after 30-120 s).
NAT_KEEPALIVE_SECONDS = 25

_INTERFACE_KEYS = {"privatekey", "address", "listenport", "mtu"}
_PEER_KEYS = {"publickey", "presharedkey", "allowedips", "endpoint", "persistentkeepalive"}
_CANONICAL = {
    "privatekey": "PrivateKey",
    "address": "Address",
    "listenport": "ListenPort",
    "mtu": "MTU",
    "publickey": "PublicKey",
    "presharedkey": "PresharedKey",
    "allowedips": "AllowedIPs",
    "endpoint": "Endpoint",
    "persistentkeepalive": "PersistentKeepalive",
}
_NAME_COMMENT = "# Name = "


@dataclass(frozen=True)
class PeerConfig:
    """One [Peer] section. `name` is ours (a comment in the file), not WireGuard's."""

    public_key: str
    allowed_ips: tuple[str, ...]
    endpoint: str | None = None
    persistent_keepalive: int | None = None
    preshared_key: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        _set(self, "public_key", parse_public_key(self.public_key, field="peer PublicKey"))
        _set(self, "allowed_ips", tuple(_network(ip) for ip in self.allowed_ips))
        if self.endpoint is not None:
            _set(self, "endpoint", _endpoint(self.endpoint))
        if self.persistent_keepalive is not None:
            _set(
                self,
                "persistent_keepalive",
                _int_in(self.persistent_keepalive, 0, 65535, "PersistentKeepalive"),
            )
        if self.preshared_key is not None:
            _set(self, "preshared_key", parse_private_key(self.preshared_key, field="PresharedKey"))
        if self.name is not None and ("\n" in self.name or not self.name.strip()):
            raise ConfigParseError(f"peer name {self.name!r} must be one non-empty line")


@dataclass(frozen=True)
class InterfaceConfig:
    """One [Interface] section and its peers."""

    private_key: str
    addresses: tuple[str, ...] = ()
    listen_port: int | None = None
    mtu: int | None = None
    peers: tuple[PeerConfig, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        _set(self, "private_key", parse_private_key(self.private_key, field="PrivateKey"))
        _set(self, "addresses", tuple(str(ipaddress.ip_interface(a)) for a in self.addresses))
        if self.listen_port is not None:
            _set(self, "listen_port", _int_in(self.listen_port, 0, 65535, "ListenPort"))
        if self.mtu is not None:
            _set(self, "mtu", _int_in(self.mtu, 576, 65535, "MTU"))
        keys = [p.public_key for p in self.peers]
        dup = {k for k in keys if keys.count(k) > 1}
        if dup:
            raise ConfigParseError(f"peer {sorted(dup)[0]} appears twice")

    def render(self, *, for_wg: bool = False) -> str:
        """wg-quick `.conf` text; `for_wg=True` keeps only what `wg setconf` understands."""
        lines = ["[Interface]", f"PrivateKey = {self.private_key}"]
        if not for_wg:
            lines += [f"Address = {a}" for a in self.addresses]
        if self.listen_port is not None:
            lines.append(f"ListenPort = {self.listen_port}")
        if self.mtu is not None and not for_wg:
            lines.append(f"MTU = {self.mtu}")
        for peer in self.peers:
            lines.append("")
            if peer.name and not for_wg:
                lines.append(_NAME_COMMENT + peer.name)
            lines += ["[Peer]", f"PublicKey = {peer.public_key}"]
            if peer.preshared_key:
                lines.append(f"PresharedKey = {peer.preshared_key}")
            if peer.allowed_ips:
                lines.append(f"AllowedIPs = {', '.join(peer.allowed_ips)}")
            if peer.endpoint:
                lines.append(f"Endpoint = {peer.endpoint}")
            if peer.persistent_keepalive is not None:
                lines.append(f"PersistentKeepalive = {peer.persistent_keepalive}")
        return "\n".join(lines) + "\n"


def parse(text: str) -> InterfaceConfig:
    """Parse wg-quick `.conf` text; unknown keys are errors that name the nearest key."""
    sections: list[tuple[str, dict[str, list[str]], str | None, int]] = []
    pending_name: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith(_NAME_COMMENT.rstrip()):
            pending_name = line[len(_NAME_COMMENT.rstrip()) :].strip()
            continue
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            section = line.strip("[]").strip().lower()
            if section not in ("interface", "peer") or not line.endswith("]"):
                raise ConfigParseError(
                    f"unknown section {line}; expected [Interface] or [Peer]", number
                )
            sections.append((section, {}, pending_name if section == "peer" else None, number))
            pending_name = None
            continue
        if not sections:
            raise ConfigParseError("key outside a section; start with [Interface]", number)
        if "=" not in line:
            raise ConfigParseError(f"expected `Key = Value`, got {line!r}", number)
        key, value = (part.strip() for part in line.split("=", 1))
        section, values, _, _ = sections[-1]
        allowed = _INTERFACE_KEYS if section == "interface" else _PEER_KEYS
        if key.lower() not in allowed:
            raise ConfigParseError(_unknown_key(key, allowed, section), number)
        values.setdefault(key.lower(), []).append(value)

    interfaces = [s for s in sections if s[0] == "interface"]
    if len(interfaces) != 1:
        raise ConfigParseError(f"expected exactly one [Interface] section, found {len(interfaces)}")
    _, iface, _, line = interfaces[0]
    try:
        return InterfaceConfig(
            private_key=_one(iface, "privatekey", line),
            addresses=tuple(_split_list(iface.get("address", []))),
            listen_port=_opt_int(iface, "listenport", line),
            mtu=_opt_int(iface, "mtu", line),
            peers=tuple(
                _peer(values, name, line) for kind, values, name, line in sections if kind == "peer"
            ),
        )
    except ValueError as e:
        raise ConfigParseError(str(e)) from None


def _peer(values: dict[str, list[str]], name: str | None, line: int) -> PeerConfig:
    return PeerConfig(
        public_key=_one(values, "publickey", line),
        allowed_ips=tuple(_split_list(values.get("allowedips", []))),
        endpoint=values["endpoint"][-1] if "endpoint" in values else None,
        persistent_keepalive=_opt_int(values, "persistentkeepalive", line),
        preshared_key=values["presharedkey"][-1] if "presharedkey" in values else None,
        name=name,
    )


def _unknown_key(key: str, allowed: set[str], section: str) -> str:
    names = [_CANONICAL[k] for k in sorted(allowed)]
    near = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
    hint = f"; did you mean {near[0]}?" if near else f"; valid keys: {', '.join(names)}"
    return f"unknown key {key!r} in [{section.capitalize()}]{hint}"


def _one(values: dict[str, list[str]], key: str, line: int) -> str:
    if key not in values:
        raise ConfigParseError(f"missing {_CANONICAL[key]} in the section", line)
    if len(values[key]) > 1:
        raise ConfigParseError(f"{_CANONICAL[key]} is given {len(values[key])} times", line)
    return values[key][0]


def _opt_int(values: dict[str, list[str]], key: str, line: int) -> int | None:
    if key not in values:
        return None
    raw = _one(values, key, line)
    if key == "persistentkeepalive" and raw == "off":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ConfigParseError(f"{_CANONICAL[key]} must be a number, got {raw!r}", line) from None


def _split_list(items: list[str]) -> list[str]:
    return [part.strip() for item in items for part in item.split(",") if part.strip()]


def _network(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        raise ConfigParseError(f"AllowedIPs entry {text!r} is not an IP network") from None


_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9-]{1,63})*$")


def parse_endpoint(text: str) -> str:
    """`host:port` with an IPv4 address, `[IPv6]` or a DNS name; anything else is refused
    (a peer's endpoint ends up in wg-quick configs and `wg set` arguments)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host:
        raise ConfigParseError(f"Endpoint {text!r} must be host:port")
    _int_in(port, 1, 65535, "Endpoint port")
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1] if host.endswith("]") else "x")
        except ValueError:
            raise ConfigParseError(f"Endpoint {text!r}: {host} is not an IPv6 address") from None
    elif not _HOSTNAME.match(host):
        raise ConfigParseError(f"Endpoint {text!r}: {host!r} is not an address or host name")
    return f"{host}:{int(port)}"


_endpoint = parse_endpoint


def _int_in(value: int | str, low: int, high: int, what: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigParseError(f"{what} must be a number, got {value!r}") from None
    if not low <= number <= high:
        raise ConfigParseError(f"{what} must be between {low} and {high}, got {number}")
    return number


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)
