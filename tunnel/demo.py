"""The overlay demo: a hub and two sellers (one behind NAT), a round trip, then teardown.

With root and wireguard-go it runs real WireGuard across testbed namespaces; otherwise it
says why and shows the same flow on the `none` backend's loopback addresses.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from computeswarm.tunnel import netns
from computeswarm.tunnel.addresses import AddressPool
from computeswarm.tunnel.backends import best_backend, get_backend
from computeswarm.tunnel.backends.none import NoneBackend
from computeswarm.tunnel.keys import KeyPair
from computeswarm.tunnel.overlay import HubNode, NodePlacement, SpokeNode
from computeswarm.tunnel.testbed_overlay import TestbedOverlay
from computeswarm.tunnel.topology import Node

ECHO_PORT = 7000


def run_demo(backend_name: str = "auto") -> int:
    if backend_name == "auto":
        backend, report = best_backend()
        for name, capability in report.items():
            print(f"  backend {name:<9} {'ok' if capability.ok else 'no'}: {capability.reason}")
    else:
        backend = get_backend(backend_name)
    if isinstance(backend, NoneBackend):
        print(
            "Falling back to the 'none' backend: no root or no wireguard-go, so no real "
            "tunnel.\nOverlay addresses map onto loopback (10.90.a.b -> 127.90.a.b); "
            "there is no encryption and no fencing in this mode."
        )
        return _loopback_demo()
    return _wireguard_demo(backend)


def _wireguard_demo(backend) -> int:
    print(f"\n== ComputeSwarm overlay demo: real WireGuard ({backend.name}) ==")
    started = time.monotonic()
    with TestbedOverlay.start(backend, ["s1"], nat_sellers=["s2"]) as lab:
        bed, hub = lab.bed, lab.hub
        s1, s2 = lab.spokes["s1"], lab.spokes["s2"]
        print(
            f"testbed run {bed.run_id}: hub {bed.host('hub').ip}, s1 {bed.host('s1').ip}, "
            f"s2 {bed.host('s2').ip} behind NAT (public {bed.nat_public_ip}), "
            f"seller LAN host {bed.host('lan').ip}"
        )
        print(
            f"overlay {lab.pool.network}: hub {hub.node.address}, s1 {s1.node.address}, "
            f"s2 {s2.node.address}  (up in {time.monotonic() - started:.1f} s)"
        )
        hub.set_groups({"lease-demo": frozenset({s1.node.address, s2.node.address})})

        lab.serve_echo(bed.host("hub").netns, "0.0.0.0", ECHO_PORT)
        lab.serve_echo(lab.workload_netns("s2"), s2.node.address, ECHO_PORT)
        print("\nround trips (TCP echo, median of 5):")
        _show(
            "s1 workload -> hub (overlay)",
            lab.rtt(lab.workload_netns("s1"), hub.node.address, ECHO_PORT),
        )
        _show(
            "s2 workload (NAT) -> hub",
            lab.rtt(lab.workload_netns("s2"), hub.node.address, ECHO_PORT),
        )
        _show(
            "s1 -> s2 relayed by the hub",
            lab.rtt(lab.workload_netns("s1"), s2.node.address, ECHO_PORT),
        )
        s1.link_direct(s2.node)
        s2.link_direct(s1.node)
        _show(
            "s1 -> s2 over a direct link",
            lab.rtt(lab.workload_netns("s1"), s2.node.address, ECHO_PORT),
        )

        print("\nfences:")
        underlay = lab.rtt(bed.host("s1").netns, bed.host("hub").ip, ECHO_PORT, wait_s=0)
        _show_blocked(f"s1 -> hub's underlay {bed.host('hub').ip}:{ECHO_PORT}", underlay)
        lan = lab.rtt(lab.workload_netns("s2"), bed.host("lan").ip, 22, wait_s=0)
        _show_blocked(f"s2 workload -> seller LAN {bed.host('lan').ip}", lan)

        print("\nhub peers (wg show):")
        names = {s.node.public_key: s.node.name for s in lab.spokes.values()}
        for peer in hub.tunnel.peers():
            age = peer.handshake_age(time.time())
            print(
                f"  {names.get(peer.public_key, '?'):<4} {peer.public_key[:10]}...  "
                f"allowed {','.join(peer.allowed_ips):<15} endpoint {peer.endpoint or '-':<22}"
                f" handshake {'never' if age is None else f'{age:.0f}s ago':<9}"
                f" rx {peer.rx_bytes} B  tx {peer.tx_bytes} B"
            )
        namespaces = list(bed.namespaces)
    left = [ns for ns in namespaces if netns.exists(ns)]
    print(
        f"\nteardown: {len(namespaces)} namespaces removed, "
        f"{'nothing left behind' if not left else f'LEFT: {left}'}"
    )
    return 0 if not left else 1


def _loopback_demo() -> int:
    pool = AddressPool.from_cidr()
    backend = NoneBackend()
    state = Path(tempfile.mkdtemp(prefix="cs-demo-"))
    hub_keys = KeyPair.generate()
    hub_node = Node("hub", hub_keys.public, str(pool.hub), endpoint="127.0.0.1:51820")
    hub = HubNode.start(
        backend, hub_node, hub_keys, str(pool.network), 51820, NodePlacement("cshub", state / "hub")
    )
    spokes = []
    for name in ("s1", "s2"):
        keys = KeyPair.generate()
        node = Node(name, keys.public, str(pool.allocate()), behind_nat=name == "s2")
        hub.add_spoke(node)
        spokes.append(
            SpokeNode.start(
                backend,
                node,
                keys,
                hub_node,
                str(pool.network),
                51820,
                NodePlacement(f"cs{name}", state / name),
            )
        )
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "computeswarm.tunnel.probe",
            "serve",
            hub.tunnel.address,
            str(ECHO_PORT),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        from computeswarm.tunnel.probe import rtt, wait_until_listening

        wait_until_listening(hub.tunnel.address, ECHO_PORT)
        print(f"hub {hub.node.address} -> {hub.tunnel.address}")
        for spoke in spokes:
            _show(
                f"{spoke.node.name} ({spoke.tunnel.address}) -> hub",
                rtt(hub.tunnel.address, ECHO_PORT, source=spoke.tunnel.address),
            )
        print(f"hub knows {len(hub.tunnel.peers())} peers")
    finally:
        server.terminate()
        server.wait(5)
        for spoke in spokes:
            spoke.stop()
        hub.stop()
    print("teardown: done")
    return 0


def _show(label: str, result: dict) -> None:
    value = f"{result['median_ms']:.2f} ms" if result["ok"] else f"FAILED ({result['error']})"
    print(f"  {label:<34} {value}")


def _show_blocked(label: str, result: dict) -> None:
    verdict = "blocked, as it should be" if not result["ok"] else "REACHABLE (fence broken!)"
    print(f"  {label:<44} {verdict}")
