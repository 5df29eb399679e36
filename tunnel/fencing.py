"""nftables fencing, rendered by pure code from a policy and applied atomically with `nft`.

(a) `UnderlayFence`: on any node, only WireGuard's UDP port (and explicitly public TCP
    ports, like the coordinator's enrollment API) is reachable from the underlay; Ray's
    ports, which listen on all interfaces, are not.
(b) `HubFence`: the hub forwards overlay traffic only between members of a shared group
    (a lease); everything else from the overlay, including egress to the underlay, is
    dropped by default.
    With `fenced_uids` set, processes on the hub host itself are fenced too, by uid: a
    group's own uid (`local_uids`, its lease head's sandbox) reaches only that group's
    members and its own port range on this host; every other uid of that range reaches
    nothing (buyer code pinned to a head gets no more than a seller's workload).
(c) is not a rule: a seller's workload runs in a namespace that holds only the WireGuard
    interface (see `TunnelSpec.workload_netns`), so there is no route to anything else.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from computeswarm.tunnel import netns

_TABLE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,30}$")


@dataclass(frozen=True)
class UnderlayFence:
    """Close every port on the underlay interfaces except WireGuard's (and `public_tcp`)."""

    underlay_ifaces: tuple[str, ...]
    wg_port: int
    public_tcp_ports: tuple[int, ...] = ()

    def rules(self) -> list[str]:
        ifs = _set_of(f'"{i}"' for i in self.underlay_ifaces)
        rules = [f"iifname {ifs} udp dport {self.wg_port} accept"]
        if self.public_tcp_ports:
            rules.append(
                f"iifname {ifs} tcp dport {_set_of(map(str, self.public_tcp_ports))} accept"
            )
        rules += [
            f"iifname {ifs} ct state established,related accept",
            f"iifname {ifs} drop",
        ]
        return [
            "chain input {",
            "type filter hook input priority filter; policy accept;",
            *rules,
            "}",
        ]


@dataclass(frozen=True)
class HubFence:
    """Forward between spokes only inside a group; default deny for the overlay.

    With `open_tcp_ports` set, the hub's own services are fenced too: from the overlay,
    only those ports (the coordinator API) are open to every spoke, and each group's
    `services` port range (its lease head) only to that group's members.
    """

    wg_iface: str
    groups: Mapping[str, frozenset[str]] = field(default_factory=dict)
    services: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    open_tcp_ports: tuple[int, ...] | None = None
    local_uids: Mapping[str, int] = field(default_factory=dict)
    fenced_uids: tuple[int, int] | None = None

    def pairs(self) -> list[tuple[str, str]]:
        return allowed_pairs(self.groups)

    def rules(self) -> list[str]:
        wg = f'"{self.wg_iface}"'
        pairs = self.pairs()
        out = ["set lease_pairs {", "type ipv4_addr . ipv4_addr;"]
        if pairs:
            out.append("elements = { " + ", ".join(f"{a} . {b}" for a, b in pairs) + " }")
        out += [
            "}",
            "chain forward {",
            "type filter hook forward priority filter; policy accept;",
            f"iifname {wg} oifname {wg} ip saddr . ip daddr @lease_pairs accept",
            f"iifname {wg} drop",
            f"oifname {wg} ct state established,related accept",
            f"oifname {wg} drop",
            "}",
        ]
        if self.open_tcp_ports is not None:
            out += self._input_rules(wg)
        if self.fenced_uids is not None:
            out += self._local_output_rules()
        return out

    def _local_output_rules(self) -> list[str]:
        low, high = self.fenced_uids
        rules = [
            "chain local_output {",
            "type filter hook output priority filter; policy accept;",
            f"meta skuid {low}-{high} ct state established,related accept",
        ]
        for group, uid in sorted(self.local_uids.items()):
            members = sorted(self.groups.get(group, ()))
            if members:
                rules.append(f"meta skuid {uid} ip daddr {_set_of(members)} accept")
            if group in self.services:
                first, last = self.services[group]
                rules.append(f'meta skuid {uid} oifname "lo" tcp dport {first}-{last} accept')
        return [*rules, f"meta skuid {low}-{high} drop", "}"]

    def _input_rules(self, wg: str) -> list[str]:
        rules = [
            "chain overlay_input {",
            "type filter hook input priority filter; policy accept;",
            f"iifname {wg} ct state established,related accept",
            f"iifname {wg} icmp type echo-request accept",
        ]
        if self.open_tcp_ports:
            ports = _set_of(str(p) for p in self.open_tcp_ports)
            rules.append(f"iifname {wg} tcp dport {ports} accept")
        for group, (low, high) in sorted(self.services.items()):
            members = sorted(self.groups.get(group, ()))
            if members:
                rules.append(
                    f"iifname {wg} ip saddr {_set_of(members)} tcp dport {low}-{high} accept"
                )
        return [*rules, f"iifname {wg} drop", "}"]


def allowed_pairs(groups: Mapping[str, Iterable[str]]) -> list[tuple[str, str]]:
    """Ordered (src, dst) address pairs that share at least one group, sorted."""
    pairs = {
        pair
        for members in groups.values()
        for pair in itertools.permutations(sorted(set(members)), 2)
    }
    return sorted(pairs)


def render(table: str, *fences: UnderlayFence | HubFence) -> str:
    """An nft script that atomically replaces `table` (create-if-missing, delete, create)."""
    if not _TABLE.match(table):
        raise ValueError(f"nft table name {table!r} must be letters, digits and _")
    body = [line for fence in fences for line in fence.rules()]
    return (
        "\n".join(
            [
                f"table inet {table}",
                f"delete table inet {table}",
                f"table inet {table} {{",
                *body,
                "}",
            ]
        )
        + "\n"
    )


def apply(table: str, *fences: UnderlayFence | HubFence, namespace: str | None = None) -> None:
    """Load the rendered rules in one nft transaction: no moment without a fence."""
    netns.run(["nft", "-f", "-"], netns=namespace, input=render(table, *fences))


def remove(table: str, *, namespace: str | None = None) -> None:
    netns.run(["nft", "delete", "table", "inet", table], netns=namespace, check=False)


def _set_of(items: Iterable[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"
