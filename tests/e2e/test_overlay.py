"""The overlay for real: a hub and three sellers (one behind NAT) on testbed hosts.

One testbed for the module (bring-up is the slow part); tests that change the topology
put it back as they found it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from computeswarm.tunnel import fencing, netns
from computeswarm.tunnel.backends import BACKENDS
from computeswarm.tunnel.keys import KeyPair
from computeswarm.tunnel.metrics import TunnelCollector
from computeswarm.tunnel.testbed_overlay import FENCE_TABLE, TestbedOverlay

ECHO = 7000


@pytest.fixture(scope="module")
def lab():
    lab = TestbedOverlay.start(BACKENDS["userspace"](), ["s1", "s2"], nat_sellers=["s3"])
    try:
        bed = lab.bed
        lab.serve_echo(bed.host("hub").netns, "0.0.0.0", ECHO)
        lab.serve_echo(bed.host("lan").netns, "0.0.0.0", ECHO)
        lab.serve_echo(bed.host("s3").netns, "0.0.0.0", ECHO + 1)  # the seller's own host
        for name, spoke in lab.spokes.items():
            lab.serve_echo(lab.workload_netns(name), spoke.node.address, ECHO)
        everyone(lab)
        yield lab
    finally:
        lab.stop()


def everyone(lab: TestbedOverlay) -> None:
    """One group holding every seller: all may reach each other."""
    lab.hub.set_groups({"all": frozenset(s.node.address for s in lab.spokes.values())})


def addr(lab, name: str) -> str:
    return lab.hub.node.address if name == "hub" else lab.spokes[name].node.address


def test_every_seller_reaches_the_hub_and_every_other_seller(lab):
    for src in ("s1", "s2", "s3"):
        for dst in ("hub", "s1", "s2", "s3"):
            if src != dst:
                result = lab.rtt(lab.workload_netns(src), addr(lab, dst), ECHO)
                assert result["ok"], f"{src} -> {dst}: {result}"


def test_hub_service_is_reachable_over_the_overlay_but_not_the_underlay(lab):
    hub_ip = lab.bed.host("hub").ip
    s1_host = lab.bed.host("s1").netns
    assert lab.reachable(lab.workload_netns("s1"), lab.hub.node.address, ECHO)
    assert not lab.reachable(s1_host, hub_ip, ECHO, wait_s=0)
    # Control: without the fence the same service *is* reachable on the underlay, so the
    # fence (not something else) is what closes it.
    fencing.remove(FENCE_TABLE, namespace=lab.bed.host("hub").netns)
    try:
        assert lab.reachable(s1_host, hub_ip, ECHO, wait_s=3)
    finally:
        lab.hub.set_groups(lab.hub.groups)  # re-applies the whole fence
    assert not lab.reachable(s1_host, hub_ip, ECHO, wait_s=0)


def test_sellers_in_different_groups_cannot_reach_each_other(lab):
    s1, s2, s3 = (addr(lab, n) for n in ("s1", "s2", "s3"))
    lab.hub.set_groups({"lease-a": frozenset({s1, s2}), "lease-b": frozenset({s3})})
    try:
        assert lab.reachable(lab.workload_netns("s1"), s2, ECHO)
        assert lab.reachable(lab.workload_netns("s2"), s1, ECHO)
        assert not lab.reachable(lab.workload_netns("s1"), s3, ECHO, wait_s=0)
        assert not lab.reachable(lab.workload_netns("s3"), s1, ECHO, wait_s=0)
        assert not lab.reachable(lab.workload_netns("s3"), s2, ECHO, wait_s=0)
        assert lab.reachable(lab.workload_netns("s3"), lab.hub.node.address, ECHO)
    finally:
        everyone(lab)


def test_seller_workload_reaches_only_the_overlay(lab):
    lan, hub = lab.bed.host("lan"), lab.bed.host("hub")
    work = lab.workload_netns("s3")
    # Control: the seller's own host can reach its LAN.
    assert lab.reachable(lab.bed.host("s3").netns, lan.ip, ECHO)
    assert not lab.reachable(work, lan.ip, ECHO, wait_s=0)
    assert not lab.reachable(work, hub.ip, ECHO, wait_s=0)
    assert not lab.reachable(work, lab.bed.nat_public_ip, ECHO, wait_s=0)
    links = netns.run(["ip", "-o", "link"], netns=work).stdout
    assert sorted(
        line.split(":")[1].strip().split("@")[0] for line in links.splitlines()
    ) == sorted(["lo", lab.spokes["s3"].placement.iface])
    routes = netns.run(["ip", "-4", "route"], netns=work).stdout
    assert "default" not in routes
    # Nor can buyer code reach the internet through the hub: the hub forwards only
    # between spokes of a group, never out of the overlay.
    egress = netns.run(
        ["ip", "route", "add", "default", "dev", lab.spokes["s3"].placement.iface], netns=work
    )
    assert egress.returncode == 0
    try:
        assert not lab.reachable(work, lab.bed.host("s1").ip, ECHO, wait_s=0)
    finally:
        netns.run(["ip", "route", "del", "default"], netns=work, check=False)


def test_removing_a_peer_cuts_it_off_at_once_and_others_keep_flowing(lab):
    s2 = lab.spokes["s2"]
    stream = start_stream(lab, "s1", lab.hub.node.address, seconds=4)
    time.sleep(0.5)
    lab.hub.remove_spoke(s2.node.public_key)
    try:
        assert not lab.reachable(lab.workload_netns("s2"), lab.hub.node.address, ECHO, wait_s=0)
    finally:
        lab.hub.add_spoke(s2.node)
        s2.reconnect()
    assert lab.reachable(lab.workload_netns("s2"), lab.hub.node.address, ECHO)
    result = finish_stream(stream)
    assert result["ok"], result
    assert result["max_gap_ms"] < 500, result


def test_rekeying_a_seller_keeps_its_address_and_others_keep_flowing(lab):
    s1 = lab.spokes["s1"]
    address, old_key = s1.node.address, s1.node.public_key
    stream = start_stream(lab, "s2", lab.hub.node.address, seconds=4)
    time.sleep(0.5)
    new = KeyPair.generate()
    s1.rekey(new)
    lab.hub.rekey_spoke(old_key, s1.node)
    assert s1.node.address == address
    assert lab.reachable(lab.workload_netns("s1"), lab.hub.node.address, ECHO)
    keys = {p.public_key for p in lab.hub.tunnel.peers()}
    assert new.public in keys and old_key not in keys
    # Everyone still reaches s1 at its old address.
    assert lab.reachable(lab.workload_netns("s3"), address, ECHO)
    result = finish_stream(stream)
    assert result["ok"] and result["max_gap_ms"] < 500, result


def test_direct_link_bypasses_the_hub_and_falls_back_to_it(lab):
    s1, s3 = lab.spokes["s1"], lab.spokes["s3"]  # s3 is behind NAT
    s1.link_direct(s3.node)
    s3.link_direct(s1.node)
    try:
        assert lab.reachable(lab.workload_netns("s3"), s1.node.address, ECHO)
        relayed = hub_rx_from(lab, "s3")
        send_bulk(lab, "s3", s1.node.address)
        assert hub_rx_from(lab, "s3") - relayed < 20_000, "bulk went through the hub"
        direct = {p.public_key: p for p in s1.tunnel.peers()}[s3.node.public_key]
        assert direct.latest_handshake > 0 and direct.rx_bytes > 100_000
    finally:
        s1.unlink_direct(s3.node.public_key)
        s3.unlink_direct(s1.node.public_key)
    relayed = hub_rx_from(lab, "s3")
    send_bulk(lab, "s3", s1.node.address)
    assert hub_rx_from(lab, "s3") - relayed > 100_000, "fallback did not go through the hub"


def test_tunnel_metrics_report_real_handshakes_and_bytes(lab):
    from prometheus_client import CollectorRegistry, generate_latest

    assert lab.reachable(lab.workload_netns("s1"), lab.hub.node.address, ECHO)
    names = {s.node.public_key: s.node.name for s in lab.spokes.values()}
    registry = CollectorRegistry()
    registry.register(
        TunnelCollector(lambda: [(lab.hub.placement.iface, lab.hub.tunnel.peers(), names)])
    )
    text = generate_latest(registry).decode()
    line = next(
        ln
        for ln in text.splitlines()
        if ln.startswith("computeswarm_tunnel_peer_received_bytes_total") and 'peer_name="s1"' in ln
    )
    assert float(line.rsplit(" ", 1)[1]) > 0
    ages = [
        float(ln.rsplit(" ", 1)[1])
        for ln in text.splitlines()
        if ln.startswith("computeswarm_tunnel_peer_handshake_age_seconds")
    ]
    assert len(ages) == 3 and all(0 <= a < 180 for a in ages)


# -- helpers ------------------------------------------------------------------------------


def start_stream(lab, seller: str, address: str, seconds: float) -> subprocess.Popen:
    """Echo continuously from `seller`'s workload for `seconds`, in the background."""
    argv = [
        sys.executable,
        "-m",
        "computeswarm.tunnel.probe",
        "stream",
        address,
        str(ECHO),
        str(seconds),
    ]
    return subprocess.Popen(
        netns.ns_argv(argv, lab.workload_netns(seller)), stdout=subprocess.PIPE, text=True
    )


def finish_stream(process) -> dict:
    out, _ = process.communicate(timeout=30)
    return json.loads(out)


def hub_rx_from(lab, seller: str) -> int:
    key = lab.spokes[seller].node.public_key
    return next(p.rx_bytes for p in lab.hub.tunnel.peers() if p.public_key == key)


def send_bulk(lab, seller: str, address: str, size: int = 500_000) -> None:
    code = (
        "import socket,sys; s=socket.create_connection((sys.argv[1],int(sys.argv[2])),5);"
        "s.settimeout(5); data=b'x'*int(sys.argv[3]); s.sendall(data); got=0\n"
        "while got<len(data): got+=len(s.recv(65536))"
    )
    netns.run(
        [sys.executable, "-c", code, address, str(ECHO), str(size)],
        netns=lab.workload_netns(seller),
        timeout=30,
    )


def test_seller_ports_are_closed_on_the_underlay_too(lab):
    s1 = lab.bed.host("s1")
    lab.serve_echo(s1.netns, "0.0.0.0", ECHO + 2)  # e.g. an agent port on the seller's host
    assert lab.reachable(s1.netns, "127.0.0.1", ECHO + 2)
    assert not lab.reachable(lab.bed.host("s2").netns, s1.ip, ECHO + 2, wait_s=0)


def test_an_interface_name_in_use_anywhere_on_the_machine_is_refused(lab, tmp_path):
    from computeswarm.tunnel.backends import TunnelSpec
    from computeswarm.tunnel.config import InterfaceConfig
    from computeswarm.tunnel.errors import InterfaceNameError

    taken = lab.spokes["s1"].placement.iface  # lives in s1's namespaces
    spec = TunnelSpec(
        taken,
        InterfaceConfig(private_key=KeyPair.generate().private),
        tmp_path,
        netns=lab.bed.host("s2").netns,
    )
    with pytest.raises(InterfaceNameError, match="unique across all namespaces"):
        BACKENDS["userspace"]().up(spec)
    assert lab.reachable(lab.workload_netns("s1"), lab.hub.node.address, ECHO)
