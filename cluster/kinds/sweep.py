"""The `sweep` kind: a `sweep` spec becomes a Ray Tune driver on the lease,
the driver's trial records become rows in the store, idle sellers leave the lease early,
and the best trial's adapter becomes a model version.

The driver (`tune/run.py`) writes its records, Tune's experiment and the trials'
checkpoints into the sweep's run folder, a prefix in the object store (as a training run's:
`training.choose_run_prefix`); the coordinator reads the records back from the store each
tick, never from a seller's disk. The folder outlives the lease: a sweep whose lease ends
under it (the coordinator restarted, the driver's seller was lost) goes back to the queue
and its next lease restores the experiment (`Tuner.restore`), so no finished trial runs
again.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from computeswarm.cluster.datasets import pins
from computeswarm.cluster.kinds import training as training_jobs
from computeswarm.cluster.kinds.base import JobKind, RayJob, Where
from computeswarm.cluster.leases.states import MemberState
from computeswarm.cluster.models import registry as model_registry
from computeswarm.cluster.objects.client import UNAVAILABLE, ObjectStore
from computeswarm.cluster.objects.layout import Grant, job_prefix
from computeswarm.cluster.objects.runs import StoredRun
from computeswarm.cluster.store.models import Job, Lease, LeaseMember, Seller, SweepTrial
from computeswarm.jobs import contract
from computeswarm.jobs.money import money_text
from computeswarm.jobs.spec import SweepJob
from computeswarm.jobs.train.runs import spec_hash
from computeswarm.tune.budget import trial_cost_micros

log = logging.getLogger("computeswarm.sweeps")
ENTRYPOINT = contract.SWEEP_DRIVER  # its driver, started with python -I (jobs/contract.py)
TERMINAL_TRIALS = ("completed", "stopped_early", "error", "skipped_budget")


class SweepKind(JobKind):
    name = "sweep"
    resumable = True  # the next lease restores the Tune experiment from the run folder

    def object_grant(self, db, job: Job, spec: SweepJob, where: Where) -> Grant:
        prefix = training_jobs.choose_run_prefix(training_jobs.store_of(where), job, spec)
        return Grant(write=(job_prefix(job.account_id, job.id), prefix))

    def render(self, db, job: Job, spec: SweepJob, lease: Lease, where: Where) -> RayJob:
        store = training_jobs.store_of(where)
        return render(job, spec, store, member_prices(db, lease.id))

    def on_tick(self, db, job: Job, lease: Lease, where: Where) -> list[str]:
        ingest(db, job, where.objects)
        return shrink(db, lease, job, where.objects)

    def on_release(self, db, job: Job, where: Where) -> None:
        ingest(db, job, where.objects)

    def register(self, db, job: Job, where: Where, now: float) -> dict | None:
        return register_best(db, job, training_jobs.store_of(where), where.models, now)

    def view(self, db, job: Job, where: Where) -> dict:
        return {"sweep": summary(db, job)}


def render(job: Job, spec: SweepJob, store: ObjectStore, prices: dict[str, int]) -> RayJob:
    """The Tune driver's entrypoint and environment. `prices` maps each member's overlay
    IP to its price per GPU-hour; the driver budgets with the dearest (a cap is a ceiling)."""
    prefix = training_jobs.choose_run_prefix(store, job, spec)
    contract.write_spec(Path(job.upload_path), job.spec)
    env = {
        contract.RUN_PREFIX: prefix,
        contract.PRICE_MICROS: str(max(prices.values(), default=0)),
    }
    return RayJob(ENTRYPOINT, env)


def member_prices(db, lease_id: str) -> dict[str, int]:
    """Overlay IP -> price per GPU-hour of every seller that is or was in the lease."""
    rows = db.execute(
        select(Seller.address, LeaseMember.price_micros)
        .join(LeaseMember, LeaseMember.seller_id == Seller.id)
        .where(LeaseMember.lease_id == lease_id)
    ).all()
    return {address: price for address, price in rows}


def ingest(db, job: Job, store: ObjectStore | None) -> int:
    """Copy the driver's trial records from the run folder into the database; returns how
    many changed. A trial's cost is priced here, at the price of the seller it ran on. Only
    the scheduler calls this (one writer: readers see the rows of its last tick). A store
    that cannot be read now is read at the next tick."""
    run = training_jobs.stored_run(store, job)
    if run is None:
        return 0
    rows = {
        t.trial_id: t for t in db.scalars(select(SweepTrial).where(SweepTrial.job_id == job.id))
    }
    done = {f"{t}.json" for t, row in rows.items() if row.state in TERMINAL_TRIALS}
    try:  # finished trials never change: their records are not fetched again each tick
        names = [name for name in _trial_files(run) if name not in done]
        texts = [run.read_text(f"{contract.TRIALS_DIR}/{name}") for name in names]
    except UNAVAILABLE as e:
        log.warning("job %s: cannot read its trial records now: %s", job.id, e)
        return 0
    prices = member_prices(db, job.lease_id) if job.lease_id else {}
    changed = 0
    for text in texts:
        try:
            record = json.loads(text or "")
        except ValueError:
            continue  # gone since the listing: next tick
        row = rows.get(record["trial_id"])
        if row is not None and row.state in TERMINAL_TRIALS:
            continue  # finished trials never change (a restored sweep does not rerun them)
        if row is None:
            row = SweepTrial(job_id=job.id, trial_id=record["trial_id"])
            db.add(row)
        price = prices.get(record.get("node_ip") or "", max(prices.values(), default=0))
        row.plan_index = record.get("index", 0)
        row.params = record.get("params", {})
        row.state = record.get("state", "running")
        row.iterations = record.get("iterations", 0)
        row.history = record.get("history", [])
        row.metric = record.get("metric")
        row.best_metric = record.get("best_metric")
        row.gpu_seconds = float(record.get("gpu_seconds") or 0.0)
        row.cost_micros = trial_cost_micros(row.gpu_seconds, price)
        row.checkpoint = record.get("checkpoint")
        row.node_ip = record.get("node_ip")
        row.lease_id = job.lease_id or row.lease_id  # where it runs, then where it finished
        row.started_at = record.get("started_at")
        row.ended_at = record.get("ended_at")
        changed += 1
    return changed


@dataclass(frozen=True)
class Shrink:
    """Members to let go: the sweep launches no more trials and these run none."""

    member_ids: tuple[int, ...]


def idle_members(status: dict, members: list[tuple[int, str, bool]]) -> Shrink:
    """Pure: which (member id, overlay IP, is driver) can leave. Only once launching is
    done (plan used up or cost cap reached), never the driver's seller, never one running
    a trial."""
    if not status.get("launching_done") or status.get("state") == "finished":
        return Shrink(())
    busy = set(status.get("busy_node_ips") or [])
    return Shrink(tuple(mid for mid, ip, driver in members if not driver and ip not in busy))


def _trial_files(run: StoredRun) -> list[str]:
    return [name for name in run.names(contract.TRIALS_DIR) if name.endswith(".json")]


def sweep_status(store: ObjectStore | None, job: Job) -> dict:
    """The driver's `sweep.json`; {} while there is none or the store cannot say."""
    run = training_jobs.stored_run(store, job)
    try:
        status = json.loads((run and run.read_text(contract.SWEEP_FILE)) or "{}")
    except (*UNAVAILABLE, ValueError):
        return {}
    return status if isinstance(status, dict) else {}


def shrink(db, lease: Lease, job: Job, store: ObjectStore | None) -> list[str]:
    """Release idle sellers of a running sweep; returns their ids. They stop being billed
    now; the lease goes on with the rest."""
    rows = db.execute(
        select(LeaseMember, Seller.address)
        .join(Seller, Seller.id == LeaseMember.seller_id)
        .where(
            LeaseMember.lease_id == lease.id,
            LeaseMember.state == MemberState.ATTACHED.value,
        )
    ).all()
    decision = idle_members(
        sweep_status(store, job), [(m.id, address, m.driver) for m, address in rows]
    )
    return [m.seller_id for m, _ in rows if m.id in decision.member_ids]


def register_best(db, job: Job, store: ObjectStore, models_root: Path, now: float) -> dict | None:
    """The best trial's adapter, fetched from the run folder in the store, becomes the next
    version of the sweep's model."""
    spec = SweepJob.model_validate(job.spec)
    run = training_jobs.stored_run(store, job)
    text = run.read_text(contract.RESULT_FILE) if run and spec.trial.lora else None
    if text is None:
        return None
    result = json.loads(text)
    best = result.get("best") if isinstance(result.get("best"), dict) else {}
    with tempfile.TemporaryDirectory() as staging:
        return _register(db, job, spec, run, best, Path(staging), models_root, now)


def _register(db, job, spec: SweepJob, run: StoredRun, best: dict, staging: Path, models_root, now):
    adapter = run.fetch(best.get("adapter"), staging / "adapter")
    if adapter is None:
        log.warning("job %s: the sweep left no best adapter (inside its run folder)", job.id)
        return None
    version = model_registry.register(
        db,
        account_id=job.account_id,
        name=spec.model_name,
        source_dir=adapter,
        base_model=spec.trial.lora.model,
        spec_hash=spec_hash(job.spec),
        data_hash=pins.data_hash(job, spec.trial.lora.dataset),
        dataset=pins.dataset_of(job, spec.trial.lora.dataset),
        metrics={
            spec.metric: best.get("metric"),
            "trial_id": best.get("trial_id"),
            "params": best.get("params"),
        },
        checkpoint=run.prefix + str(best.get("checkpoint") or "")[:200],
        job_id=job.id,
        parent=None,
        now=now,
        models_root=models_root,
    )
    db.flush()
    return model_registry.view(version)


def leaderboard(db, job: Job, bill_micros: int | None) -> dict:
    """Trials best first, with their costs, and how the trials' costs and the lease's other
    time add up to the bill. Ranked as the driver picks the best trial: by the metric of
    its last report (the checkpoint it keeps), finished trials before lost ones."""
    spec = SweepJob.model_validate(job.spec)
    trials = list(db.scalars(select(SweepTrial).where(SweepTrial.job_id == job.id)))
    sign = 1 if spec.mode == "min" else -1

    def rank(t: SweepTrial):
        ended = t.state in ("completed", "stopped_early")
        return (not ended, t.metric is None, sign * (t.metric or 0.0), t.plan_index)

    trials.sort(key=rank)
    spent = sum(t.cost_micros for t in trials)
    out = {
        "metric": spec.metric,
        "mode": spec.mode,
        "planned": None,
        "trials": [
            {
                "trial_id": t.trial_id,
                "index": t.plan_index,
                "state": t.state,
                "params": t.params,
                "metric": t.metric,
                "best_metric": t.best_metric,
                "iterations": t.iterations,
                "gpu_seconds": t.gpu_seconds,
                "cost_micros": t.cost_micros,
                "lease_id": t.lease_id,
                "history": t.history,
                "started_at": t.started_at,
                "ended_at": t.ended_at,
            }
            for t in trials
        ],
        "trials_cost_micros": spent,
        "cost_cap_micros": spec.cost_cap_micros,
        "bill_micros": bill_micros,
        # Lease formation, imports and idle GPUs between trials: paid, but no trial's.
        "overhead_micros": None if bill_micros is None else bill_micros - spent,
    }
    return out


def summary(db, job: Job) -> dict:
    """The job view's `sweep` section: trials by state, the best so far, what they cost."""
    board = leaderboard(db, job, None)
    states: dict[str, int] = {}
    for trial in board["trials"]:
        states[trial["state"]] = states.get(trial["state"], 0) + 1
    best = board["trials"][0] if board["trials"] else None
    return {
        "trials": states,
        "best": best and {k: best[k] for k in ("trial_id", "params", "metric")},
        "trials_cost": money_text(board["trials_cost_micros"]),
    }
