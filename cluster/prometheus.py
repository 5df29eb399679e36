"""Prometheus file-based service discovery of every active lease's Ray metrics: the
coordinator keeps `<state dir>/prometheus/targets.json` current, one target per lease
node (its head on the hub, each member's worker at its overlay address), labelled
`lease`, `job`, `seller`. The endpoints are inside the lease's port blocks, which only
the head host reaches; so Prometheus runs there (`computeswarm up --local --metrics`,
`configs/prometheus.yml`). `targets` is pure; `LeaseTargets.sync` writes on change.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from sqlalchemy import select

from computeswarm.cluster.leases.states import ACTIVE_LEASE_STATES, ACTIVE_MEMBER_STATES, values
from computeswarm.cluster.sellers.registry import worker_port_base
from computeswarm.cluster.store.db import Store
from computeswarm.cluster.store.models import Lease, LeaseMember, Seller
from computeswarm.tunnel.backends.none import loopback_address

METRICS_OFFSET = 7  # a port block's --metrics-export-port (cluster/nodes/ray_nodes.py)
TARGETS_FILE = "targets.json"


def targets(
    leases: list[tuple[str, str | None, int]],
    members: list[tuple[str, str, str, int]],
    head_ip: str,
    node_ip: Callable[[str], str] = lambda a: a,
) -> list[dict]:
    """File SD entries: `leases` (id, job, head port base), `members` (lease, seller,
    overlay address, address as an int)."""
    jobs = {lease: job or "" for lease, job, _ in leases}
    out = [
        {
            "targets": [f"{head_ip}:{base + METRICS_OFFSET}"],
            "labels": {"lease": lease, "job": jobs[lease], "seller": "head", "node": "head"},
        }
        for lease, _, base in sorted(leases)
    ]
    for lease, seller, address, address_int in sorted(members):
        if lease not in jobs:
            continue
        port = worker_port_base(address_int) + METRICS_OFFSET
        out.append(
            {
                "targets": [f"{node_ip(address.split('/')[0])}:{port}"],
                "labels": {"lease": lease, "job": jobs[lease], "seller": seller, "node": "worker"},
            }
        )
    return out


class Hub(Protocol):
    backend_name: str

    def head_ip(self) -> str: ...


class LeaseTargets:
    def __init__(self, store: Store, state_dir: Path, hub: Hub):
        self.store, self.path = store, state_dir / "prometheus" / TARGETS_FILE
        self.hub = hub  # where lease heads listen, and how sellers' addresses map to nodes
        self._written: str | None = None

    def node_ip(self, overlay_address: str) -> str:
        """Where a seller's node listens: its overlay address, or the `none` backend's
        loopback stand-in."""
        loopback = self.hub.backend_name == "none"
        return loopback_address(overlay_address) if loopback else overlay_address

    def sync(self) -> None:
        active = Lease.state.in_(values(ACTIVE_LEASE_STATES))
        with self.store.transaction() as db:
            leases = db.execute(select(Lease.id, Lease.job_id, Lease.port_base).where(active))
            members = db.execute(
                select(LeaseMember.lease_id, Seller.id, Seller.address, Seller.address_int)
                .join(Seller, Seller.id == LeaseMember.seller_id)
                .join(Lease, Lease.id == LeaseMember.lease_id)
                .where(active, LeaseMember.state.in_(values(ACTIVE_MEMBER_STATES)))
            )
            leases, members = [tuple(r) for r in leases], [tuple(r) for r in members]
        text = json.dumps(targets(leases, members, self.hub.head_ip(), self.node_ip), indent=1)
        if text != self._written:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_suffix(".partial")
            partial.write_text(text)
            partial.replace(self.path)  # Prometheus never reads half a file
            self._written = text
