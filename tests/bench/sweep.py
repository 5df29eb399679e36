"""Benchmark: a LoRA sweep's wall time and per-trial overhead, ComputeSwarm vs plain Ray Tune.

Brings up a local swarm (`computeswarm.cluster.local.swarm.up`: a coordinator and 2 simulated
sellers with one RTX4090 each, on testbed namespaces joined by real WireGuard when root,
loopback otherwise). The workload is the e2e test's sweep (`tests/e2e/test_sweep_and_serve.py
::sweep_spec`): `--trials` (8) LoRA trials of a tiny GPT-2 (`make_tiny_model`, 2 layers,
width 32) on 300 synthetic additions, 200 steps, evaluating every 20 (10 reports), sequences
of 16 tokens, micro-batch 8, learning rate and rank drawn with a fixed seed, ASHA (grace
period 1, reduction factor 2), 2 trials at a time, on a 2-seller x 1 GPU lease. Each round
(`--rounds`, 3) runs it twice, the order alternating by round, each on a fresh lease of the
same two sellers, from the same uploaded working dir:

    ComputeSwarm   a `sweep` job: the swarm's Tune driver (`computeswarm.tune.run`) with its
                   PlanSearcher, SweepRecorder (trial records, sweep.json), cost book,
                   1 s experiment snapshots, shrink and best-adapter registration
    plain Tune     a `script` job with the same resources whose entrypoint (`plain_tune.py`,
                   written below) attaches to the lease's Ray like the sweep driver does,
                   builds the SAME trial configs with `plan_sweep` and runs them as a plain
                   `tune.Tuner` grid: `tune.with_resources(<calls train_lora_trial>, the
                   plan's trial resources)`, the same ASHA (`make_scheduler`),
                   `max_concurrent_trials=2`, `reuse_actors=True`, `RunConfig(storage_path=
                   <a fresh folder>)`, Tune's defaults for the rest (snapshots, checkpoints
                   kept), and no searcher, records, or cost book

Per job, with the same definitions on both sides:

(a) end-to-end: submit (`POST /v1/jobs`) -> the job first seen `succeeded`, polled every
    0.5 s by this process (lease formation, driver, trials, teardown of the driver).
(b) experiment wall: the first trial's start -> the last trial's end. ComputeSwarm: the
    `started_at` / `ended_at` of the leaderboard's trials (`GET /v1/sweeps/<job>`, which
    the coordinator ingests from the trial records in the sweep's run folder in the object
    store), stamped by SweepRecorder in Tune's
    `on_trial_start` / `on_trial_complete`. Plain Tune: a timing-only callback that stamps
    `time.time()` in the same two hooks (and `on_trial_error`) and does nothing else.
(c) per-trial overhead = (experiment wall x 2 concurrent - the sum of the trials'
    `trial_seconds`) / trials: the time a trial slot was not inside a trial's own clock
    (`trial_seconds`, counted by `train_lora_trial` from its first line, imports and model
    load included: the GPU-seconds the swarm bills a trial by). ComputeSwarm's sum is the
    records' `gpu_seconds` (the leaderboard's); plain Tune's the last reported
    `trial_seconds` of each trial (`ResultGrid`).

Also shown: lease formation (the job view's `created_at` -> `started_at`, when the coordinator
submitted the Ray job to the lease head), the driver's time (`started_at` -> `ended_at`),
plain Tune's own `tuner.fit()` wall time, and per round how many trials ran, completed all
10 reports, were stopped early by ASHA (fewer reports than planned) or failed, and how many
results they reported in all (the work done: a side whose ASHA let more reports through has
more trial seconds). Ratios are ComputeSwarm / plain Tune within a round, then the median
over rounds. Before each job the benchmark waits until both sellers are online again and no
process of an earlier lease is left, so no job measures the teardown of the one before. A
job whose lease never formed (on a loaded box a worker node can time out starting) is
submitted again once; the counts say so, and the figures are the attempt that ran.

This machine has no GPU: trials train on CPU, and every process of the swarm shares this
machine's cores, so read the ratios as this box's. ASHA stops trials asynchronously: the two
sides may stop different trials (the counts are printed per round).

Any job still running is cancelled and the swarm removed (`local_swarm.down()`) whatever
happens, then the run checks that no namespace or process of it is left. State lives in
temporary directories (`COMPUTESWARM_HOME`, `COMPUTESWARM_LOCAL_DIR`), removed unless the
run fails. `make bench` runs it; CI does not:

    .venv/bin/python -m computeswarm.tests.bench.sweep [--trials N] [--rounds R]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from computeswarm.tests.bench.leftovers import processes_with, swarm_leftovers

SELLERS = 2
GPUS = "RTX4090:24GB:1"
CONCURRENT = 2
SIDES = ("swarm", "plain")
LABELS = {"swarm": "ComputeSwarm", "plain": "plain Tune"}
FINAL_JOB = ("succeeded", "failed", "cancelled")
SPEC_FILE = "sweep-spec.json"  # the sweep spec, for the plain driver to plan from
PLAIN_SCRIPT = "plain_tune.py"
MARKER = "PLAIN_TUNE_RESULT "
RAY_TMP = Path("/tmp/cs-ray")  # where lease heads and worker nodes keep their Ray files
POLL_S = 0.5
RESUBMITS = 1  # a job whose lease never formed is submitted again this many times

# The plain Ray Tune driver, run as a `script` job: argv = spec file, run folder.
PLAIN = r'''
"""Plain Ray Tune on the lease: the sweep's plan as a grid, nothing of the swarm's driver."""
import json
import os
import sys
import time
from pathlib import Path

import ray
from ray import tune

from computeswarm.jobs.run_store import RunStore
from computeswarm.jobs.spec import parse_job_spec
from computeswarm.tune.run import make_scheduler, plan_sweep

MARKER = "PLAIN_TUNE" + "_RESULT "  # assembled: an echoed command line never matches


def trial(config):
    from computeswarm.tune.trainable import train_lora_trial

    train_lora_trial(config["cfg"])


class TrialClock(tune.Callback):
    """Stamps each trial's start and end in the hooks SweepRecorder stamps its records in."""

    def __init__(self):
        self.started, self.ended = {}, {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started.setdefault(trial.trial_id, time.time())

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.ended[trial.trial_id] = time.time()

    def on_trial_error(self, iteration, trials, trial, **info):
        self.ended[trial.trial_id] = time.time()


spec = parse_job_spec(json.loads(Path(sys.argv[1]).read_text())).model_dump(mode="json")
run_dir = Path(sys.argv[2]).resolve()
run_dir.mkdir(parents=True, exist_ok=True)
plan = plan_sweep(spec, Path.cwd(), RunStore(str(run_dir), False))
ray.init(_node_ip_address=os.environ.get("COMPUTESWARM_NODE_IP"))
clock = TrialClock()
tuner = tune.Tuner(
    tune.with_resources(trial, plan.trial_resources),
    param_space={"cfg": tune.grid_search(plan.configs)},
    tune_config=tune.TuneConfig(
        metric=plan.metric,
        mode=plan.mode,
        scheduler=make_scheduler(plan),
        max_concurrent_trials=plan.max_concurrent,
        reuse_actors=True,
    ),
    run_config=tune.RunConfig(storage_path=str(run_dir / "tune"), callbacks=[clock]),
)
began = time.time()
grid = tuner.fit()
fit_s = time.time() - began
trials = []
for result in grid:
    metrics = result.metrics or {}
    cfg = (result.config or {}).get("cfg") or {}
    trial_id = metrics.get("trial_id")
    trials.append(
        {
            "trial_id": trial_id,
            "index": cfg.get("index"),
            "iterations": metrics.get("training_iteration") or 0,
            "max_iterations": cfg.get("max_iterations"),
            "trial_seconds": float(metrics.get("trial_seconds") or 0.0),
            "error": None if result.error is None else repr(result.error)[-500:],
        }
    )
out = {
    "fit_s": fit_s,
    "planned": len(plan.configs),
    "started": clock.started,
    "ended": clock.ended,
    "trials": trials,
}
print(MARKER + json.dumps(out), flush=True)
'''


@dataclass
class Side:
    """One sweep's figures (one side, one round)."""

    end_to_end_s: float  # submit -> job seen succeeded
    lease_s: float  # job created_at -> started_at (the Ray job submitted to the lease)
    driver_s: float  # job started_at -> ended_at
    experiment_s: float  # first trial start -> last trial end
    trial_seconds: float  # sum of the trials' own clocks (the swarm's gpu_seconds)
    trials: int  # trials that ran
    completed: int  # ran all their planned reports
    stopped_early: int  # stopped by ASHA before their planned reports
    errors: int
    reports: int  # results reported by all trials (10 per full trial)
    resubmits: int  # attempts whose lease never formed (see _run_job)
    fit_s: float | None = None  # plain Tune: its driver's tuner.fit() wall time

    @property
    def overhead_s(self) -> float:
        """Per trial: slot time (wall x concurrency) not inside a trial's own clock."""
        return (self.experiment_s * CONCURRENT - self.trial_seconds) / self.trials

    def counts(self) -> str:
        again = f", resubmitted {self.resubmits}x (lease never formed)" if self.resubmits else ""
        return (
            f"{self.trials} trials: {self.completed} completed, "
            f"{self.stopped_early} stopped early, {self.errors} failed, "
            f"{self.reports} reports{again}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8, help="LoRA trials per sweep")
    parser.add_argument("--rounds", type=int, default=3, help="sweeps per side")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per job")
    args = parser.parse_args()
    if not 1 <= args.trials <= 64 or args.rounds < 1:
        parser.error("--trials must be between 1 and 64, --rounds at least 1")

    home = Path(tempfile.mkdtemp(prefix="cs-bench-home-"))
    local = Path(tempfile.mkdtemp(prefix="cs-bench-local-"))
    os.environ["COMPUTESWARM_HOME"] = str(home)
    os.environ["COMPUTESWARM_LOCAL_DIR"] = str(local / "swarm")
    from computeswarm.cluster.local import swarm as local_swarm

    began = time.monotonic()
    swarm = None
    leases: list[str] = []
    rounds: list[dict[str, Side]] = []
    orders: list[tuple[str, ...]] = []
    setup_s = 0.0
    ok = False
    try:
        swarm = local_swarm.up(sellers=SELLERS, gpus=GPUS, price="0.40", deposit="50", say=_say)
        setup_s = time.monotonic() - began
        _bench(swarm, local, args, leases, rounds, orders)
        ok = True
    finally:
        if swarm is not None or local_swarm.LocalSwarm.load() is not None:
            local_swarm.down(say=_say)
        run_id = swarm.run_id if swarm else None
        leftovers = swarm_leftovers(str(local), run_id, leases)
        if ok and not leftovers:
            shutil.rmtree(home, ignore_errors=True)
            shutil.rmtree(local, ignore_errors=True)
            for lease in leases:
                for path in RAY_TMP.glob(f"{lease}*"):
                    shutil.rmtree(path, ignore_errors=True)
        else:
            for leftover in leftovers:
                _say(f"LEFTOVER after down(): {leftover}")
            _say(f"kept the swarm's files for a look: {local}")
    _report(swarm, args, rounds, orders, setup_s, time.monotonic() - began)
    if leftovers:
        print("LEFTOVERS after down():\n  " + "\n  ".join(leftovers))
        sys.exit(1)
    print("leftovers after down(): none (no namespace, no process of this run)")


def _bench(
    swarm,
    local: Path,
    args: argparse.Namespace,
    leases: list[str],
    rounds: list[dict[str, Side]],
    orders: list[tuple[str, ...]],
) -> None:
    """The rounds: both sides in alternating order, each sweep on a fresh lease."""
    from computeswarm.cluster.client import CoordinatorClient
    from computeswarm.jobs.upload import pack_working_dir

    folder = local / "job"
    sweep = _sweep_spec(args.trials)
    _make_working_dir(folder, sweep)
    blob = pack_working_dir(folder, 2**22)  # the same upload for both sides
    buyer = CoordinatorClient(swarm.coordinator, swarm.buyer_key, timeout=60)
    admin = CoordinatorClient(swarm.coordinator, swarm.admin_key, timeout=60)
    for i in range(args.rounds):
        order = SIDES if i % 2 == 0 else SIDES[::-1]
        this: dict[str, Side] = {}
        for side in order:
            _wait_idle(admin, leases, timeout=300)
            if side == "swarm":
                this[side] = _run_swarm(swarm, buyer, admin, sweep, blob, leases, args.timeout)
            else:
                run_dir = local / "plain" / f"round{i + 1}"
                this[side] = _run_plain(buyer, admin, sweep, blob, run_dir, leases, args.timeout)
            got = this[side]
            _say(
                f"round {i + 1}/{args.rounds} {LABELS[side]}: end-to-end "
                f"{got.end_to_end_s:.1f} s, experiment {got.experiment_s:.1f} s, "
                f"per-trial overhead {got.overhead_s:.1f} s; {got.counts()}"
            )
        rounds.append(this)
        orders.append(order)


def _sweep_spec(trials: int) -> dict:
    """The e2e test's sweep, with `trials` samples and room for a slow box."""
    from computeswarm.tests.e2e.test_sweep_and_serve import sweep_spec

    return sweep_spec(trials) | {
        "name": "bench-sweep",
        "resources": {
            "gpus": f"RTX4090:24GB:{SELLERS}",
            "nodes": SELLERS,
            "memory_gb_per_node": 1.5,
        },
        "max_duration": "30m",
        "max_concurrent_trials": CONCURRENT,
    }


def _make_working_dir(folder: Path, sweep: dict) -> None:
    """The tiny model and data both sides train on, the spec and the plain driver."""
    from computeswarm.jobs.train.data import synthetic_addition
    from computeswarm.jobs.train.tiny import make_tiny_model

    make_tiny_model(folder / "model", "gpt2", layers=2, width=32)
    synthetic_addition(folder / "data.jsonl", n=300)
    (folder / SPEC_FILE).write_text(json.dumps(sweep))
    (folder / PLAIN_SCRIPT).write_text(PLAIN.lstrip())


def _run_swarm(swarm, buyer, admin, sweep: dict, blob: bytes, leases, timeout: float) -> Side:
    """The `sweep` job; its trials as the leaderboard shows them (the coordinator ingests
    them from the sweep's run folder in the object store)."""
    from computeswarm.tune import records as rec

    job, end_to_end, resubmits = _run_job(buyer, admin, sweep, blob, leases, timeout)
    board = buyer.sweep(job["id"])
    ran = [t for t in board["trials"] if t["state"] != rec.SKIPPED_BUDGET]
    if not ran or any(t["started_at"] is None or t["ended_at"] is None for t in ran):
        raise RuntimeError(f"the leaderboard has unfinished trials: {board['trials']}")
    return Side(
        end_to_end_s=end_to_end,
        lease_s=job["started_at"] - job["created_at"],
        driver_s=job["ended_at"] - job["started_at"],
        experiment_s=max(t["ended_at"] for t in ran) - min(t["started_at"] for t in ran),
        trial_seconds=sum(t["gpu_seconds"] for t in ran),
        trials=len(ran),
        completed=sum(t["state"] == rec.COMPLETED for t in ran),
        stopped_early=sum(t["state"] == rec.STOPPED_EARLY for t in ran),
        errors=sum(t["state"] == rec.ERROR for t in ran),
        reports=sum(t["iterations"] for t in ran),
        resubmits=resubmits,
    )


def _run_plain(
    buyer, admin, sweep: dict, blob: bytes, run_dir: Path, leases, timeout: float
) -> Side:
    """The `script` job running plain Tune; its figures from the JSON line it prints."""
    spec = {
        "kind": "script",
        "name": "bench-sweep-plain",
        "entrypoint": f"python {PLAIN_SCRIPT} {SPEC_FILE} {run_dir}",
        "runtime_env": {"working_dir": "."},
        **{k: sweep[k] for k in ("resources", "pricing", "max_duration")},
    }
    job, end_to_end, resubmits = _run_job(buyer, admin, spec, blob, leases, timeout)
    out = _plain_result(buyer, job["id"])
    trials = out["trials"]
    if not trials or len(trials) != out["planned"]:
        raise RuntimeError(f"plain Tune ran {len(trials)} of {out['planned']} trials: {out}")
    reports = [(t["iterations"], t["max_iterations"]) for t in trials if t["error"] is None]
    return Side(
        end_to_end_s=end_to_end,
        lease_s=job["started_at"] - job["created_at"],
        driver_s=job["ended_at"] - job["started_at"],
        experiment_s=max(out["ended"].values()) - min(out["started"].values()),
        trial_seconds=sum(t["trial_seconds"] for t in trials),
        trials=len(trials),
        completed=sum(done >= planned for done, planned in reports),
        stopped_early=sum(done < planned for done, planned in reports),
        errors=sum(t["error"] is not None for t in trials),
        reports=sum(t["iterations"] for t in trials),
        resubmits=resubmits,
        fit_s=out["fit_s"],
    )


def _run_job(buyer, admin, spec: dict, blob: bytes, leases: list[str], timeout: float):
    """Submit and wait until the job ends: (its view once settled, submit -> seen succeeded
    in seconds, resubmits). A job whose lease never formed (it never started: on a loaded
    box a worker node can time out starting) is submitted again once the swarm is idle, up
    to RESUBMITS times; the figures are the attempt that ran."""
    for attempt in range(RESUBMITS + 1):
        job, end_to_end = _run_once(buyer, spec, blob, leases, timeout)
        if job["state"] == "succeeded":
            # Settled: the coordinator has read a sweep's last records into its leaderboard.
            return _wait_settled(buyer, job["id"], timeout=120), end_to_end, attempt
        if job["started_at"] is None and attempt < RESUBMITS:
            _say(f"job {job['id']} never started ({job['reason']}): submitting it again")
            _wait_idle(admin, leases, timeout=300)
            continue
        logs = buyer.job_logs(job["id"])["text"][-3000:]
        raise RuntimeError(f"job {job['id']} ended {job['state']}: {job['reason']}\n{logs}")
    raise AssertionError("unreachable")


def _run_once(buyer, spec: dict, blob: bytes, leases: list[str], timeout: float):
    """Submit, wait until the job ends: (its view, submit -> seen ended in seconds). A job
    that does not end in time (or an error while waiting) is cancelled."""
    start = time.monotonic()
    job_id = buyer.submit_job(spec, blob)["id"]
    ended = False
    try:
        while True:
            job = buyer.job(job_id)
            if job["lease"] and job["lease"]["id"] not in leases:
                leases.append(job["lease"]["id"])
            if job["state"] in FINAL_JOB:
                ended = True
                return job, time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"job {job_id} did not end in {timeout:g} s: {job['state']}")
            time.sleep(POLL_S)
    finally:
        if not ended:
            _cancel(buyer, job_id, timeout=120)


def _wait_settled(buyer, job_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = buyer.job(job_id)
        if job["lease"] is None or job["lease"]["state"] in ("closed", "failed"):
            return job
        if time.monotonic() > deadline:
            raise RuntimeError(f"the lease of job {job_id} was not settled in {timeout:g} s")
        time.sleep(POLL_S)


def _plain_result(buyer, job_id: str, timeout: float = 60) -> dict:
    """The plain driver's JSON line, once the job's log is complete."""
    deadline = time.monotonic() + timeout
    while True:
        logs = buyer.job_logs(job_id)
        lines = [line for line in logs["text"].splitlines() if line.startswith(MARKER)]
        if lines:
            return json.loads(lines[-1][len(MARKER) :])
        if logs["done"] or time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} printed no result:\n{logs['text'][-3000:]}")
        time.sleep(POLL_S)


def _cancel(buyer, job_id: str, timeout: float) -> None:
    """Cancel the job and wait until its lease is settled (down() removes the rest)."""
    from computeswarm.cluster.errors import Conflict

    with contextlib.suppress(Conflict):  # already over
        buyer.cancel_job(job_id)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = buyer.job(job_id)
        if job["lease"] is None or job["lease"]["state"] in ("closed", "failed"):
            return
        time.sleep(0.5)
    _say(f"the lease of job {job_id} was not settled in {timeout:g} s; down() removes it")


def _wait_idle(admin, leases: list[str], timeout: float) -> None:
    """Until every seller is online and no process of an earlier lease is left."""
    start = time.monotonic()
    while time.monotonic() < start + timeout:
        online = [s for s in admin.sellers() if s["state"] == "online" and s["offer"]]
        if len(online) >= SELLERS and not processes_with(leases):
            return
        time.sleep(0.5)
    raise RuntimeError(
        f"the swarm did not become idle: sellers {[s['state'] for s in admin.sellers()]}, "
        f"processes of earlier leases {processes_with(leases)}"
    )


def _report(
    swarm,
    args: argparse.Namespace,
    rounds: list[dict[str, Side]],
    orders: list[tuple[str, ...]],
    setup_s: float,
    total_s: float,
) -> None:
    mode = swarm.mode if swarm else "?"
    if not rounds:
        print(f"no round finished; swarm up {setup_s:.1f} s, whole run {total_s:.1f} s")
        return
    cs = [r["swarm"] for r in rounds]
    plain = [r["plain"] for r in rounds]
    print(
        f"\nsweep: ComputeSwarm vs plain Ray Tune on the same kind of lease: {SELLERS} sellers "
        f"x {GPUS} (simulated, CPU), "
        f"{'real WireGuard' if mode == 'wireguard' else 'loopback, no WireGuard'}; "
        f"{args.trials} LoRA trials (tiny GPT-2, 200 steps, 10 reports), ASHA grace 1 rf 2, "
        f"{CONCURRENT} concurrent; medians of {len(rounds)} rounds, ratios taken per round"
    )
    pairs = list(zip(cs, plain, strict=True))
    _line(
        "end-to-end (submit -> succeeded), CS / plain",
        [a.end_to_end_s / b.end_to_end_s for a, b in pairs],
        "x",
    )
    _line("experiment wall, CS / plain", [a.experiment_s / b.experiment_s for a, b in pairs], "x")
    _line("per-trial overhead, CS - plain", [a.overhead_s - b.overhead_s for a, b in pairs], "s")
    print()
    for side, runs in (("swarm", cs), ("plain", plain)):
        name = LABELS[side]
        _line(f"{name}: end-to-end", [r.end_to_end_s for r in runs], "s")
        _line(f"{name}: lease formation (submit -> running)", [r.lease_s for r in runs], "s")
        _line(f"{name}: driver (running -> ended)", [r.driver_s for r in runs], "s")
        if side == "plain":
            _line(f"{name}: tuner.fit() wall", [r.fit_s for r in runs], "s")
        _line(f"{name}: experiment wall", [r.experiment_s for r in runs], "s")
        _line(f"{name}: sum of trial_seconds", [r.trial_seconds for r in runs], "s")
        _line(f"{name}: per-trial overhead", [r.overhead_s for r in runs], "s")
    print()
    for i, (r, order) in enumerate(zip(rounds, orders, strict=True)):
        first = LABELS[order[0]]
        print(
            f"  round {i + 1} ({first} first): ComputeSwarm {r['swarm'].counts()} | "
            f"plain Tune {r['plain'].counts()}"
        )
    print(f"  swarm up: {setup_s:.1f} s; whole benchmark incl. teardown: {total_s:.1f} s")


def _line(label: str, values: list[float], unit: str) -> None:
    each = " ".join(f"{v:.3f}" if unit == "x" else f"{v:.1f}" for v in values)
    median = statistics.median(values)
    shown = f"{median:.3f}" if unit == "x" else f"{median:.1f}"
    print(f"  {label:<50} {shown:>8} {unit:<2} (rounds: {each})")


def _say(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
