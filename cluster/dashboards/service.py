"""Which lease a dashboard request may reach: the owner's running lease, nothing else."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from computeswarm.cluster.accounts.roles import Caller, Role
from computeswarm.cluster.dashboards.sessions import TICKET_TTL_S, DashboardSessions
from computeswarm.cluster.errors import Conflict, NotFound
from computeswarm.cluster.leases.states import LeaseState
from computeswarm.cluster.nodes.ray_nodes import PortBlock
from computeswarm.cluster.store.db import Store
from computeswarm.cluster.store.models import Job, Lease


@dataclass(frozen=True)
class Upstream:
    """A lease head's dashboard and the lease's Ray token, which only the proxy adds."""

    url: str
    token: str


class DashboardService:
    def __init__(self, store: Store, sessions: DashboardSessions, head_ip: Callable[[], str]):
        self.store = store
        self.sessions = sessions
        self.head_ip = head_ip

    def open(self, caller: Caller, job_id: str) -> dict:
        """A one-use link to the dashboard of the job's running lease (its owner's only)."""
        caller.require(Role.BUYER)
        with self.store.transaction() as db:
            job = db.get(Job, job_id)
            if job is None or job.account_id != caller.account_id:
                raise NotFound(f"no job {job_id}")
            lease = db.get(Lease, job.lease_id) if job.lease_id else None
            if lease is None or lease.state != LeaseState.RUNNING.value:
                raise Conflict(
                    f"job {job_id} has no running lease (it is {job.state}); its Ray "
                    "dashboard lives as long as the lease does"
                )
            lease_id = lease.id
        ticket = self.sessions.ticket(lease_id, caller.account_id)
        return {
            "lease_id": lease_id,
            "path": f"/dashboards/{lease_id}/?ticket={ticket}",
            "expires_in_s": TICKET_TTL_S,
        }

    def upstream(self, lease_id: str, account_id: str) -> Upstream | None:
        """The lease's dashboard while it runs, for its owner; else None (a 404)."""
        with self.store.transaction() as db:
            lease = db.get(Lease, lease_id)
            if (
                lease is None
                or lease.account_id != account_id
                or lease.state != LeaseState.RUNNING.value
            ):
                return None
            port = PortBlock(lease.port_base).dashboard
            return Upstream(f"http://{self.head_ip()}:{port}", lease.token)
