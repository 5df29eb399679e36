"""The sweep's Tune experiment from the inside: the searcher that hands out the plan under
the cost cap, and the callback that keeps the coordinator's records (`records.py`)."""

from __future__ import annotations

import copy
import functools
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ray.tune import Callback
from ray.tune.search import Searcher

from computeswarm.jobs import contract
from computeswarm.jobs.run_store import RunStore
from computeswarm.tune import records as rec
from computeswarm.tune.budget import CostBook, LaunchDecision, TrialSpend, trial_cost_micros

if TYPE_CHECKING:
    from computeswarm.tune.run import SweepPlan


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

    def __init__(self, plan: SweepPlan, run: RunStore, price_micros: int):
        super().__init__(metric=plan.metric, mode=plan.mode)
        self.configs = plan.configs
        self.max_iterations = plan.max_iterations
        self.max_concurrent = plan.max_concurrent
        self.cap_micros = plan.cap_micros
        self.run = run.describe()  # pickled into Tune's snapshots: no key, no file system
        self.price_micros = price_micros
        # The positions handed out, kept here too: a record just written may not be in
        # the next listing yet, and a position must never go out twice (seen once in CI).
        self.handed: dict[str, int] = {}

    @property
    def _run(self) -> RunStore:
        return _run_of(self.run)

    def suggest(self, trial_id: str) -> dict | str | None:
        records = rec.read_trials(self._run)
        if any(r.state == rec.SKIPPED_BUDGET for r in records):
            return Searcher.FINISHED
        launched = rec.launched_indices(records) | set(self.handed.values())
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
        rec.write_trial(self._run, record)  # launched: counted from now on
        self.handed[trial_id] = record.index
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
            rec.write_trial(self._run, rec.skipped(index, params, now))
        print(
            f"cost cap reached: spent {book.spent_micros} of {self.cap_micros} micros, "
            f"a trial is estimated at {book.estimate_micros()}; "
            f"{len(todo)} planned trials skipped",
            flush=True,
        )

    # Tune saves and restores searchers with its experiment snapshots. The state that
    # matters is in the records; the snapshot only guards against a foreign run folder.
    # (The positions handed out travel with them: those trials are in the same snapshot.)
    def get_state(self) -> dict:
        return {"planned": len(self.configs), "handed": dict(self.handed)}

    def set_state(self, state: dict) -> None:
        if state.get("planned") != len(self.configs):
            raise ValueError(
                f"the saved sweep planned {state.get('planned')} trials, this spec "
                f"{len(self.configs)}: the run folder belongs to another sweep"
            )
        self.handed = {str(k): int(v) for k, v in (state.get("handed") or {}).items()}

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps(self.get_state()))

    def restore(self, checkpoint_path: str) -> None:
        self.set_state(json.loads(Path(checkpoint_path).read_text()))


class SweepRecorder(Callback):
    """Updates `trials/<id>.json` and `sweep.json` as Tune's events arrive. The files, not
    this object, are the memory: after a restore it reads them back, keeps finished trials'
    records as they are, and marks the records of trials the restored Tune never heard of
    (launched after its last snapshot) as lost, so that their plan positions relaunch."""

    def __init__(self, plan: SweepPlan, run: RunStore, price_micros: int):
        self.run = run.describe()  # as in PlanSearcher
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
        for record in rec.read_trials(self._run):
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
            record.checkpoint = rec.relative_to_run(self._run, trial.checkpoint.path)
        self._write(record)
        self._write_status()

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        record = self._record(trial)
        record.checkpoint = rec.relative_to_run(self._run, checkpoint.path)
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
        record = self._records.get(trial.trial_id) or rec.read_trial(self._run, trial.trial_id)
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

    @property
    def _run(self) -> RunStore:
        return _run_of(self.run)

    def _write(self, record: rec.TrialRecord) -> None:
        rec.write_trial(self._run, record)

    def _write_status(self) -> None:
        status = rec.sweep_status(
            rec.read_trials(self._run),
            planned=self.planned,
            price_micros=lease_price_micros(self.price_micros),
            cap_micros=self.cap_micros,
            finished=False,
        )
        rec.write_json(self._run, rec.SWEEP_FILE, status)


def lease_price_micros(default: int = 0) -> int:
    """The lease's price per GPU-hour in micros. Read at each use: a restored sweep may run
    on a new lease at another price, and its pickled objects keep the old one."""
    raw = os.environ.get(contract.PRICE_MICROS)
    return int(raw) if raw else default


@functools.cache
def _run_of_cached(root: str, in_store: bool) -> RunStore:
    return RunStore(root, in_store)  # one file system (one S3 client) per run and process


def _run_of(described: dict) -> RunStore:
    return _run_of_cached(str(described["root"]), bool(described["in_store"]))


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
