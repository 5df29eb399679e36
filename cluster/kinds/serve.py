"""The `serve` kind: a Ray Serve driver on the lease, its status, and what it has served.

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

from computeswarm.cluster.kinds.base import JobKind, RayJob, Where
from computeswarm.cluster.models import registry as model_registry
from computeswarm.cluster.nodes.ray_nodes import PortBlock
from computeswarm.cluster.store.models import Job, Lease, ServeRequest
from computeswarm.jobs import contract
from computeswarm.jobs.inputs import adapter_is_path
from computeswarm.jobs.spec import ServeJob

log = logging.getLogger("computeswarm.serve")
ENTRYPOINT = contract.SERVE_DRIVER  # its driver, started with python -I (jobs/contract.py)
READY = "ready"  # serve.json's state once the app answers


class ServeKind(JobKind):
    name = "serve"
    resumable = True  # its next lease starts the app again (the gateway follows)

    def lease_files(self, db, job: Job, spec: ServeJob, where: Where) -> dict[str, list[str]]:
        read = [
            model_registry.resolve(db, job.account_id, ref).artifact_path
            for ref in spec.registered_refs()
        ]
        return {"read": read, "write": [str(serve_dir(where.storage, job))]}

    def render(self, db, job: Job, spec: ServeJob, lease: Lease, where: Where) -> RayJob:
        return render(db, job, spec, lease, where.head_ip, where.storage)

    def view(self, db, job: Job, where: Where) -> dict:
        state = status(where.storage, job)
        return {
            "serve": {
                "endpoint": f"/v1/serve/{job.id}/v1",
                "ready": state.get("state") == READY,
                "models": state.get("models", []),
                "replicas": state.get("replicas"),
                **usage_view(db, job),
            }
        }


def serve_dir(storage: Path, job: Job) -> Path:
    return storage / job.account_id / "serve" / job.id


def adapter_folders(db, job: Job, spec: ServeJob) -> dict[str, str]:
    """Served name -> absolute adapter folder: registered versions resolved for the job's
    owner (another buyer's name is not found), folders taken from the upload."""
    out = {}
    for name, ref in spec.adapters.items():
        if adapter_is_path(ref):
            out[name] = str((Path(job.upload_path) / ref).resolve())
        else:
            out[name] = model_registry.resolve(db, job.account_id, ref).artifact_path
    return out


def render(db, job: Job, spec: ServeJob, lease: Lease, head_ip: str, storage: Path) -> RayJob:
    folder = serve_dir(storage, job)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / contract.SERVE_FILE).unlink(missing_ok=True)  # a new lease: not ready till it says
    contract.write_spec(Path(job.upload_path), job.spec)
    env = {
        contract.RUN_DIR: str(folder),
        contract.ADAPTERS: json.dumps(adapter_folders(db, job, spec)),
        contract.SERVE_HOST: head_ip,
        contract.SERVE_PORT: str(serve_port(lease)),
        contract.SERVE_PROXY: "HeadOnly",
    }
    return RayJob(ENTRYPOINT, env)


def serve_port(lease: Lease) -> int:
    return PortBlock(lease.port_base).serve


def status(storage: Path, job: Job) -> dict:
    try:
        return json.loads((serve_dir(storage, job) / contract.SERVE_FILE).read_text())
    except (OSError, ValueError):
        return {}


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
