"""The `lora` and `pipeline` kinds: a training spec becomes a Ray Train driver on the lease,
its run folder shows progress, and a finished `lora` run becomes a model version.

A run folder is a prefix in the object store, `<account>/runs/<name>-<hash>/`, named by
what the weights depend on (spec and data hashes): a resubmitted job lands in the same
folder and Ray Train resumes it from its latest complete checkpoint, on whichever sellers
the new lease has. The lease's key writes only there (and its job's prefix); the
coordinator reads progress, the result and the adapter back through the store, never from
a seller's disk. A sweep's run folder is chosen the same way (`kinds/sweep.py`).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from sqlalchemy import select

from computeswarm.cluster.datasets import pins
from computeswarm.cluster.errors import Busy
from computeswarm.cluster.kinds.base import JobKind, RayJob, Where
from computeswarm.cluster.leases.states import MemberState
from computeswarm.cluster.models import published
from computeswarm.cluster.models import registry as model_registry
from computeswarm.cluster.objects.client import ObjectStore
from computeswarm.cluster.objects.layout import Grant, job_prefix, run_prefix
from computeswarm.cluster.objects.runs import StoredRun
from computeswarm.cluster.store.models import Job, Lease, LeaseMember, Seller
from computeswarm.jobs import contract
from computeswarm.jobs.spec import LoraJob, PipelineJob, SweepJob, job_from_record
from computeswarm.jobs.train.runs import run_name, spec_hash

log = logging.getLogger("computeswarm.training")
ENTRYPOINT = contract.TRAIN_DRIVER  # its driver, started with python -I (jobs/contract.py)


class TrainingKind(JobKind):
    """What `lora` and `pipeline` share: a run folder in the store, and its progress."""

    def render(self, db, job: Job, spec, lease: Lease, where: Where) -> RayJob:
        return render(db, job, spec, store_of(where))

    def object_grant(self, db, job: Job, spec, where: Where) -> Grant:
        prefix = choose_run_prefix(store_of(where), job, spec)
        versions = [model_registry.resolve(db, job.account_id, r) for r in spec.registered_refs()]
        return Grant(
            read=tuple(published.prefix_of(v) for v in versions),  # a lora's init_adapter
            write=(job_prefix(job.account_id, job.id), prefix),
        )

    def view(self, db, job: Job, where: Where) -> dict:
        return {"training": progress(job, where.objects)} if job.upload_path else {}


class LoraKind(TrainingKind):
    name = "lora"

    def register(self, db, job: Job, where: Where, now: float) -> dict | None:
        return register_result(db, job, store_of(where), where.models, now)


class PipelineKind(TrainingKind):
    name = "pipeline"

    def view(self, db, job: Job, where: Where) -> dict:
        out = super().view(db, job, where)
        if out and job.lease_id:
            out["training"]["stages"] = pipeline_split(db, job, job_from_record(job.spec))
        return out


def run_name_of(job: Job, spec: LoraJob | PipelineJob | SweepJob) -> str:
    """The run's name: the job's name and the hash of what its weights depend on."""
    return run_name(job.name, spec_hash(job.spec), pins.data_hash(job, spec.data_file))


def choose_run_prefix(store: ObjectStore, job: Job, spec: LoraJob | PipelineJob | SweepJob) -> str:
    """The run folder in the store: an unfinished run of the same spec and data is resumed
    (Ray Train from its latest complete checkpoint, Tune from its experiment), a finished
    one gets a fresh attempt (-r2, -r3...); recorded in the job, so it is chosen once (a
    requeued sweep keeps its folder, finished or not)."""
    if job.run_dir:
        return job.run_dir
    base = run_name_of(job, spec)
    name, attempt = base, 1
    try:
        while StoredRun(store, run_prefix(job.account_id, name)).exists(contract.RESULT_FILE):
            attempt += 1
            name = f"{base}-r{attempt}"
        resuming = StoredRun(store, run_prefix(job.account_id, name)).exists(contract.STEPS_LOG)
    except Exception as e:  # down or refusing: the job cannot start without its run folder
        raise Busy(f"the object store cannot be asked for the run folder: {e}") from e
    if resuming:
        log.info("job %s: resuming the unfinished run %s", job.id, name)
    job.run_dir = run_prefix(job.account_id, name)
    return job.run_dir


def stored_run(store: ObjectStore | None, job: Job) -> StoredRun | None:
    """The job's run folder in the store, once the coordinator chose it."""
    if store is None or not job.run_dir or job.run_dir.startswith("/"):
        return None  # not started yet (or a run of a release that kept runs on disk)
    return StoredRun(store, job.run_dir)


def store_of(where: Where) -> ObjectStore:
    if where.objects is None:
        raise Busy("the object store is not running; training runs keep their files there")
    return where.objects


def render(db, job: Job, spec: LoraJob | PipelineJob, store: ObjectStore) -> RayJob:
    """The entrypoint and environment of a training job's driver."""
    prefix = choose_run_prefix(store, job, spec)
    contract.write_spec(Path(job.upload_path), job.spec)
    # Ray Train's controller collects reports (and so registers checkpoints) at this pace;
    # its default leaves a fresh checkpoint unregistered for seconds.
    env = {contract.RUN_PREFIX: prefix, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
    for ref in spec.registered_refs():  # a lora's init_adapter
        version = model_registry.resolve(db, job.account_id, ref)
        env[contract.INIT_ADAPTER] = published.publish(store, version)
        env[contract.INIT_VERSION] = version.id
    return RayJob(ENTRYPOINT, env)


def register_result(db, job: Job, store: ObjectStore, models_root: Path, now: float) -> dict | None:
    """Register a finished `lora` run's adapter, fetched from its run folder in the store;
    None without a result."""
    run = stored_run(store, job)
    text = run.read_text(contract.RESULT_FILE) if run else None
    if text is None:
        return None
    with tempfile.TemporaryDirectory() as staging:
        return _register(db, job, run, json.loads(text), Path(staging), models_root, now)


def _register(db, job, run: StoredRun, result: dict, staging: Path, models_root, now):
    spec = LoraJob.model_validate(job.spec)
    adapter = run.fetch(result.get("adapter"), staging / "adapter")
    if adapter is None:
        log.warning("job %s: the run left no adapter (inside its run folder) to register", job.id)
        return None
    parent = None
    if spec.init_adapter:
        parent = model_registry.resolve(db, job.account_id, spec.init_adapter).id
    version = model_registry.register(
        db,
        account_id=job.account_id,
        name=spec.model_name,
        source_dir=adapter,
        base_model=spec.model,
        spec_hash=result["spec_hash"],
        data_hash=result["data_hash"],
        dataset=pins.dataset_of(job, spec.dataset),
        metrics=result["metrics"],
        checkpoint=run.prefix + str(result.get("checkpoint"))[:200],
        job_id=job.id,
        parent=parent,
        now=now,
        models_root=models_root,
    )
    db.flush()
    return model_registry.view(version)


def progress(job: Job, store: ObjectStore | None) -> dict:
    """What a buyer sees of a training job: the last steps' losses, the final metrics and,
    for a pipeline, the planned stage split over the lease's sellers."""
    spec = job_from_record(job.spec)
    steps = spec.training.steps if spec.training.epochs is None else None  # known at start
    out: dict = {"steps": steps, "step": 0, "recent_losses": [], "metrics": None}
    run = stored_run(store, job)
    if run is None:
        return out
    try:
        return out | _progress_of(run)
    except Exception as e:  # the store is down or a driver wrote nonsense: the view stays
        log.warning("job %s: cannot read its progress: %s", job.id, e)
        return out


def _progress_of(run: StoredRun) -> dict:
    out: dict = {}
    steps = run.read_text(contract.STEPS_LOG)
    if steps:
        lines = steps.splitlines()[-5:]
        out["recent_losses"] = [float(line.split()[1]) for line in lines if len(line.split()) > 1]
        out["step"] = int(lines[-1].split()[0]) if lines else 0
    result = run.read_text(contract.RESULT_FILE)
    if result:
        out["metrics"] = json.loads(result)["metrics"]
    return out


def pipeline_split(db, job: Job, spec: PipelineJob) -> list[dict] | None:
    """The planned stage split over the lease's sellers (one stage each)."""
    members = db.scalars(
        select(LeaseMember)
        .where(
            LeaseMember.lease_id == job.lease_id,
            LeaseMember.state != MemberState.DROPPED.value,
        )
        .order_by(LeaseMember.id)
    ).all()
    sellers = []
    for member in members:
        gpus = db.get(Seller, member.seller_id).gpus or [{}]
        sellers.append((member.seller_id, float(min(g.get("vram_gb", 0) for g in gpus))))
    if len(sellers) != spec.num_stages:
        return None
    return spec.stage_split(Path(job.upload_path), sellers)
