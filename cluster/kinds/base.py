"""What the coordinator needs to know of a job kind: one `JobKind` per kind.

The scheduler, the services and the API never branch on a job's kind: they look its
`JobKind` up in `KINDS` (`cluster/kinds/__init__.py`) and call these hooks. Adding a kind
is its spec model (`jobs/spec.py`), its driver (run inside the Ray job, reading
`jobs/contract.py`), and one module here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from computeswarm.cluster.objects.client import ObjectStore
from computeswarm.cluster.objects.layout import Grant, job_prefix
from computeswarm.cluster.store.models import Job, Lease
from computeswarm.jobs.spec import AnyJob


@dataclass(frozen=True)
class RayJob:
    """What a spec becomes on its lease: the driver's entrypoint and environment."""

    entrypoint: str
    env_vars: dict[str, str]


@dataclass(frozen=True)
class Where:
    """Where the coordinator keeps a job's files, and where its lease's head listens."""

    models: Path  # registered model versions
    head_ip: str = ""  # the hub's overlay address (a serve job's proxy binds there)
    objects: ObjectStore | None = None  # the object store (root key): runs and status live there


class JobKind:
    """The default for every hook: a kind with no run folder, records or model."""

    name: ClassVar[str]
    # Requeued (not failed) when its lease ends under it: the kind resumes on a new lease.
    resumable: ClassVar[bool] = False

    def lease_files(self, db, job: Job, spec: AnyJob, where: Where) -> dict[str, list[str]]:
        """Host folders its lease's sandboxes see, beyond the upload: {"read", "write"}."""
        return {"read": [], "write": []}

    def object_grant(self, db, job: Job, spec: AnyJob, where: Where) -> Grant:
        """The store prefixes its lease's key reaches: by default, the job's own prefix
        (read and write), where a driver keeps what must outlive its sellers."""
        return Grant(write=(job_prefix(job.account_id, job.id),))

    def render(self, db, job: Job, spec: AnyJob, lease: Lease, where: Where) -> RayJob:
        """The Ray job to submit once every member has attached."""
        raise NotImplementedError

    def on_tick(self, db, job: Job, lease: Lease, where: Where) -> list[str]:
        """Each tick of a running lease: read the driver's records; returns the sellers
        the job no longer needs (they leave the lease now)."""
        return []

    def on_release(self, db, job: Job, where: Where) -> None:
        """Before the lease's nodes go: read the driver's last records."""

    def register(self, db, job: Job, where: Where, now: float) -> dict | None:
        """A succeeded job's model version (the registry's view of it), if it makes one."""
        return None

    def view(self, db, job: Job, where: Where) -> dict:
        """The kind's own sections of the buyer's job view (e.g. {"training": {...}})."""
        return {}
