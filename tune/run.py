"""The driver of a sweep job: `python -m computeswarm.tune.run computeswarm-job.json`.

The swarm submits this as the Ray job of a `sweep` spec. It expands the search space into
the plan (`space.expand`), runs it as a Ray Tune experiment in the run folder, and keeps
the coordinator informed through files there (see `records.py`): one record per trial,
`sweep.json` (progress, busy nodes, spend) and, at the end, `result.json` naming the best
trial and its adapter.

A `PlanSearcher` hands out the plan in order and stops when it is used up or when the cost
cap would not cover another trial. The experiment lives in `$COMPUTESWARM_RUN_DIR/experiment`:
if it is there already (a lost seller killed the driver, the coordinator restarted and
resubmitted the job), the driver restores it: finished trials are kept, unfinished ones
resume from their checkpoints, and the plan continues where it was.

Environment: COMPUTESWARM_RUN_DIR (required), COMPUTESWARM_PRICE_MICROS (the lease's price
per GPU-hour, integer micros), COMPUTESWARM_NODE_IP (this node's overlay IP for ray.init);
for local runs without a cluster (no RAY_ADDRESS): COMPUTESWARM_LOCAL_GPUS (start a local
Ray with that many logical GPUs), COMPUTESWARM_LOCAL_CPUS, COMPUTESWARM_LOCAL_RAY_TMP.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from ray.tune import Callback
from ray.tune.search import Searcher

from computeswarm.jobs import contract
from computeswarm.tune import records as rec
from computeswarm.tune.budget import CostBook, LaunchDecision, TrialSpend, trial_cost_micros
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


def plan_sweep(spec: dict, workdir: Path, run_dir: Path) -> SweepPlan:
    """The plan and settings of a sweep spec (a `SweepJob.model_dump(mode="json")`)."""
    trial = spec["trial"]
    params = expand(spec.get("search_space") or {}, spec.get("num_samples") or 1, spec["seed"])
    scheduler = dict(spec.get("scheduler") or {"type": "fifo"})
    base = {"run_dir": str(run_dir), "workdir": str(Path(workdir).resolve())}
    if trial.get("lora"):
        kind, configs, lengths = "lora", [], []
        from computeswarm.jobs.train.data import read_jsonl

        dataset = Path(workdir, trial["lora"]["dataset"])
        size = len(read_jsonl(dataset)) if _uses_epochs(trial["lora"], spec) else 0
        for index, values in enumerate(params):
            settings = apply(trial["lora"], values)
            settings["model"] = _absolute(workdir, settings["model"])
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
    run_dir = contract.run_dir().resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    # Trials stay in the job's working dir (Tune would move them into their trial folders).
    os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", SNAPSHOT_PERIOD_S)
    # Frequent snapshots are intended here (see SNAPSHOT_PERIOD_S): not worth a warning.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    plan = plan_sweep(spec, Path.cwd(), run_dir)
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
    experiment = run_dir / EXPERIMENT
    if tune.Tuner.can_restore(str(experiment)):
        print(f"restoring the sweep from {experiment}", flush=True)
        tuner = tune.Tuner.restore(
            str(experiment), trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    else:
        print(f"starting a sweep of {len(plan.configs)} trials in {experiment}", flush=True)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric=plan.metric,
                mode=plan.mode,
                scheduler=make_scheduler(plan),
                search_alg=PlanSearcher(plan, run_dir, price),
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
                storage_path=str(run_dir),
                failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                callbacks=[SweepRecorder(plan, run_dir, price)],
                verbose=1,
            ),
        )
    tuner.fit()

    trials = rec.read_trials(run_dir)
    result = rec.sweep_result(trials, metric=plan.metric, mode=plan.mode, lora=plan.kind == "lora")
    rec.write_json(run_dir / rec.RESULT_FILE, result)
    status = rec.sweep_status(
        trials,
        planned=len(plan.configs),
        price_micros=lease_price_micros(price),
        cap_micros=plan.cap_micros,
        finished=True,
    )
    rec.write_json(run_dir / rec.SWEEP_FILE, status)
    print(f"sweep finished: {json.dumps(result['best'])}", flush=True)
    return 0 if result["best"] else 1


class PlanSearcher(Searcher):
    """Hands out the plan's trial configs in order, at most `max_concurrent` at a time;
    FINISHED when the plan is used up or when the cost cap would not cover the next trial
    with nothing left running (the rest of the plan is then recorded as skipped).

    The trial records are its memory, not Tune's snapshots of it: it writes a trial's
    record when it hands the trial out, and a plan position counts as launched while it has
    a record that is not lost. A restored sweep therefore continues the plan exactly, even
    when Tune's last snapshot is older than the records (the driver died between
    snapshots, or a snapshot upload failed): it never relaunches a trial that Tune restored
    or that finished, and relaunches the positions whose trials Tune never saved.
    """

    def __init__(self, plan: SweepPlan, run_dir: Path, price_micros: int):
        super().__init__(metric=plan.metric, mode=plan.mode)
        self.configs = plan.configs
        self.max_iterations = plan.max_iterations
        self.max_concurrent = plan.max_concurrent
        self.cap_micros = plan.cap_micros
        self.run_dir = str(run_dir)
        self.price_micros = price_micros

    def suggest(self, trial_id: str) -> dict | str | None:
        records = rec.read_trials(Path(self.run_dir))
        if any(r.state == rec.SKIPPED_BUDGET for r in records):
            return Searcher.FINISHED
        launched = rec.launched_indices(records)
        todo = [i for i in range(len(self.configs)) if i not in launched]
        if not todo:
            return Searcher.FINISHED
        if sum(r.state == rec.RUNNING for r in records) >= self.max_concurrent:
            return None
        book = self.book(records)
        decision = book.decide()
        if decision is LaunchDecision.WAIT:
            return None
        if decision is LaunchDecision.STOP:
            self._stop_for_budget(book, todo)
            return Searcher.FINISHED
        config = copy.deepcopy(self.configs[todo[0]])
        record = rec.TrialRecord(
            trial_id=trial_id,
            index=config["index"],
            params=config["params"],
            max_iterations=config["max_iterations"],
            price_micros=book.price_micros,
        )
        rec.write_trial(Path(self.run_dir), record)  # launched: counted from now on
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        pass  # the records say which trials ended (SweepRecorder writes them)

    def book(self, records: list[rec.TrialRecord]) -> CostBook:
        """The cost book from the trial records: running trials at the lease's price now."""
        price = lease_price_micros(self.price_micros)
        spends = tuple(
            TrialSpend(
                cost_micros=(
                    trial_cost_micros(r.gpu_seconds, price)
                    if r.state == rec.RUNNING
                    else r.cost_micros
                ),
                gpu_seconds=r.gpu_seconds,
                iterations=r.iterations,
                finished=r.state != rec.RUNNING,
                full=r.state == rec.COMPLETED,
            )
            for r in records
            if r.state != rec.SKIPPED_BUDGET
        )
        return CostBook(self.cap_micros, price, self.max_iterations, spends)

    def _stop_for_budget(self, book: CostBook, todo: list[int]) -> None:
        now = time.time()
        for index in todo:
            params = self.configs[index]["params"]
            rec.write_trial(Path(self.run_dir), rec.skipped(index, params, now))
        print(
            f"cost cap reached: spent {book.spent_micros} of {self.cap_micros} micros, "
            f"a trial is estimated at {book.estimate_micros()}; "
            f"{len(todo)} planned trials skipped",
            flush=True,
        )

    # Tune saves and restores searchers with its experiment snapshots. The state that
    # matters is in the records; the snapshot only guards against a foreign run folder.
    def get_state(self) -> dict:
        return {"planned": len(self.configs)}

    def set_state(self, state: dict) -> None:
        if state.get("planned") != len(self.configs):
            raise ValueError(
                f"the saved sweep planned {state.get('planned')} trials, this spec "
                f"{len(self.configs)}: the run folder belongs to another sweep"
            )

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps(self.get_state()))

    def restore(self, checkpoint_path: str) -> None:
        self.set_state(json.loads(Path(checkpoint_path).read_text()))


class SweepRecorder(Callback):
    """Updates `trials/<id>.json` and `sweep.json` as Tune's events arrive. The files, not
    this object, are the memory: after a restore it reads them back, keeps finished trials'
    records as they are, and marks the records of trials the restored Tune never heard of
    (launched after its last snapshot) as lost, so that their plan positions relaunch."""

    def __init__(self, plan: SweepPlan, run_dir: Path, price_micros: int):
        self.run_dir = Path(run_dir)
        self.metric, self.mode = plan.metric, plan.mode
        self.planned = len(plan.configs)
        self.cap_micros = plan.cap_micros
        self.price_micros = price_micros
        self._reset()

    def _reset(self) -> None:
        self._records: dict[str, rec.TrialRecord] = {}
        self._reconciled = False
        self._reported: set[str] = set()  # trials with a result in this driver's life
        self._stopped: set[str] = set()  # trials the scheduler stopped (a result had done)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in ("_records", "_reconciled", "_reported", "_stopped"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    def on_step_begin(self, iteration, trials, **info):
        # Runs before Tune asks the searcher for trials: lost positions relaunch at once.
        if self._reconciled:
            return
        self._reconciled = True
        known = {t.trial_id for t in trials}
        for record in rec.read_trials(self.run_dir):
            if record.state == rec.RUNNING and record.trial_id not in known:
                rec.finish(record, stopped=False, error=rec.LOST, now=time.time())
                self._write(record)
        self._write_status()

    def on_trial_start(self, iteration, trials, trial, **info):
        record = self._record(trial)
        if record.done:  # restored after it ended: it returns at once (see trainable.py)
            return
        record.state, record.error, record.ended_at = rec.RUNNING, None, None
        record.started_at = record.started_at or time.time()
        record.node_ip = _actor_ip(trial) or record.node_ip
        self._write(record)
        self._write_status()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        record = self._record(trial)
        if self.metric not in result and trial.trial_id not in self._reported:
            print(
                f"warning: trial {trial.trial_id} reported no {self.metric!r} (it reported "
                f"{sorted(k for k in result if k not in rec.TUNE_FIELDS)}): check the "
                "sweep's `metric`",
                flush=True,
            )
        self._reported.add(trial.trial_id)
        price = lease_price_micros(self.price_micros)
        rec.observe_result(record, result, self.metric, self.mode, price)
        if result.get("done"):
            self._stopped.add(trial.trial_id)
        if trial.checkpoint is not None:
            record.checkpoint = trial.checkpoint.path
        self._write(record)
        self._write_status()

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        record = self._record(trial)
        record.checkpoint = checkpoint.path
        self._write(record)

    def on_trial_complete(self, iteration, trials, trial, **info):
        record = self._record(trial)
        if record.done and trial.trial_id not in self._reported:
            return  # finished before the restore; this run only closed its Tune state
        rec.finish(record, stopped=trial.trial_id in self._stopped, error=None, now=time.time())
        self._write(record)
        self._write_status()

    def on_trial_error(self, iteration, trials, trial, **info):
        record = self._record(trial)
        rec.finish(record, stopped=False, error=_error_text(trial), now=time.time())
        self._write(record)
        self._write_status()

    def _record(self, trial) -> rec.TrialRecord:
        record = self._records.get(trial.trial_id) or rec.read_trial(self.run_dir, trial.trial_id)
        if record is None:  # the searcher writes one first; this is a fallback
            config = trial.config
            record = rec.TrialRecord(
                trial_id=trial.trial_id,
                index=config["index"],
                params=config["params"],
                max_iterations=config.get("max_iterations"),
            )
        self._records[trial.trial_id] = record
        return record

    def _write(self, record: rec.TrialRecord) -> None:
        rec.write_trial(self.run_dir, record)

    def _write_status(self) -> None:
        status = rec.sweep_status(
            rec.read_trials(self.run_dir),
            planned=self.planned,
            price_micros=lease_price_micros(self.price_micros),
            cap_micros=self.cap_micros,
            finished=False,
        )
        rec.write_json(self.run_dir / rec.SWEEP_FILE, status)


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


def lease_price_micros(default: int = 0) -> int:
    """The lease's price per GPU-hour in micros. Read at each use: a restored sweep may run
    on a new lease at another price, and its pickled objects keep the old one."""
    raw = os.environ.get(contract.PRICE_MICROS)
    return int(raw) if raw else default


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
        from computeswarm.jobs.spec import GpuRequest

        count = GpuRequest.parse(gpus).count
    else:
        count = gpus.get("count", 1)
    return count, resources.get("nodes", 1), float(resources.get("cpus_per_node", 1.0))


def _absolute(workdir: Path, path: str) -> str:
    """A working-dir path made absolute for trials in other processes; anything else (an
    absolute path, a hub model id in the sellers' cache) as it is."""
    local = Path(workdir) / path
    return str(local.resolve()) if local.exists() else path


def _actor_ip(trial) -> str | None:
    """The node the trial's actor runs on, asked as soon as it starts (before its first
    report), so `busy_node_ips` never misses a node that is loading a model."""
    try:
        return trial.get_ray_actor_ip()
    except Exception:  # the actor died already: its results will say where it ran
        return None


def _error_text(trial) -> str:
    try:
        text = Path(trial.error_file).read_text() if trial.error_file else ""
    except OSError:
        text = ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "the trial failed")[-2000:]


if __name__ == "__main__":
    # Import under the package name: Tune pickles the searcher and callback into the
    # experiment, and a restore must find their classes outside `__main__`.
    from computeswarm.tune.run import main as _main

    sys.exit(_main(sys.argv))
