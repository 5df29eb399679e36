"""Which host files a lease's sandboxes see, decided by the coordinator when it opens the
lease: the job's upload and the registered models it names (read-only), and its own run
folder (read-write). Never anything a spec or an upload names by itself.

On the one-machine testbed these are the coordinator's own folders; on sellers that are
other machines they do not exist and are simply not bound.
"""

from __future__ import annotations

from pathlib import Path

from computeswarm.cluster.kinds import serve as serve_jobs
from computeswarm.cluster.kinds import training as training_jobs
from computeswarm.cluster.models import registry as model_registry
from computeswarm.cluster.store.models import Job
from computeswarm.jobs.spec import LoraJob, PipelineJob, ServeJob, SweepJob, adapter_is_path


def lease_files(db, job: Job, spec, storage: Path) -> dict[str, list[str]]:
    """{"read": [...], "write": [...]} for a lease that runs `job`."""
    read = [job.upload_path] if job.upload_path else []
    write: list[str] = []
    if isinstance(spec, LoraJob | PipelineJob | SweepJob):
        write.append(str(training_jobs.choose_run_dir(storage, job, spec)))
        if isinstance(spec, LoraJob) and spec.init_adapter:
            read.append(model_registry.resolve(db, job.account_id, spec.init_adapter).artifact_path)
    elif isinstance(spec, ServeJob):
        write.append(str(serve_jobs.serve_dir(storage, job)))
        read += [
            model_registry.resolve(db, job.account_id, ref).artifact_path
            for ref in spec.adapters.values()
            if not adapter_is_path(ref)
        ]
    return {"read": read, "write": write}
