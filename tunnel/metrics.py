"""Per-peer tunnel metrics for Prometheus: handshake age and rx/tx bytes.

A custom collector reads the interfaces at scrape time, so the numbers are never stale
and nothing polls between scrapes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from computeswarm.tunnel.wg import PeerStatus

# (interface name, its peers, peer public key -> friendly name)
Snapshot = tuple[str, list[PeerStatus], dict[str, str]]


class TunnelCollector(Collector):
    """Collects from `source()`, which returns one Snapshot per interface."""

    def __init__(
        self, source: Callable[[], Iterable[Snapshot]], clock: Callable[[], float] = time.time
    ):
        self.source = source
        self.clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        labels = ["interface", "peer", "peer_name"]
        age = GaugeMetricFamily(
            "computeswarm_tunnel_peer_handshake_age_seconds",
            "Seconds since the latest WireGuard handshake with the peer (-1: never).",
            labels=labels,
        )
        rx = CounterMetricFamily(
            "computeswarm_tunnel_peer_received_bytes",
            "Bytes received from the peer over WireGuard.",
            labels=labels,
        )
        tx = CounterMetricFamily(
            "computeswarm_tunnel_peer_sent_bytes",
            "Bytes sent to the peer over WireGuard.",
            labels=labels,
        )
        peers = GaugeMetricFamily(
            "computeswarm_tunnel_peers", "Configured peers per interface.", labels=["interface"]
        )
        now = self.clock()
        for iface, statuses, names in self.source():
            peers.add_metric([iface], len(statuses))
            for peer in statuses:
                values = [iface, peer.public_key, names.get(peer.public_key, "")]
                handshake = peer.handshake_age(now)
                age.add_metric(values, -1.0 if handshake is None else handshake)
                rx.add_metric(values, peer.rx_bytes)
                tx.add_metric(values, peer.tx_bytes)
        yield from (peers, age, rx, tx)
