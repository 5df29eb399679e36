"""Tunnel metrics as Prometheus text."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from computeswarm.tunnel.metrics import TunnelCollector
from computeswarm.tunnel.wg import PeerStatus


def test_exports_handshake_age_and_bytes_per_peer():
    peers = [
        PeerStatus("KEY1=", "198.18.0.2:51820", ("10.90.0.2/32",), 1000, 2048, 1024, None),
        PeerStatus("KEY2=", None, ("10.90.0.3/32",), 0, 0, 0, 25),
    ]
    registry = CollectorRegistry()
    registry.register(
        TunnelCollector(lambda: [("wg-hub", peers, {"KEY1=": "s1"})], clock=lambda: 1030.0)
    )
    text = generate_latest(registry).decode()
    labels1 = 'interface="wg-hub",peer="KEY1=",peer_name="s1"'
    assert f"computeswarm_tunnel_peer_handshake_age_seconds{{{labels1}}} 30.0" in text
    assert f"computeswarm_tunnel_peer_received_bytes_total{{{labels1}}} 2048.0" in text
    assert f"computeswarm_tunnel_peer_sent_bytes_total{{{labels1}}} 1024.0" in text
    labels2 = 'interface="wg-hub",peer="KEY2=",peer_name=""'
    assert f"computeswarm_tunnel_peer_handshake_age_seconds{{{labels2}}} -1.0" in text
    assert 'computeswarm_tunnel_peers{interface="wg-hub"} 2.0' in text
