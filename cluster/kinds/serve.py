"""The `serve` kind: a Ray Serve driver on the lease, its status, and what it has served.

The driver (`serve/run.py`) writes its status (`serve.json`: ready, failed, stopped, its
replicas) into the job's serve folder in the object store, with the lease's key; the
coordinator and the gateway read it from there, never from a seller's disk.

Serve's HTTP proxy runs on the lease's head, on a port of the lease's own block, bound to
the hub's overlay address: only the coordinator (the gateway, `cluster/gateway/`) and the
lease's fenced members can reach it. Buyers reach it through the gateway, with their API
keys; the gateway meters each request into the ledger.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from sqlalchemy import func, select

from computeswarm.cluster.errors import Busy
from computeswarm.cluster.kinds.base import JobKind, RayJob, Where
from computeswarm.cluster.models import published
from computeswarm.cluster.models import registry as model_registry
from computeswarm.cluster.nodes.ray_nodes import PortBlock
from computeswarm.cluster.objects.client import UNAVAILABLE, ObjectStore
from computeswarm.cluster.objects.layout import Grant, job_prefix, serve_prefix
from computeswarm.cluster.objects.runs import StoredRun
from computeswarm.cluster.store.models import Job, Lease, ModelVersion, ServeRequest
from computeswarm.jobs import contract
from computeswarm.jobs.inputs import adapter_is_path
from computeswarm.jobs.spec import ServeJob

log = logging.getLogger("computeswarm.serve")
ENTRYPOINT = contract.SERVE_DRIVER  # its driver, started with python -I (jobs/contract.py)
READY = "ready"  # serve.json's state once the app answers


class ServeKind(JobKind):
    name = "serve"
    resumable = True  # its next lease starts the app again (the gateway follows)

    def object_grant(self, db, job: Job, spec: ServeJob, where: Where) -> Grant:
        return Grant(
            read=tuple(published.prefix_of(v) for v in registered(db, job, spec)),
            write=(job_prefix(job.account_id, job.id), status_prefix(job)),
        )

    def render(self, db, job: Job, spec: ServeJob, lease: Lease, where: Where) -> RayJob:
        if where.objects is None:
            raise Busy("the object store is not running; serve jobs keep their status there")
        return render(db, job, spec, lease, where.head_ip, where.objects)

    def view(self, db, job: Job, where: Where) -> dict:
        state = status(where.objects, job)
        return {
            "serve": {
                "endpoint": f"/v1/serve/{job.id}/v1",
                "ready": state.get("state") == READY,
                "models": state.get("models", []),
                "replicas": state.get("replicas"),
                **usage_view(db, job),
            }
        }


def status_prefix(job: Job) -> str:
    """Where the driver keeps `serve.json`: the job's serve folder in the store."""
    return serve_prefix(job.account_id, job.id)


def registered(db, job: Job, spec: ServeJob) -> list[ModelVersion]:
    """The registered versions the spec serves, resolved for the job's owner (another
    buyer's name is not found)."""
    return [model_registry.resolve(db, job.account_id, ref) for ref in spec.registered_refs()]


def adapter_folders(db, job: Job, spec: ServeJob, store: ObjectStore) -> dict[str, str]:
    """Served name -> adapter: a folder of the upload, named relative to the working dir
    (Ray ships the working dir to every node; the coordinator's copy is on no seller), or
    a registered version published in the store (`store:<prefix>`)."""
    out = {}
    for name, ref in spec.adapters.items():
        if adapter_is_path(ref):
            out[name] = ref
        else:
            version = model_registry.resolve(db, job.account_id, ref)
            out[name] = published.publish(store, version)
    return out


def render(db, job: Job, spec: ServeJob, lease: Lease, head_ip: str, store: ObjectStore) -> RayJob:
    try:  # a new lease: not ready till its driver says so
        store.delete_prefix(status_prefix(job) + contract.SERVE_FILE)
    except UNAVAILABLE as e:
        raise Busy(f"the object store cannot be asked for the serve status: {e}") from e
    contract.write_spec(Path(job.upload_path), job.spec)
    env = {
        contract.RUN_PREFIX: status_prefix(job),
        contract.ADAPTERS: json.dumps(adapter_folders(db, job, spec, store)),
        contract.SERVE_HOST: head_ip,
        contract.SERVE_PORT: str(serve_port(lease)),
        contract.SERVE_PROXY: "HeadOnly",
    }
    return RayJob(ENTRYPOINT, env)


def serve_port(lease: Lease) -> int:
    return PortBlock(lease.port_base).serve


def status(store: ObjectStore | None, job: Job) -> dict:
    """The driver's `serve.json`; {} while there is none, or the store cannot say, or the
    driver (buyer code) wrote something that is not a JSON object."""
    if store is None:
        return {}
    try:
        state = json.loads(
            StoredRun(store, status_prefix(job)).read_text(contract.SERVE_FILE) or "{}"
        )
    except (*UNAVAILABLE, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def usage_view(db, job: Job) -> dict:
    row = db.execute(
        select(
            func.count(ServeRequest.id),
            func.coalesce(func.sum(ServeRequest.prompt_tokens), 0),
            func.coalesce(func.sum(ServeRequest.completion_tokens), 0),
            func.coalesce(func.sum(ServeRequest.cost_micros), 0),
        ).where(ServeRequest.job_id == job.id)
    ).one()
    return {
        "requests": int(row[0]),
        "prompt_tokens": int(row[1]),
        "completion_tokens": int(row[2]),
        "metered_micros": int(row[3]),
    }
