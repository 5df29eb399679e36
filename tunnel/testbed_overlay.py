"""A hub and sellers wired with real WireGuard across the testbed's hosts.

What the coordinator and seller agents will do across real machines, done here across
namespaces: the demo, the e2e tests and the benchmarks build on it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from computeswarm.tunnel import netns as netns_tools
from computeswarm.tunnel.addresses import AddressPool
from computeswarm.tunnel.backends import TunnelBackend
from computeswarm.tunnel.config import DEFAULT_LISTEN_PORT
from computeswarm.tunnel.keys import KeyPair
from computeswarm.tunnel.overlay import HubNode, NodePlacement, SpokeNode
from computeswarm.tunnel.testbed import Testbed
from computeswarm.tunnel.topology import Node

FENCE_TABLE = "cs_fence"


@dataclass
class TestbedOverlay:
    __test__ = False  # not a pytest test class, despite the name

    bed: Testbed
    backend: TunnelBackend
    pool: AddressPool
    state_dir: Path
    hub: HubNode | None = None
    spokes: dict[str, SpokeNode] = field(default_factory=dict)

    @classmethod
    def start(
        cls,
        backend: TunnelBackend,
        sellers: Sequence[str],
        *,
        nat_sellers: Sequence[str] = (),
        overlay_cidr: str = "10.90.0.0/16",
        state_dir: Path | None = None,
        run_id: str | None = None,
    ) -> TestbedOverlay:
        bed = Testbed.create(["hub", *sellers], nat_hosts=nat_sellers, run_id=run_id)
        state = state_dir or Path(f"/tmp/computeswarm-testbed/{bed.run_id}")
        lab = cls(bed, backend, AddressPool.from_cidr(overlay_cidr), state)
        try:
            lab._start_hub()
            for name in [*sellers, *nat_sellers]:
                lab.add_seller(name)
        except BaseException:
            lab.stop()
            raise
        return lab

    def _start_hub(self) -> None:
        host = self.bed.host("hub")
        keys = KeyPair.generate()
        node = Node(
            "hub", keys.public, str(self.pool.hub), endpoint=f"{host.ip}:{DEFAULT_LISTEN_PORT}"
        )
        placement = NodePlacement(
            self.bed.iface_name("hub"),
            self.state_dir / "hub",
            netns=host.netns,
            fence_table=FENCE_TABLE,
        )
        self.hub = HubNode.start(
            self.backend, node, keys, str(self.pool.network), DEFAULT_LISTEN_PORT, placement
        )

    def add_seller(self, name: str, keys: KeyPair | None = None) -> SpokeNode:
        """Enroll a seller: new address, its own key, tunnel up, hub told its public key."""
        host = self.bed.host(name)
        keys = keys or KeyPair.generate()
        node = Node(
            name,
            keys.public,
            str(self.pool.allocate()),
            endpoint=None if host.behind_nat else f"{host.ip}:{DEFAULT_LISTEN_PORT}",
            behind_nat=host.behind_nat,
        )
        placement = NodePlacement(
            self.bed.iface_name(name),
            self.state_dir / name,
            netns=host.netns,
            fence_table=FENCE_TABLE,
            workload_netns=self.bed.workload_namespace(name),
        )
        self.hub.add_spoke(node)
        spoke = SpokeNode.start(
            self.backend,
            node,
            keys,
            self.hub.node,
            str(self.pool.network),
            DEFAULT_LISTEN_PORT,
            placement,
        )
        self.spokes[name] = spoke
        return spoke

    def workload_netns(self, seller: str) -> str:
        return self.spokes[seller].placement.workload_netns

    def serve_echo(self, netns: str, address: str, port: int) -> None:
        self.bed.spawn(
            netns, [sys.executable, "-m", "computeswarm.tunnel.probe", "serve", address, str(port)]
        )

    def rtt(self, netns: str, address: str, port: int, *, wait_s: float = 10.0) -> dict:
        """TCP round trip from `netns` to address:port, retried while the path comes up."""
        deadline = time.monotonic() + wait_s
        while True:
            done = netns_tools.run(
                netns=netns,
                check=False,
                timeout=30,
                argv=[sys.executable, "-m", "computeswarm.tunnel.probe", "rtt", address, str(port)],
            )
            result = json.loads(done.stdout or '{"ok": false, "error": "no output"}')
            if result["ok"] or time.monotonic() > deadline:
                return result
            time.sleep(0.2)

    def reachable(self, netns: str, address: str, port: int, *, wait_s: float = 10.0) -> bool:
        return self.rtt(netns, address, port, wait_s=wait_s)["ok"]

    def stop(self) -> None:
        for spoke in self.spokes.values():
            spoke.stop()
        if self.hub:
            self.hub.stop()
        self.bed.destroy()

    def __enter__(self) -> TestbedOverlay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
