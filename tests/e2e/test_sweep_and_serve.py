"""Sweeps and serving for real: `computeswarm up --local` on testbed hosts joined by
WireGuard (one swarm for the module).

* serve: a base model and two LoRA adapters on Ray Serve on a lease, reached only through
  the coordinator's gateway: greedy outputs equal PEFT's, streaming, another buyer's 404,
  the rate limit's 429, tokens metered into the ledger.
* sweep: LoRA trials as a Ray Tune experiment on a 2-seller lease, ASHA stopping weak
  trials, the coordinator killed mid-sweep and restarted, the leaderboard, the bill and
  the best trial's registered adapter.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from computeswarm.cluster.client import CoordinatorClient
from computeswarm.cluster.local.swarm import LocalSwarm, crash_and_restart_head
from computeswarm.jobs.train.data import synthetic_addition
from computeswarm.jobs.train.tiny import make_tiny_model
from computeswarm.jobs.upload import pack_working_dir
from computeswarm.serve.openai import parse_sse
from computeswarm.tune.budget import trial_cost_micros
from tests.e2e.conftest import local_swarm_up
from tests.e2e.store import stored_texts

TRIALS = 8
FINISHED = ("completed", "stopped_early", "error", "skipped_budget")
FINAL_JOB = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    yield from local_swarm_up(tmp_path_factory, sellers=2)


def test_a_serve_job_answers_through_the_gateway_only(swarm, tmp_path):
    from tests.integration.test_serve_app import make_models

    folder = tmp_path / "job"
    make_models(folder)  # tiny-gpt2 and adapters/adder, adapters/other (random LoRA B)
    spec = {
        "kind": "serve",
        "name": "wg-api",
        "runtime_env": {"working_dir": "."},
        "model": "tiny-gpt2",
        "adapters": {"adder": "./adapters/adder", "other": "./adapters/other"},
        "replicas": {"min": 1, "max": 2},
        "max_tokens": 12,
        "rate_limits": {"requests_per_second": 2, "tokens_per_second": 10_000},
        "resources": {"gpus": "RTX4090:24GB:2", "nodes": 2, "memory_gb_per_node": 1.5},
        "pricing": {"max_price_per_gpu_hour": "0.60", "budget": "0.50"},
        "max_duration": "15m",
    }
    buyer = CoordinatorClient(swarm.coordinator, swarm.buyer_key, timeout=60)
    job_id = buyer.submit_job(spec, pack_working_dir(folder, 2**22))["id"]
    try:
        wait_for(
            lambda: (j := buyer.job(job_id))["serve"]["ready"] or j["state"] in FINAL_JOB,
            300,
            "the serve job to be ready",
        )
        job = buyer.job(job_id)
        assert job["serve"]["ready"], (job, buyer.job_logs(job_id)["text"][-3000:])
        base = f"{swarm.coordinator}/v1/serve/{job_id}/v1"
        auth = {"Authorization": f"Bearer {swarm.buyer_key}"}
        http = httpx.Client(timeout=60, headers=auth)
        listed = http.get(f"{base}/models").json()
        assert [m["id"] for m in listed["data"]] == ["tiny-gpt2", "adder", "other"]

        texts = {}
        for model in ("adder", "other"):
            time.sleep(0.6)  # under the 2 requests/s limit
            body = {"model": model, "prompt": "12+34=", "max_tokens": 8, "temperature": 0}
            r = http.post(f"{base}/completions", json=body)
            assert r.status_code == 200, r.text
            texts[model] = r.json()["choices"][0]["text"]
            assert texts[model] == peft_greedy(folder, model, "12+34=", 8)
        assert texts["adder"] != texts["other"]

        time.sleep(1.0)
        chat = {"model": "adder", "messages": [{"role": "user", "content": "1+2"}], "max_tokens": 8}
        whole = http.post(f"{base}/chat/completions", json=chat | {"temperature": 0})
        assert whole.status_code == 200, whole.text
        time.sleep(1.0)
        with http.stream(
            "POST", f"{base}/chat/completions", json=chat | {"temperature": 0, "stream": True}
        ) as r:
            assert r.status_code == 200
            events = parse_sse(r.read().decode())
        pieces = [
            e["choices"][0]["delta"].get("content", "") for e in events if isinstance(e, dict)
        ]
        assert "".join(pieces) == whole.json()["choices"][0]["message"]["content"]
        assert events[-1] == "[DONE]" and events[-2]["usage"]["completion_tokens"] > 0

        # Serve's own proxy listens on the lease head's overlay address only: the underlay
        # (where the gateway is public) does not reach it.
        # Its status came through the object store (the driver ran on a seller), and
        # nothing of it is on the coordinator's disk.
        (status,) = stored_texts(swarm, f"/serve/{job_id}/serve.json").values()
        assert not list(Path(swarm.state_dir).glob(f"head/**/{job_id}/serve.json"))
        upstream = httpx.URL(json.loads(status)["url"])
        assert upstream.host.startswith("10.90.")
        underlay = httpx.URL(swarm.coordinator).host
        with pytest.raises((httpx.ConnectError, httpx.ConnectTimeout)):  # refused or dropped
            httpx.get(f"http://{underlay}:{upstream.port}/v1/models", timeout=5)

        # Another buyer does not see it; a burst past 2 requests/s is refused with 429.
        admin = CoordinatorClient(swarm.coordinator, swarm.admin_key, timeout=60)
        other = admin.create_account("other-buyer", "buyer")
        stranger = {"Authorization": f"Bearer {other['api_key']}"}
        assert httpx.get(f"{base}/models", headers=stranger).status_code == 404
        time.sleep(1.0)
        one = {"model": "adder", "prompt": "1", "max_tokens": 1}
        with ThreadPoolExecutor(6) as pool:  # at once: the limit holds 1 s of rate (2)
            burst = list(pool.map(lambda _: http.post(f"{base}/completions", json=one), range(6)))
        codes = [r.status_code for r in burst]
        assert codes.count(429) >= 3 and 200 in codes, codes
        assert int(next(r for r in burst if r.status_code == 429).headers["Retry-After"]) >= 1

        # Metering: every answered request's tokens, and its replica time in the ledger.
        serve = wait_for(
            lambda: (v := buyer.job(job_id)["serve"])["requests"] >= 4 + codes.count(200) and v,
            10,
            "requests to be metered",
            poll=0.5,
        )
        assert serve["completion_tokens"] > 0 and serve["prompt_tokens"] > 0
        lease_id = buyer.job(job_id)["lease"]["id"]
        metered = buyer.ledger()["balances_micros"].get(f"metered:{lease_id}", 0)
        assert metered == serve["metered_micros"] > 0
    finally:
        buyer.cancel_job(job_id)
    job = wait_for(
        lambda: (j := buyer.job(job_id))["cost"] is not None and j, 60, "the lease to settle"
    )
    assert job["state"] == "cancelled"
    balances = buyer.ledger()["balances_micros"]
    assert balances.get(f"metered:{lease_id}", 0) == 0  # settled: the metered part was paid


def peft_greedy(folder, adapter: str, prompt: str, max_tokens: int) -> str:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder / "tiny-gpt2")
    net = AutoModelForCausalLM.from_pretrained(folder / "tiny-gpt2")
    net = PeftModel.from_pretrained(net, folder / "adapters" / adapter)
    encoded = tokenizer(prompt, return_tensors="pt")
    output = net.generate(**encoded, do_sample=False, max_new_tokens=max_tokens)
    return tokenizer.decode(output[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True)


def sweep_spec(trials: int = TRIALS) -> dict:
    """LoRA trials of a tiny GPT-2 on a 2-seller lease (the benchmark runs it too)."""
    return {
        "kind": "sweep",
        "name": "wg-sweep",
        "runtime_env": {"working_dir": "."},
        "resources": {"gpus": "RTX4090:24GB:2", "nodes": 2, "memory_gb_per_node": 1.5},
        "pricing": {"max_price_per_gpu_hour": "0.60", "budget": "0.50"},
        "max_duration": "15m",
        "trial": {
            "lora": {
                "model": "model",
                "dataset": "data.jsonl",
                "training": {
                    "steps": 200,
                    "max_seq_len": 16,
                    "eval_every": 20,
                    "checkpoint_every": 20,
                },
                "lora": {"rank": 4},
                "micro_batch": 8,
            }
        },
        # Learning rates from useless (1e-5) to good (3e-2): ASHA has weak trials to stop.
        "search_space": {
            "training.learning_rate": {"loguniform": [1e-5, 3e-2]},
            "lora.rank": {"choice": [2, 4, 8]},
        },
        "metric": "eval_loss",
        "mode": "min",
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "num_samples": trials,
        "max_concurrent_trials": 2,
        "seed": 3,
    }


def wait_for(predicate, timeout: float, what: str, poll: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_a_sweep_survives_a_coordinator_crash_and_registers_its_best_trial(swarm, tmp_path):
    folder = tmp_path / "job"
    make_tiny_model(folder / "model", "gpt2", layers=2, width=32)
    synthetic_addition(folder / "data.jsonl", n=300)
    buyer = CoordinatorClient(swarm.coordinator, swarm.buyer_key, timeout=60)
    # Trials twice as long as the benchmark's (the same 10 reports): on a quick machine the
    # rest of the plan finished while the coordinator was down, and nothing was resumed.
    spec = sweep_spec()
    spec["trial"]["lora"]["training"] |= {"steps": 400, "eval_every": 40, "checkpoint_every": 40}
    job_id = buyer.submit_job(spec, pack_working_dir(folder, 2**22))["id"]

    def finished_trials() -> dict:
        board = buyer.sweep(job_id)
        return {t["trial_id"]: t for t in board["trials"] if t["state"] in FINISHED}

    before = wait_for(lambda: len(finished_trials()) >= 1 and finished_trials(), 420, "a trial")
    assert len(before) < TRIALS, "the sweep ended before the crash: nothing was tested"
    crash_and_restart_head(LocalSwarm.load() or swarm)
    buyer = CoordinatorClient(swarm.coordinator, swarm.buyer_key, timeout=60)
    job = wait_for(
        lambda: (j := buyer.job(job_id))["state"] in ("succeeded", "failed", "cancelled") and j,
        600,
        "the sweep to end",
        poll=2.0,
    )
    logs = buyer.job_logs(job_id)["text"]
    assert job["state"] == "succeeded", (job["reason"], buyer.sweep(job_id)["status"], logs[-3000:])
    # The bill is known once both leases are settled, a moment after the job ends (the
    # release saves the driver's log first).
    board = wait_for(
        lambda: (b := buyer.sweep(job_id))["bill_micros"] is not None and b, 60, "the bill"
    )

    # Every position of the plan finished exactly once; the trials finished before the
    # crash are unchanged. A trial launched after Tune's last snapshot of the killed driver
    # may show as lost (`error`), its position run again under a new id.
    trials = {t["trial_id"]: t for t in board["trials"] if t["state"] != "error"}
    lost = [t for t in board["trials"] if t["state"] == "error"]
    assert sorted(t["index"] for t in trials.values()) == list(range(TRIALS)), board["trials"]
    assert all(t["state"] in ("completed", "stopped_early") for t in trials.values()), trials
    assert not {t["trial_id"] for t in lost} & set(before), lost
    for trial_id, old in before.items():
        new = trials[trial_id]
        assert (new["iterations"], new["history"], new["state"]) == (
            old["iterations"],
            old["history"],
            old["state"],
        ), f"finished trial {trial_id} changed after the restart"
    # ASHA stopped some trials early; some ran all 10 reports (400 steps / eval every 40).
    states = [t["state"] for t in trials.values()]
    assert "stopped_early" in states and "completed" in states, states
    assert all(t["iterations"] == 10 for t in trials.values() if t["state"] == "completed")
    # The crash ended the first lease; the sweep went on to finish trials on a second one.
    first = {t["lease_id"] for t in before.values()}
    assert len(first) == 1 and len({t["lease_id"] for t in trials.values()} - first) == 1, trials

    # Leaderboard: best first; trial costs and the lease overhead add up to the bill, which
    # is what the ledger paid sellers and the platform for both leases.
    ranked = [t["metric"] for t in board["trials"] if t["state"] != "error"]
    assert len(ranked) == TRIALS and board["trials"][0]["state"] != "error"
    assert ranked == sorted(ranked)
    assert board["bill_micros"] == board["trials_cost_micros"] + board["overhead_micros"]
    assert board["overhead_micros"] >= 0 and board["trials_cost_micros"] > 0
    # The buyer's side of both settlements: escrow released less what came back.
    leases = {t["lease_id"] for t in trials.values()}
    settled = [e for e in buyer.ledger()["entries"] if e["kind"] == "settle" and e["ref"] in leases]
    assert len({e["txn"] for e in settled}) == 2
    assert -sum(e["amount_micros"] for e in settled) == board["bill_micros"]
    price = int(Decimal(job["lease"]["members"][0]["price_per_gpu_hour"]) * 1_000_000)
    for t in trials.values():  # every seller asks the same here
        assert t["cost_micros"] == trial_cost_micros(t["gpu_seconds"], price), t

    # The best trial's adapter is a model version.
    best = board["trials"][0]
    assert board["model_version"] == "wg-sweep@1"
    version = buyer.model_version("wg-sweep", 1)
    assert version["metrics"]["trial_id"] == best["trial_id"]

    # The buyer's leaderboard, as the CLI prints it from the coordinator's API.
    from typer.testing import CliRunner

    from computeswarm.cli import app

    shown = CliRunner().invoke(
        app,
        [
            "sweeps",
            "show",
            job_id,
            "--coordinator",
            swarm.coordinator,
            "--api-key",
            swarm.buyer_key,
        ],
    )
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert best["trial_id"] in lines[2] and lines[2].startswith("1 ")  # best first
    assert f"bill: {board['bill_micros'] // 10**6}.{board['bill_micros'] % 10**6:06d}" in lines
    assert "best trial registered as wg-sweep@1" in lines
