"""Pure parts of sweeps and serving: specs, lease shrinking, leaderboards, metering money."""

from __future__ import annotations

import pytest

from computeswarm.cluster.gateway.backend import request_cost_micros
from computeswarm.cluster.kinds.sweep import idle_members
from computeswarm.cluster.ledger import journal as ledger
from computeswarm.jobs.cli import leaderboard_lines
from computeswarm.jobs.errors import SpecError
from computeswarm.jobs.inputs import adapter_is_path
from computeswarm.jobs.spec import ServeJob, SweepJob, parse_job_spec


def sweep(**overrides) -> dict:
    base = {
        "kind": "sweep",
        "name": "adder-sweep",
        "runtime_env": {"working_dir": "."},
        "resources": {"gpus": "any:2", "nodes": 2},
        "pricing": {"max_price_per_gpu_hour": "1.0"},
        "trial": {"lora": {"model": "model", "dataset": "data.jsonl"}},
        "search_space": {
            "training.learning_rate": {"loguniform": [1e-4, 1e-2]},
            "lora.rank": {"choice": [4, 8]},
        },
        "num_samples": 8,
        "cost_cap": "0.05",
    }
    return {**base, **overrides}


def serve(**overrides) -> dict:
    base = {
        "kind": "serve",
        "name": "adder-api",
        "runtime_env": {"working_dir": "."},
        "model": "model",
        "adapters": {"adder": "adder@1", "local": "./adapters/local"},
        "resources": {"gpus": "any:2", "nodes": 2},
        "replicas": {"min": 1, "max": 2},
        "pricing": {"max_price_per_gpu_hour": "1.0"},
    }
    return {**base, **overrides}


def refused(data: dict) -> str:
    with pytest.raises(SpecError) as e:
        parse_job_spec(data)
    return str(e.value)


# --- specs ------------------------------------------------------------------------------------


def test_a_sweep_spec_parses_with_its_cap_in_micros():
    job = parse_job_spec(sweep())
    assert isinstance(job, SweepJob)
    assert job.cost_cap_micros == 50_000
    assert job.concurrency == 2  # one trial per leased GPU by default
    assert job.scheduler.type == "asha"
    assert job.model_name == "adder-sweep"


def test_a_search_space_value_the_trial_would_refuse_is_refused_up_front():
    message = refused(sweep(search_space={"lora.rank": {"choice": [8, 0]}}))
    assert "lora.rank" in message and "0" in message


def test_a_search_space_path_that_is_not_in_the_trial_is_refused():
    message = refused(sweep(search_space={"training.learnin_rate": {"choice": [0.1]}}))
    assert "learnin_rate" in message


def test_a_bad_domain_is_refused():
    assert "loguniform" in refused(
        sweep(search_space={"training.learning_rate": {"loguniform": [0, 1]}})
    )
    assert "choice" in refused(sweep(search_space={"lora.rank": {"chose": [4]}}))


def test_a_trial_is_lora_or_function_not_both():
    both = sweep(trial={"lora": {"model": "m", "dataset": "d.jsonl"}, "function": "t.py:train"})
    assert "exactly one" in refused(both)
    assert "exactly one" in refused(sweep(trial={}))


def test_a_function_trial_takes_any_flat_parameter():
    job = parse_job_spec(
        sweep(trial={"function": "train.py:train"}, search_space={"x": {"uniform": [0, 1]}})
    )
    assert job.trial.function == "train.py:train"


def test_a_serve_spec_parses_and_tells_versions_from_folders():
    job = parse_job_spec(serve())
    assert isinstance(job, ServeJob)
    assert job.max_tokens == 128 and job.max_duration == 86400  # long-lived by default
    assert not adapter_is_path(job.adapters["adder"])
    assert adapter_is_path(job.adapters["local"])


def test_serve_replicas_must_fit_the_lease():
    assert "replicas.max (3) > leased GPUs (2)" in refused(serve(replicas={"min": 1, "max": 3}))
    assert "replicas.min (2) > replicas.max (1)" in refused(serve(replicas={"min": 2, "max": 1}))


def test_serve_adapter_names_are_checked():
    assert "adapter name" in refused(serve(adapters={"bad name": "adder@1"}))


# --- sweeps: shrinking the lease, the leaderboard ---------------------------------------------

MEMBERS = [(1, "10.90.0.2", True), (2, "10.90.0.3", False), (3, "10.90.0.4", False)]


def test_no_seller_leaves_while_trials_may_still_launch():
    status = {"launching_done": False, "busy_node_ips": []}
    assert idle_members(status, MEMBERS).member_ids == ()


def test_idle_non_driver_sellers_leave_once_launching_is_done():
    status = {"launching_done": True, "busy_node_ips": ["10.90.0.3"]}
    assert idle_members(status, MEMBERS).member_ids == (3,)  # not the driver, not the busy one


def test_a_finished_sweep_lets_the_lease_end_as_a_whole():
    status = {"launching_done": True, "state": "finished", "busy_node_ips": []}
    assert idle_members(status, MEMBERS).member_ids == ()


def test_the_leaderboard_shows_costs_adding_up_to_the_bill():
    board = {
        "job_id": "j-1",
        "state": "succeeded",
        "metric": "eval_loss",
        "mode": "min",
        "status": {"planned": 3, "budget_stopped": True},
        "trials": [
            {
                "trial_id": "t1",
                "params": {"lr": 0.003},
                "metric": 1.25,
                "best_metric": 1.2,
                "iterations": 4,
                "state": "completed",
                "gpu_seconds": 20.0,
                "cost_micros": 5556,
            },
            {
                "trial_id": "t2",
                "params": {"lr": 0.0001},
                "metric": 3.0,
                "best_metric": 3.0,
                "iterations": 1,
                "state": "stopped_early",
                "gpu_seconds": 5.0,
                "cost_micros": 1388,
            },
        ],
        "trials_cost_micros": 6944,
        "cost_cap_micros": 10_000,
        "bill_micros": 9000,
        "overhead_micros": 2056,
        "model_version": "adder-sweep@1",
    }
    text = "\n".join(leaderboard_lines(board))
    assert "cost cap reached" in text
    assert "1.2500" in text and "stopped_early" in text and "0.005556" in text
    assert "trials: 0.006944 of a 0.010000 cap" in text
    assert "lease overhead (formation, imports, idle GPUs): 0.002056" in text
    assert "bill: 0.009000" in text
    assert "best trial registered as adder-sweep@1" in text


# --- serving: metering money ------------------------------------------------------------------


def test_a_request_costs_its_replica_time_at_the_lease_price():
    assert request_cost_micros(0.5, 3_600_000) == 500  # 1 micro per ms at 3.6/h
    assert request_cost_micros(0.0001, 3_600_000) == 0  # rounded down, like the ledger


def test_metered_requests_are_settled_from_escrow_and_the_metered_account():
    held, metered = 10_000, 1_200
    meter = ledger.meter("l-1", metered)
    assert dict(meter.entries) == {"escrow:l-1": -metered, "metered:l-1": metered}
    usage = ledger.Usage("s1", 1, 3600, ask_micros=4000, price_micros=5000)
    txn = ledger.settle("a1", "l-1", held, [usage], metered_micros=metered)
    entries = dict(txn.entries)
    # Both accounts are emptied: escrow had held - metered left, metered had the rest.
    assert entries["escrow:l-1"] == -(held - metered) and entries["metered:l-1"] == -metered
    assert entries["seller:s1"] == 4000 and entries["platform"] == 1000
    assert entries["buyer:a1"] == held - 5000
