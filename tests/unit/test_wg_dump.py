"""`wg show dump` parsing."""

from __future__ import annotations

from computeswarm.tunnel.wg import parse_dump

DUMP = (
    "cHJpdmF0ZQ==\tPUBHUB=\t51820\toff\n"
    "PEER1=\t(none)\t198.18.0.2:51820\t10.90.0.2/32\t1700000000\t2068\t1756\toff\n"
    "PEER2=\t(none)\t(none)\t10.90.0.3/32,10.91.0.0/24\t0\t0\t148\t25\n"
)


def test_parses_interface_and_peers():
    public, port, peers = parse_dump(DUMP)
    assert (public, port) == ("PUBHUB=", 51820)
    first, second = peers
    assert first.endpoint == "198.18.0.2:51820"
    assert (first.rx_bytes, first.tx_bytes) == (2068, 1756)
    assert first.handshake_age(now=1700000010) == 10
    assert second.endpoint is None
    assert second.allowed_ips == ("10.90.0.3/32", "10.91.0.0/24")
    assert second.handshake_age(now=1700000010) is None
    assert second.persistent_keepalive == 25
