"""The files a sweep writes into its run folder for the coordinator to ingest.

    trials/<trial_id>.json   one per launched (or budget-skipped) trial
    sweep.json               progress: planned/launched/finished, busy nodes, spend
    result.json              at the end: the best trial and its adapter (names relative
                             to the run folder)

The run folder is a `RunStore`: a prefix in the object store on a lease, a local folder
for a driver run by hand. Every write is one whole object (a PUT, or a rename locally): a
reader sees a whole old file or a whole new one. The record shape and the pure functions
that update it live here; `run.py` calls them from Tune's callbacks. Reading is lenient
(unknown keys are kept, missing ones defaulted) since the coordinator and older drivers
share these files.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import asdict, dataclass, field, fields

from computeswarm.jobs import contract
from computeswarm.jobs.run_store import RunStore
from computeswarm.tune.budget import trial_cost_micros

TRIALS_DIR, SWEEP_FILE, RESULT_FILE = contract.TRIALS_DIR, contract.SWEEP_FILE, contract.RESULT_FILE

RUNNING = "running"
COMPLETED = "completed"  # reached its planned number of reports
STOPPED_EARLY = "stopped_early"  # the scheduler (ASHA) stopped it
ERROR = "error"
SKIPPED_BUDGET = "skipped_budget"  # never launched: the cost cap would not allow it
STATES = (RUNNING, COMPLETED, STOPPED_EARLY, ERROR, SKIPPED_BUDGET)
TERMINAL = frozenset({COMPLETED, STOPPED_EARLY, ERROR, SKIPPED_BUDGET})
DONE = frozenset({COMPLETED, STOPPED_EARLY})  # ended normally: never trained again
LOST = "lost: the driver restarted before Tune saved this trial; its plan point was relaunched"

# What Tune adds to every result: kept out of a trial's history (its metrics are the rest).
TUNE_FIELDS = frozenset(
    {
        "done",
        "timestamp",
        "date",
        "time_this_iter_s",
        "time_total_s",
        "time_since_restore",
        "iterations_since_restore",
        "timesteps_total",
        "episodes_total",
        "timesteps_since_restore",
        "training_iteration",
        "trial_id",
        "experiment_id",
        "experiment_tag",
        "pid",
        "hostname",
        "node_ip",
        "config",
        "checkpoint_dir_name",
        "should_checkpoint",
        "__duplicate__",
    }
)


@dataclass
class TrialRecord:
    """`trials/<trial_id>.json`. `gpu_seconds` is the trial's GPU time so far (the
    `trial_seconds` it reports, else Tune's `time_total_s`); `cost_micros` is always
    `trial_cost_micros(gpu_seconds, price_micros)`."""

    trial_id: str
    index: int  # position in the plan
    params: dict
    state: str = RUNNING
    iterations: int = 0
    max_iterations: int | None = None  # reports a full trial makes (None: unknown)
    history: list[dict] = field(default_factory=list)
    metric: float | None = None  # the sweep metric's last value
    best_metric: float | None = None
    gpu_seconds: float = 0.0
    cost_micros: int = 0
    price_micros: int = 0
    checkpoint: str | None = None  # the latest checkpoint folder, relative to the run
    node_ip: str | None = None
    started_at: float | None = None
    ended_at: float | None = None
    error: str | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def done(self) -> bool:
        """Ended normally (an errored trial may still be resumed by a restored sweep)."""
        return self.state in DONE

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrialRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def observe_result(
    record: TrialRecord, result: dict, metric: str, mode: str, price_micros: int
) -> TrialRecord:
    """`record` updated with one Tune result (in place, and returned). A result replayed
    after a restore (same or lower iteration) replaces the history from that iteration on."""
    iteration = int(result.get("training_iteration") or len(record.history) + 1)
    seconds = result.get("trial_seconds")
    if not isinstance(seconds, int | float):
        seconds = result.get("time_total_s") or 0.0
    entry = {"iteration": iteration}
    if "step" in result:
        entry["step"] = result["step"]
    for key, value in result.items():
        if key not in TUNE_FIELDS and key not in entry and _json_scalar(value):
            entry[key] = value
    entry["trial_seconds"] = float(seconds)
    record.history = [h for h in record.history if h["iteration"] < iteration] + [entry]
    record.iterations = iteration
    record.gpu_seconds = max(float(seconds), 0.0)
    record.price_micros = price_micros
    record.cost_micros = trial_cost_micros(record.gpu_seconds, price_micros)
    values = [h[metric] for h in record.history if isinstance(h.get(metric), int | float)]
    if isinstance(result.get(metric), int | float):
        record.metric = float(result[metric])
    if values:
        record.best_metric = float(min(values) if mode == "min" else max(values))
    if result.get("node_ip"):
        record.node_ip = result["node_ip"]
    return record


def finish(record: TrialRecord, *, stopped: bool, error: str | None, now: float) -> TrialRecord:
    """`record` in its terminal state: error, stopped_early (the scheduler stopped it before
    its planned reports), or completed."""
    if error is not None:
        record.state, record.error = ERROR, error
    elif record.max_iterations is not None:
        record.state = COMPLETED if record.iterations >= record.max_iterations else STOPPED_EARLY
    else:
        record.state = STOPPED_EARLY if stopped else COMPLETED
    record.ended_at = now
    return record


def skipped(index: int, params: dict, now: float) -> TrialRecord:
    """The record of a planned trial the cost cap kept from launching."""
    return TrialRecord(
        trial_id=f"skipped-{index:05d}",
        index=index,
        params=params,
        state=SKIPPED_BUDGET,
        ended_at=now,
    )


def best_trial(records: list[TrialRecord], mode: str) -> TrialRecord | None:
    """The trial whose last metric is best, among those that ended normally (errored ones
    only if nothing else has a metric). Ties go to the earlier plan point."""
    scored = [r for r in records if r.metric is not None and r.state in (COMPLETED, STOPPED_EARLY)]
    scored = scored or [
        r for r in records if r.metric is not None and r.checkpoint and not is_lost(r)
    ]
    if not scored:
        return None
    sign = 1 if mode == "min" else -1
    return min(scored, key=lambda r: (sign * r.metric, r.index))


def is_lost(record: TrialRecord) -> bool:
    return record.state == ERROR and record.error == LOST


def launched_indices(records: list[TrialRecord]) -> set[int]:
    """Plan positions that have a live or finished trial (lost and skipped ones do not)."""
    return {r.index for r in records if r.state != SKIPPED_BUDGET and not is_lost(r)}


def sweep_status(
    records: list[TrialRecord],
    *,
    planned: int,
    price_micros: int,
    cap_micros: int | None,
    finished: bool,
) -> dict:
    """The content of `sweep.json`, from the trial records alone."""
    ran = [r for r in records if r.state != SKIPPED_BUDGET]
    budget_stopped = any(r.state == SKIPPED_BUDGET for r in records)
    launched = launched_indices(records)
    return {
        "state": "finished" if finished else "running",
        "planned": planned,
        "launched": len(launched),
        "finished": sum(r.terminal and not is_lost(r) for r in ran),
        "launching_done": budget_stopped or len(launched) >= planned,
        "budget_stopped": budget_stopped,
        "busy_node_ips": sorted({r.node_ip for r in ran if r.state == RUNNING and r.node_ip}),
        "spent_micros": sum(r.cost_micros for r in ran),
        "price_micros": price_micros,
        "cost_cap_micros": cap_micros,
    }


def sweep_result(records: list[TrialRecord], *, metric: str, mode: str, lora: bool) -> dict:
    """The content of `result.json`."""
    best = best_trial(records, mode)
    ran = [r for r in records if r.state != SKIPPED_BUDGET and not is_lost(r)]
    return {
        "kind": "sweep",
        "best": None
        if best is None
        else {
            "trial_id": best.trial_id,
            "index": best.index,
            "params": best.params,
            "metric": best.metric,
            "checkpoint": best.checkpoint,
            "adapter": f"{best.checkpoint}/adapter" if lora and best.checkpoint else None,
        },
        "metric": metric,
        "mode": mode,
        "trials": len(ran),
        "spent_micros": sum(r.cost_micros for r in records),
    }


def trial_name(trial_id: str) -> str:
    return f"{TRIALS_DIR}/{trial_id}.json"


def write_trial(run: RunStore, record: TrialRecord) -> None:
    write_json(run, trial_name(record.trial_id), record.to_dict())


def read_trial(run: RunStore, trial_id: str) -> TrialRecord | None:
    data = read_json(run, trial_name(trial_id))
    return None if data is None else TrialRecord.from_dict(data)


def read_trials(run: RunStore) -> list[TrialRecord]:
    """Every trial record, in plan order."""
    records = []
    for name in run.listdir(TRIALS_DIR):
        data = read_json(run, f"{TRIALS_DIR}/{name}") if name.endswith(".json") else None
        if data is not None:
            records.append(TrialRecord.from_dict(data))
    return sorted(records, key=lambda r: (r.index, r.started_at or 0.0))


def write_json(run: RunStore, name: str, data: dict) -> None:
    """One whole object: readers see the old file or the new one, never a torn one."""
    run.write_text(name, json.dumps(data, indent=2))


def read_json(run: RunStore, name: str) -> dict | None:
    """The file's JSON object, or None if it is missing or unreadable."""
    try:
        text = run.read_text(name)
        data = json.loads(text) if text is not None else None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def relative_to_run(run: RunStore, path: str | None) -> str | None:
    """A checkpoint path as Tune reports it (in the run's file system) made relative to
    the run folder, the only form the coordinator accepts; None if it lies elsewhere."""
    if not path:
        return None
    root = run.root.rstrip("/") + "/"
    path = posixpath.normpath(path) if not run.in_store else path
    return path[len(root) :] if path.startswith(root) else None


def _json_scalar(value) -> bool:
    return value is None or isinstance(value, bool | int | float | str)
