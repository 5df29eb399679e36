"""Pipeline-parallel training on two local ranks computes the losses one process would, and
learns: GPT-2 through the real path (Ray Train `TorchTrainer` on a local Ray), Llama in a
plain torch.multiprocessing gloo group running the same `train_stages`."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from computeswarm.jobs.train.data import synthetic_addition
from computeswarm.jobs.train.pipeline import reference_losses, train_pipeline_worker, train_stages
from computeswarm.jobs.train.tiny import make_tiny_model

ray = pytest.importorskip("ray")
from ray.train import RunConfig, ScalingConfig, UserCallback  # noqa: E402
from ray.train.torch import TorchTrainer  # noqa: E402

TRAINING = {"steps": 30, "learning_rate": 3e-3, "eval_every": 10, "max_seq_len": 16, "seed": 0}
BATCH_SIZE = 8
# The pipeline sums the same fp32 terms as one process, in another order: ~1e-7 apart here.
REL_TOLERANCE = 1e-4
COMPARED_STEPS = 5


def workload(tmp_path: Path, architecture: str, schedule: str) -> dict:
    """A tiny 4-layer model and an addition dataset, as a worker config."""
    return {
        "model": str(make_tiny_model(tmp_path / "model", architecture, layers=4, width=64)),
        "dataset": str(synthetic_addition(tmp_path / "data.jsonl", n=200)),
        "training": TRAINING,
        "pipeline": {"batch_size": BATCH_SIZE, "micro_batches": 4, "schedule": schedule},
        "dropout": False,  # dropout masks can't match across processes; the math can
    }


class RecordReports(UserCallback):
    """Appends every report (one metrics dict per worker) to a file: runs on the controller."""

    def __init__(self, path: Path):
        self.path = str(path)

    def after_report(self, run_context, metrics, checkpoint):
        with open(self.path, "a") as out:
            out.write(json.dumps(metrics) + "\n")


@pytest.fixture
def local_ray(monkeypatch):
    # Each report is a barrier polled at this interval (2 s by default).
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray.init(
        address="local",
        num_cpus=2,
        labels={"cs-vram-gb": "8"},
        include_dashboard=False,
        object_store_memory=100 * 2**20,
    )
    yield
    ray.shutdown()


def test_gpt2_on_ray_train_matches_one_process_and_learns(tmp_path, local_ray):
    config = workload(tmp_path, "gpt2", "gpipe")  # no memories_gb: the node label says 8 GB
    reports_file = tmp_path / "reports.jsonl"
    trainer = TorchTrainer(
        train_pipeline_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(
            name="pipeline",
            storage_path=str(tmp_path / "runs"),
            callbacks=[RecordReports(reports_file)],
        ),
    )
    trainer.fit()  # raises if a worker failed

    reports = [json.loads(line) for line in reports_file.read_text().splitlines()]
    assert [len(workers) for workers in reports] == [2, 2, 2]
    assert all(workers[0] == workers[1] for workers in reports)  # same metrics on every rank
    metrics = [workers[0] for workers in reports]
    assert [m["step"] for m in metrics] == [10, 20, 30]
    _check_training(config, metrics, expected_layers=[[0, 1], [2, 3]], expected_memory=[8.0, 8.0])


def test_llama_1f1b_in_a_gloo_group_splits_by_memory_matches_and_learns(tmp_path):
    config = workload(tmp_path, "llama", "1f1b") | {"memories_gb": [24, 12]}
    run_ranks(2, config, tmp_path)

    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert reports[0] == reports[1]
    metrics = reports[0]
    assert [m["step"] for m in metrics] == [10, 20, 30]
    _check_training(config, metrics, expected_layers=[[0, 1, 2], [3]], expected_memory=[24, 12])


def _check_training(config, metrics, *, expected_layers, expected_memory) -> None:
    placement = metrics[-1]["placement"]
    assert [p["stage"] for p in placement] == [0, 1]
    assert [p["rank"] for p in placement] == [0, 1]
    assert [p["layers"] for p in placement] == expected_layers
    assert [p["memory_gb"] for p in placement] == expected_memory
    pids = {p["pid"] for p in placement}
    assert len(pids) == 2 and os.getpid() not in pids  # each stage in its own process

    losses = [loss for m in metrics for loss in m["losses"]]
    assert len(losses) == TRAINING["steps"]
    assert metrics[-1]["loss"] == losses[-1]
    expected = reference_losses(
        config["model"], config["dataset"], TRAINING, BATCH_SIZE, COMPARED_STEPS, dropout=False
    )
    assert losses[:COMPARED_STEPS] == pytest.approx(expected, rel=REL_TOLERANCE)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, losses
    assert metrics[-1]["eval_loss"] < metrics[0]["eval_loss"]


def run_ranks(world: int, config: dict, out: Path, timeout_s: float = 120) -> None:
    """`train_stages` on `world` local processes in a gloo group; each writes its reports."""
    import torch.multiprocessing as mp

    context = mp.spawn(
        _rank_main, args=(world, config, str(out / "store"), str(out)), nprocs=world, join=False
    )
    deadline = time.monotonic() + timeout_s
    try:
        while not context.join(timeout=1):
            assert time.monotonic() < deadline, f"pipeline ranks still running after {timeout_s} s"
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
                process.join()


def _rank_main(rank: int, world: int, config: dict, store: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)  # two ranks share this machine's cores
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        reports: list[dict] = []
        train_stages(rank, world, config, reports.append)
        Path(out, f"rank{rank}.json").write_text(json.dumps(reports))
    finally:
        dist.destroy_process_group()
