"""The driver of a sweep job: `python -m computeswarm.tune.run computeswarm-job.json`.

The swarm submits this as the Ray job of a `sweep` spec. It expands the search space into
the plan (`space.expand`), runs it as a Ray Tune experiment in the run folder, and keeps
the coordinator informed through files there (see `records.py`): one record per trial,
`sweep.json` (progress, busy nodes, spend) and, at the end, `result.json` naming the best
trial and its adapter.

A `PlanSearcher` hands out the plan in order and stops when it is used up or when the cost
cap would not cover another trial. The experiment lives in the run folder's `experiment/`
(Tune writes its snapshots and the trials' checkpoints there through the lease's store
key, as Ray Train does: sellers are separate machines). If it is there already (a lost
seller killed the driver, the coordinator restarted and resubmitted the job), the driver
restores it: finished trials are kept, unfinished ones resume from their checkpoints, and
the plan continues where it was.

Environment: the run folder (COMPUTESWARM_RUN_PREFIX with the store's endpoint and key, or
COMPUTESWARM_RUN_DIR for a local folder; see `jobs/run_store.py`),
COMPUTESWARM_PRICE_MICROS (the lease's price per GPU-hour, integer micros),
COMPUTESWARM_NODE_IP (this node's overlay IP for ray.init); for local runs without a
cluster (no RAY_ADDRESS): COMPUTESWARM_LOCAL_GPUS (start a local Ray with that many logical
GPUs), COMPUTESWARM_LOCAL_CPUS, COMPUTESWARM_LOCAL_RAY_TMP.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from computeswarm.data.refs import is_dataset_ref
from computeswarm.jobs import contract
from computeswarm.jobs.run_store import RunStore
from computeswarm.tune import records as rec
from computeswarm.tune.experiment import PlanSearcher, SweepRecorder, lease_price_micros
from computeswarm.tune.space import apply, expand
from computeswarm.tune.trainable import reports_per_trial

EXPERIMENT = "experiment"  # Tune's experiment folder inside the run folder
MAX_FAILURES = 2  # a trial whose seller is lost restarts from its last checkpoint
DEFAULT_ASHA_MAX_T = 100  # function trials: Tune's default, unless the spec gives max_t
# Tune snapshots the experiment (trials + searcher state) at most this often: a driver
# killed between snapshots relaunches the few trials started since the last one.
SNAPSHOT_PERIOD_S = "1"


@dataclass(frozen=True)
class SweepPlan:
    """Everything the driver derives from the spec before Ray starts."""

    kind: str  # "lora" | "function"
    configs: list[dict]  # the trainable's config for each planned trial, in plan order
    metric: str
    mode: str
    scheduler: dict
    max_iterations: int | None  # reports of the longest planned trial (ASHA's max_t)
    cap_micros: int | None
    max_concurrent: int
    trial_resources: dict

    @property
    def trainable(self):
        from computeswarm.tune.trainable import run_function_trial, train_lora_trial

        return train_lora_trial if self.kind == "lora" else run_function_trial


def plan_sweep(spec: dict, workdir: Path, run: RunStore) -> SweepPlan:
    """The plan and settings of a sweep spec (a `SweepJob.model_dump(mode="json")`)."""
    trial = spec["trial"]
    params = expand(spec.get("search_space") or {}, spec.get("num_samples") or 1, spec["seed"])
    scheduler = dict(spec.get("scheduler") or {"type": "fifo"})
    base = {"run": run.describe(), "workdir": str(Path(workdir).resolve())}
    if trial.get("lora"):
        kind, configs, lengths = "lora", [], []
        from computeswarm.jobs.train.data import read_jsonl

        dataset = _dataset(workdir, trial["lora"]["dataset"])
        size = len(read_jsonl(dataset)) if _uses_epochs(trial["lora"], spec) else 0
        for index, values in enumerate(params):
            settings = apply(trial["lora"], values)
            settings["model"] = _absolute(workdir, settings["model"])
            if not is_dataset_ref(settings["dataset"]):  # (a stored version: each node's own)
                settings["dataset"] = _absolute(workdir, settings["dataset"])
            reports = _lora_reports(settings, size)
            lengths.append(reports)
            configs.append(
                base
                | {"index": index, "params": values, "max_iterations": reports, "trial": settings}
            )
        max_iterations = max(lengths)
    else:
        kind = "function"
        max_iterations = scheduler.get("max_t") or (
            DEFAULT_ASHA_MAX_T if scheduler.get("type") == "asha" else None
        )
        configs = [
            base
            | {
                "index": index,
                "params": values,
                "max_iterations": max_iterations,
                "function": trial["function"],
                "fixed": trial.get("config") or {},
            }
            for index, values in enumerate(params)
        ]
    gpus, nodes, cpus_per_node = _resources(spec.get("resources") or {})
    per_node = max(gpus // max(nodes, 1), 1)
    return SweepPlan(
        kind=kind,
        configs=configs,
        metric=spec["metric"],
        mode=spec["mode"],
        scheduler=scheduler,
        max_iterations=max_iterations,
        cap_micros=cost_cap_micros(spec),
        # Default: one trial per leased GPU. Always a limit: the cost cap decides each
        # launch with what the running trials have shown.
        max_concurrent=spec.get("max_concurrent_trials") or max(gpus, 1),
        trial_resources={"CPU": cpus_per_node / per_node, "GPU": 1},
    )


def main(argv: list[str]) -> int:
    spec = contract.read_spec(argv[1]).model_dump(mode="json")
    run = RunStore.from_env()
    # Trials stay in the job's working dir (Tune would move them into their trial folders).
    os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", SNAPSHOT_PERIOD_S)
    # Frequent snapshots are intended here (see SNAPSHOT_PERIOD_S): not worth a warning.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    plan = plan_sweep(spec, Path.cwd(), run)
    price = lease_price_micros()
    # A trial that ended after Tune's last snapshot is restored and returns at once with no
    # result of its own (see trainable._already_finished): Tune's strict check would fail
    # the sweep on it. SweepRecorder warns about trials that never report the metric.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # Tune asks a custom searcher for one trial at a time unless told otherwise.
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(plan.max_concurrent))

    from ray import tune

    connect()
    trainable = tune.with_resources(plan.trainable, plan.trial_resources)
    experiment = run.path(EXPERIMENT)
    if tune.Tuner.can_restore(experiment, storage_filesystem=run.fs):
        print(f"restoring the sweep from {experiment}", flush=True)
        tuner = tune.Tuner.restore(
            experiment,
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=True,
            storage_filesystem=run.fs,
        )
    else:
        print(f"starting a sweep of {len(plan.configs)} trials in {experiment}", flush=True)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric=plan.metric,
                mode=plan.mode,
                scheduler=make_scheduler(plan),
                search_alg=PlanSearcher(plan, run, price),
                num_samples=-1,  # until the searcher says FINISHED (lost trials relaunch)
                # No max_concurrent_trials: the searcher limits launches itself, from the
                # records (Tune's ConcurrencyLimiter state can lag them after a restore).
                # A trial's imports (torch, transformers, peft) take seconds: the next
                # trial on the same GPU reuses the process.
                reuse_actors=True,
                trial_dirname_creator=trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=EXPERIMENT,
                storage_path=run.root,
                storage_filesystem=run.fs,
                failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                callbacks=[SweepRecorder(plan, run, price)],
                verbose=1,
            ),
        )
    tuner.fit()

    trials = rec.read_trials(run)
    result = rec.sweep_result(trials, metric=plan.metric, mode=plan.mode, lora=plan.kind == "lora")
    rec.write_json(run, rec.RESULT_FILE, result)
    status = rec.sweep_status(
        trials,
        planned=len(plan.configs),
        price_micros=lease_price_micros(price),
        cap_micros=plan.cap_micros,
        finished=True,
    )
    rec.write_json(run, rec.SWEEP_FILE, status)
    print(f"sweep finished: {json.dumps(result['best'])}", flush=True)
    return 0 if result["best"] else 1


def make_scheduler(plan: SweepPlan):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if plan.scheduler.get("type", "fifo") == "fifo":
        return FIFOScheduler()
    max_t = plan.max_iterations or DEFAULT_ASHA_MAX_T
    return ASHAScheduler(
        time_attr="training_iteration",
        max_t=max_t,
        grace_period=min(plan.scheduler.get("grace_period") or 1, max_t),
        reduction_factor=plan.scheduler.get("reduction_factor") or 2,
    )


def connect() -> None:
    """Attach to the lease's Ray cluster (through this node, like jobs/train/run.py), or
    start a private local one with logical GPUs when COMPUTESWARM_LOCAL_GPUS says so."""
    import ray

    if ray.is_initialized():
        return
    local_gpus = os.environ.get("COMPUTESWARM_LOCAL_GPUS")
    if local_gpus and not os.environ.get("RAY_ADDRESS"):
        ray.init(
            address="local",  # never attach to another cluster on this machine
            num_cpus=int(os.environ.get("COMPUTESWARM_LOCAL_CPUS", "2")),
            num_gpus=int(local_gpus),
            include_dashboard=False,
            object_store_memory=150 * 2**20,
            _temp_dir=os.environ.get("COMPUTESWARM_LOCAL_RAY_TMP") or None,
        )
        return
    ray.init(_node_ip_address=os.environ.get(contract.NODE_IP))


def cost_cap_micros(spec: dict) -> int | None:
    if spec.get("cost_cap_micros") is not None:
        return int(spec["cost_cap_micros"])
    if spec.get("cost_cap") is None:
        return None
    return int(Decimal(str(spec["cost_cap"])) * 1_000_000)


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"  # short: Tune's default repeats every parameter


def _lora_reports(settings: dict, train_size: int) -> int:
    from computeswarm.jobs.train.data import split
    from computeswarm.jobs.train.lora import total_steps

    training = settings["training"]
    if training.get("epochs"):
        records = [None] * train_size
        train_size = len(split(records, training["eval_fraction"], training["seed"])[0])
    steps = total_steps(training, train_size, 1, settings["micro_batch"], 1)
    return reports_per_trial(steps, training["eval_every"])


def _uses_epochs(lora: dict, spec: dict) -> bool:
    space = spec.get("search_space") or {}
    return bool(lora["training"].get("epochs")) or "training.epochs" in space


def _resources(resources: dict) -> tuple[int, int, float]:
    gpus = resources.get("gpus") or {}
    if isinstance(gpus, str):
        from computeswarm.jobs.spec_parts import GpuRequest

        count = GpuRequest.parse(gpus).count
    else:
        count = gpus.get("count", 1)
    return count, resources.get("nodes", 1), float(resources.get("cpus_per_node", 1.0))


def _dataset(workdir: Path, value: str) -> Path:
    return contract.dataset_file(value) if is_dataset_ref(value) else Path(workdir, value)


def _absolute(workdir: Path, path: str) -> str:
    """A working-dir path made absolute for trials in other processes; anything else (an
    absolute path, a hub model id in the sellers' cache) as it is."""
    local = Path(workdir) / path
    return str(local.resolve()) if local.exists() else path


if __name__ == "__main__":
    # Import under the package name: Tune pickles the searcher and callback into the
    # experiment, and a restore must find their classes outside `__main__`.
    from computeswarm.tune.run import main as _main

    sys.exit(_main(sys.argv))
