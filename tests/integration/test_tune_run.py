"""Sweeps as Ray Tune experiments on a private local Ray (two logical GPUs on the CPUs):
the driver `python -m computeswarm.tune.run` in a subprocess, as the swarm runs it.

An ASHA sweep of LoRA trials on a tiny model stops the weak trials early, bills every
trial by its GPU seconds, names the best adapter (it loads in peft), and survives its
driver being killed mid-sweep: the rerun restores the experiment and finishes it without
re-running finished trials. A cost cap keeps the later trials of a sweep from launching.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from computeswarm.jobs.train.data import synthetic_addition
from computeswarm.jobs.train.tiny import make_tiny_model
from computeswarm.tune.budget import trial_cost_micros

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="local Ray sweeps need Linux")
PRICE = 3_600_000_000  # 1_000_000 micros per GPU-second: costs are big, visible numbers
DONE = ("completed", "stopped_early")
TRAIN_PY = """
from ray import tune


def train(config):
    for i in range(1, 4):
        # trial_seconds reported by the function: the sweep bills it (deterministic here)
        tune.report({"score": config["base"] * i + config["x"], "trial_seconds": 10.0 * i})
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sweep-job")
    make_tiny_model(folder / "tiny", "gpt2", layers=2, width=32)
    synthetic_addition(folder / "data.jsonl", n=200)
    (folder / "train.py").write_text(TRAIN_PY)
    return folder


def sweep(**overrides) -> dict:
    """A sweep spec as the driver receives it (`SweepJob.model_dump(mode="json")`)."""
    spec = {
        "kind": "sweep",
        "name": "adder-sweep",
        "runtime_env": {"working_dir": ".", "pip": [], "env_vars": {}},
        "resources": {
            "gpus": {"model": None, "min_vram_gb": 0, "count": 2},
            "nodes": 2,
            "cpus_per_node": 1.0,
            "memory_gb_per_node": 2.0,
        },
        "pricing": {"max_price_per_gpu_hour": "1.0", "budget": None},
        "trial": {
            "lora": {
                "model": "tiny",
                "dataset": "data.jsonl",
                "training": {
                    "steps": 40,
                    "learning_rate": 0.001,
                    "max_seq_len": 16,
                    "eval_fraction": 0.1,
                    "eval_every": 5,
                    "checkpoint_every": 5,
                    "seed": 0,
                    "epochs": None,
                },
                "lora": {"rank": 8, "alpha": 16, "dropout": 0.05, "target_modules": None},
                "micro_batch": 8,
            },
            "function": None,
            "config": {},
        },
        # A learning rate that learns first, then two that cannot beat it: ASHA stops them.
        "search_space": {
            "training.learning_rate": {"grid": [0.01, 1e-5, 1e-6]},
            "lora.rank": {"choice": [4, 8]},
        },
        "metric": "eval_loss",
        "mode": "min",
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "num_samples": 2,
        "max_concurrent_trials": 2,
        "cost_cap": None,
        "register_as": "adder-best",
        "seed": 0,
    }
    return spec | overrides


class Driver:
    """The sweep driver in its own session (its local Ray's processes with it)."""

    def __init__(self, workdir: Path, run_dir: Path, spec: dict, log: Path):
        self.ray_tmp = tempfile.mkdtemp(prefix="cst", dir="/tmp")  # short: socket paths
        job = log.with_suffix(".job.json")
        job.write_text(json.dumps(spec))
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env |= {
            "COMPUTESWARM_RUN_DIR": str(run_dir),
            "COMPUTESWARM_PRICE_MICROS": str(PRICE),
            "COMPUTESWARM_LOCAL_GPUS": "2",
            "COMPUTESWARM_LOCAL_CPUS": "2",
            "COMPUTESWARM_LOCAL_RAY_TMP": self.ray_tmp,
            "RAY_DEDUP_LOGS": "0",
        }
        self.log = log
        self._out = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "computeswarm.tune.run", str(job)],
            cwd=workdir,
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"the driver ran past {timeout} s:\n{self.text()[-4000:]}")

    def kill(self) -> None:
        """SIGKILL the driver's whole process group: a lost coordinator-side driver."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                self.kill()
        _reap(self.ray_tmp)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)
        self._out.close()

    def text(self) -> str:
        return self.log.read_text()


@pytest.fixture
def drivers():
    started: list[Driver] = []
    yield started
    for driver in started:
        driver.stop()


def records(run_dir: Path) -> list[dict]:
    found = [json.loads(p.read_text()) for p in (run_dir / "trials").glob("*.json")]
    return sorted(found, key=lambda r: (r["index"], r["trial_id"]))


def lost(record: dict) -> bool:
    return record["state"] == "error" and (record["error"] or "").startswith("lost")


@pytest.mark.timeout(480)
@pytest.mark.slow  # CI covers the restore through the e2e coordinator-crash sweep
def test_an_asha_lora_sweep_survives_its_driver_and_names_the_best_adapter(
    workdir, tmp_path, drivers
):
    run_dir = tmp_path / "run"
    started = time.monotonic()
    first = Driver(workdir, run_dir, sweep(), tmp_path / "first.log")
    drivers.append(first)
    # Kill it once two trials ended and another is half-way through its 8 reports.
    while True:
        seen = _safe_records(run_dir)
        halfway = [r for r in seen if r["state"] == "running" and 4 <= r["iterations"] < 8]
        if sum(r["state"] in DONE for r in seen) >= 2 and halfway:
            break
        assert first.process.poll() is None, f"ended before the kill:\n{first.text()[-4000:]}"
        assert time.monotonic() - started < 300, first.text()[-4000:]
        time.sleep(0.05)
    first.kill()
    before = {r["trial_id"]: r for r in records(run_dir) if r["state"] in DONE}
    killed_at = time.monotonic() - started

    second = Driver(workdir, run_dir, sweep(), tmp_path / "second.log")
    drivers.append(second)
    assert second.wait(300) == 0, second.text()[-4000:]
    print(f"killed after {killed_at:.0f} s; all done after {time.monotonic() - started:.0f} s")
    assert "restoring the sweep from" in second.text()
    # The half-way trial went on from its checkpoint, not from the start.
    assert "trial resumed from its checkpoint at step" in second.text()

    trials = records(run_dir)
    after = {r["trial_id"]: r for r in trials}
    for trial_id, record in before.items():  # finished before the kill: untouched
        assert after[trial_id] == record
    for record in halfway:
        assert after[record["trial_id"]]["iterations"] > record["iterations"]
    ran = [r for r in trials if not lost(r)]
    assert sorted(r["index"] for r in ran) == list(range(6)), [
        (r["index"], r["state"]) for r in trials
    ]
    assert all(r["state"] in DONE for r in ran), [r["state"] for r in ran]
    assert any(r["state"] == "stopped_early" for r in ran)
    for r in ran:
        iterations = [h["iteration"] for h in r["history"]]
        assert iterations == list(range(1, r["iterations"] + 1)), r  # none lost, none doubled
        assert [h["step"] for h in r["history"]] == [5 * i for i in iterations]
        seconds = [h["trial_seconds"] for h in r["history"]]
        assert seconds == sorted(seconds), r  # restored trials keep their earlier time
        assert r["gpu_seconds"] == seconds[-1]
        assert r["cost_micros"] == trial_cost_micros(r["gpu_seconds"], PRICE)
        assert (r["iterations"] == 8) == (r["state"] == "completed")
        # Named relative to the run (its keys in the store), never by a seller's path.
        assert r["node_ip"] and not Path(r["checkpoint"]).is_absolute()
        assert (run_dir / r["checkpoint"]).is_dir()

    result = json.loads((run_dir / "result.json").read_text())
    # Equal params give equal runs (seeded): ties go to the earlier plan position.
    best = min(ran, key=lambda r: (r["metric"], r["index"]))
    assert result["best"]["trial_id"] == best["trial_id"]
    assert result["best"]["metric"] == best["metric"]
    assert result["best"]["params"]["training.learning_rate"] == 0.01
    assert result["trials"] == 6 and result["spent_micros"] == sum(r["cost_micros"] for r in trials)
    status = json.loads((run_dir / "sweep.json").read_text())
    assert status["state"] == "finished" and status["busy_node_ips"] == []
    assert (status["planned"], status["launched"], status["finished"]) == (6, 6, 6)
    assert status["launching_done"] and not status["budget_stopped"]

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert result["best"]["adapter"] == f"{best['checkpoint']}/adapter"
    adapter = run_dir / result["best"]["adapter"]
    assert adapter.is_dir()
    tuned = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(workdir / "tiny"), adapter
    )
    assert tuned.peft_config["default"].r == best["params"]["lora.rank"]


@pytest.mark.timeout(300)
def test_a_cost_cap_keeps_later_trials_from_launching(workdir, tmp_path, drivers):
    run_dir = tmp_path / "run"
    # Each trial reports trial_seconds 10, 20, 30: it costs 30 s x 1_000_000 micros/s.
    # After two trials (60 M) a third (estimated 30 M) would pass the 75 M cap.
    spec = sweep(
        trial={"lora": None, "function": "train.py:train", "config": {"base": 1.0}},
        search_space={"x": {"uniform": [0.0, 1.0]}},
        metric="score",
        mode="max",
        scheduler={"type": "fifo"},
        num_samples=6,
        cost_cap="75",
    )
    driver = Driver(workdir, run_dir, spec, tmp_path / "driver.log")
    drivers.append(driver)
    assert driver.wait(240) == 0, driver.text()[-4000:]
    assert "cost cap reached" in driver.text()

    trials = records(run_dir)
    ran = [r for r in trials if r["state"] != "skipped_budget"]
    skipped = [r for r in trials if r["state"] == "skipped_budget"]
    assert [r["index"] for r in ran] == [0, 1] and all(r["state"] == "completed" for r in ran)
    assert [r["index"] for r in skipped] == [2, 3, 4, 5]
    assert all(r["cost_micros"] == trial_cost_micros(30.0, PRICE) for r in ran)
    spent = sum(r["cost_micros"] for r in trials)
    assert spent <= 75_000_000 + trial_cost_micros(30.0, PRICE)
    status = json.loads((run_dir / "sweep.json").read_text())
    assert status["budget_stopped"] and status["launching_done"]
    assert (status["planned"], status["launched"], status["spent_micros"]) == (6, 2, spent)
    result = json.loads((run_dir / "result.json").read_text())
    best = max(ran, key=lambda r: r["metric"])
    assert result["best"]["trial_id"] == best["trial_id"] and result["best"]["adapter"] is None
    assert best["metric"] == pytest.approx(3.0 + best["params"]["x"])


def _safe_records(run_dir: Path) -> list[dict]:
    try:
        return records(run_dir)
    except (OSError, ValueError):
        return []


def _reap(marker: str) -> None:
    """SIGKILL what is left of a local Ray we started (found by its own temp dir)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)
