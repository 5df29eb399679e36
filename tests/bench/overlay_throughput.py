"""Benchmark: TCP throughput over the overlay vs the underlay, and direct vs hub-relayed.

Runs iperf3 across testbed hosts with real WireGuard (wireguard-go); every figure is a
median of several runs and each ratio compares two paths measured in the same run.
Needs root, wireguard-go and iperf3. `make bench` runs it; CI does not.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from computeswarm.tunnel import fencing, netns
from computeswarm.tunnel.backends import get_backend
from computeswarm.tunnel.testbed_overlay import FENCE_TABLE, TestbedOverlay

PORT = 5201


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    backend = get_backend("userspace")
    with TestbedOverlay.start(backend, ["s1", "s2"]) as lab:
        bed, hub = lab.bed, lab.hub
        s1, s2 = lab.spokes["s1"], lab.spokes["s2"]
        hub.set_groups({"bench": frozenset({s1.node.address, s2.node.address})})
        for ns in (bed.host("hub").netns, lab.workload_netns("s2")):
            bed.spawn(ns, ["iperf3", "-s", "-p", str(PORT)])
        time.sleep(0.5)
        w1 = lab.workload_netns("s1")

        # The underlay baseline needs the underlay fence lifted for the length of the run.
        fencing.remove(FENCE_TABLE, namespace=bed.host("hub").netns)
        underlay = _measure(bed.host("s1").netns, bed.host("hub").ip, args)
        hub.set_groups(hub.groups)
        overlay = _measure(w1, hub.node.address, args)
        relayed = _measure(w1, s2.node.address, args)
        s1.link_direct(s2.node)
        s2.link_direct(s1.node)
        direct = _measure(w1, s2.node.address, args)

    rows = {
        "underlay (s1 -> hub, no tunnel)": underlay,
        "overlay (s1 -> hub, WireGuard)": overlay,
        "relayed (s1 -> hub -> s2)": relayed,
        "direct (s1 -> s2 peer link)": direct,
    }
    print(f"\nTCP throughput, median of {args.runs} x {args.seconds:g} s (Mbit/s):")
    for label, values in rows.items():
        print(
            f"  {label:<34} {statistics.median(values):8.0f}   runs: "
            + ", ".join(f"{v:.0f}" for v in values)
        )
    print(f"\n  overlay / underlay = {_ratio(overlay, underlay):.3f}")
    print(f"  direct / relayed   = {_ratio(direct, relayed):.3f}")


def _measure(namespace: str, address: str, args: argparse.Namespace) -> list[float]:
    results = []
    for _ in range(args.runs):
        done = netns.run(
            ["iperf3", "-c", address, "-p", str(PORT), "-t", str(args.seconds), "-J"],
            netns=namespace,
            timeout=args.seconds + 30,
        )
        report = json.loads(done.stdout)
        results.append(report["end"]["sum_received"]["bits_per_second"] / 1e6)
    return results


def _ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(a) / statistics.median(b)


if __name__ == "__main__":
    main()
