"""The `script` kind: the buyer's own entrypoint, run as the lease's Ray job."""

from __future__ import annotations

from computeswarm.cluster.kinds.base import JobKind, RayJob, Where
from computeswarm.cluster.store.models import Job, Lease
from computeswarm.jobs.spec import ScriptJob


class ScriptKind(JobKind):
    name = "script"

    def render(self, db, job: Job, spec: ScriptJob, lease: Lease, where: Where) -> RayJob:
        return RayJob(spec.entrypoint, {})
