"""LoRA training for real: `computeswarm up --local` on testbed hosts joined by WireGuard,
a `lora` job across two sellers' Ray nodes (gloo over the overlay), the adapter registered
and loaded through peft, the bill."""

from __future__ import annotations

import time

import pytest

from computeswarm.cluster.client import CoordinatorClient
from computeswarm.jobs.train.data import synthetic_addition
from computeswarm.jobs.train.tiny import make_tiny_model
from computeswarm.jobs.upload import pack_working_dir
from tests.e2e.conftest import local_swarm_up


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    yield from local_swarm_up(tmp_path_factory, sellers=2)


# Usually 2-3 min; a loaded CI box has taken over 5 (the default timeout), so the loop's own
# deadline below fails first, with the job's state and log.
@pytest.mark.timeout(600)
def test_a_lora_job_trains_across_two_sellers_over_wireguard(swarm, tmp_path):
    folder = tmp_path / "job"
    make_tiny_model(folder / "model", "gpt2")
    synthetic_addition(folder / "data.jsonl", n=600)
    spec = {
        "kind": "lora",
        "name": "wg-adder",
        "model": "model",
        "dataset": "data.jsonl",
        "runtime_env": {"working_dir": "."},
        "resources": {"gpus": "RTX4090:24GB:2", "nodes": 2, "memory_gb_per_node": 1.5},
        "pricing": {"max_price_per_gpu_hour": "0.60", "budget": "0.50"},
        "max_duration": "15m",
        "training": {"steps": 20, "learning_rate": 0.003, "max_seq_len": 16, "eval_every": 10},
        "deepspeed": {"zero_stage": 3, "micro_batch": 8},
    }
    buyer = CoordinatorClient(swarm.coordinator, swarm.buyer_key, timeout=60)
    job_id = buyer.submit_job(spec, pack_working_dir(folder, 2**22))["id"]
    deadline = time.monotonic() + 420
    while time.monotonic() < deadline and buyer.job(job_id)["state"] not in (
        "succeeded",
        "failed",
        "cancelled",
    ):
        time.sleep(1)
    job = buyer.job(job_id)
    # The driver's log is saved while the lease is released, a moment after the job ends.
    while not (chunk := buyer.job_logs(job_id))["done"] and time.monotonic() < deadline + 60:
        time.sleep(1)
    logs = chunk["text"]
    assert job["state"] == "succeeded", (job, logs[-3000:])
    # ZeRO-3 across both sellers: rank 1 ran on the other seller, and Ray tags its lines
    # with that node's overlay address.
    assert len({m["seller_id"] for m in job["lease"]["members"]}) == 2
    assert "RayTrainWorker" in logs and "ip=10.90." in logs, logs[-2000:]
    metrics = job["training"]["metrics"]
    assert metrics["eval_loss"] < metrics["base_eval_loss"] - 0.3, metrics

    deadline = time.monotonic() + 30
    while not buyer.job(job_id)["model_version"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert buyer.job(job_id)["model_version"] == "wg-adder@1"
    adapter = buyer.download_model("wg-adder", 1, tmp_path / "adapter")

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tuned = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(folder / "model"), adapter
    )
    ids = torch.tensor([[4, 5, 75, 10, 83]])
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(folder / "model")(input_ids=ids).logits
        assert not torch.allclose(base, tuned(input_ids=ids).logits)
    assert job["cost"] is not None or buyer.job(job_id)["cost"] is not None
