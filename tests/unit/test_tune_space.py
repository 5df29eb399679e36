"""Sweep search spaces: domain parsing, validation hooks, the deterministic plan, apply."""

from __future__ import annotations

import math

import pytest

from computeswarm.tune.space import (
    Choice,
    Grid,
    LogUniform,
    Uniform,
    apply,
    check_space,
    expand,
    parse_domain,
)


def test_parse_domain_builds_each_kind():
    assert parse_domain("lora.rank", {"choice": [4, 8]}) == Choice((4, 8))
    assert parse_domain("lora.alpha", {"grid": [8, 16]}) == Grid((8, 16))
    assert parse_domain("lora.dropout", {"uniform": [0, 0.2]}) == Uniform(0.0, 0.2)
    assert parse_domain("training.learning_rate", {"loguniform": [1e-4, 1e-2]}) == LogUniform(
        1e-4, 1e-2
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"normal": [0, 1]}, "unknown domain type 'normal'; valid: choice, grid, uniform"),
        ({"choice": [1], "grid": [2]}, "exactly one of"),
        ({}, "exactly one of"),
        (0.001, "exactly one of"),
        ({"choice": []}, "non-empty list"),
        ({"grid": "abc"}, "non-empty list"),
        ({"uniform": [1, 1]}, "lo < hi"),
        ({"uniform": [2, 1]}, "lo < hi"),
        ({"loguniform": [0, 1]}, "loguniform needs lo > 0"),
        ({"loguniform": [-1, 1]}, "loguniform needs lo > 0"),
        ({"uniform": ["a", 1]}, "two numbers"),
        ({"uniform": [True, 2]}, "two numbers"),
        ({"uniform": [1, 2, 3]}, "two numbers"),
        ({"uniform": [0, float("inf")]}, "finite"),
    ],
)
def test_parse_domain_errors_name_the_path_and_the_problem(raw, message):
    with pytest.raises(ValueError, match=r"search_space\.lora\.rank") as error:
        parse_domain("lora.rank", raw)
    assert message in str(error.value)


def test_check_space_offers_every_candidate_value_and_names_the_bad_one():
    seen = []

    def check(values: dict) -> None:
        seen.append(values)
        ((path, value),) = values.items()
        if path == "lora.rank" and value < 1:
            raise ValueError("rank must be > 0")

    space = {
        "training.learning_rate": {"loguniform": [1e-4, 1e-2]},
        "lora.alpha": {"grid": [8, 16]},
        "lora.rank": {"choice": [4, 0]},
    }
    with pytest.raises(ValueError, match=r"search_space.lora.rank: value 0 is invalid: rank must"):
        check_space(space, check)
    assert seen == [
        {"training.learning_rate": 1e-4},
        {"training.learning_rate": 1e-2},
        {"lora.alpha": 8},
        {"lora.alpha": 16},
        {"lora.rank": 4},
        {"lora.rank": 0},
    ]


def test_check_space_accepts_an_empty_space_and_parses_without_a_checker():
    check_space({})
    check_space({}, lambda values: None)
    with pytest.raises(ValueError, match="unknown domain type"):
        check_space({"lora.rank": {"range": [1, 2]}})


def test_expand_repeats_the_grid_product_num_samples_times_sample_major():
    space = {"a": {"grid": [1, 2]}, "b": {"grid": ["x", "y", "z"]}}
    plan = expand(space, num_samples=2, seed=0)
    product = [{"a": a, "b": b} for a in (1, 2) for b in ("x", "y", "z")]
    assert plan == product + product


def test_expand_is_deterministic_in_the_seed_and_draws_inside_the_domains():
    space = {
        "training.learning_rate": {"loguniform": [1e-4, 1e-2]},
        "lora.dropout": {"uniform": [0.0, 0.2]},
        "lora.rank": {"choice": [4, 8, 16]},
        "lora.alpha": {"grid": [8, 16]},
    }
    plan = expand(space, num_samples=5, seed=7)
    assert plan == expand(space, num_samples=5, seed=7)
    assert plan != expand(space, num_samples=5, seed=8)
    assert len(plan) == 10
    assert [p["lora.alpha"] for p in plan] == [8, 16] * 5
    for params in plan:
        assert list(params) == list(space)  # the space's order
        assert 1e-4 <= params["training.learning_rate"] <= 1e-2
        assert 0.0 <= params["lora.dropout"] <= 0.2
        assert params["lora.rank"] in (4, 8, 16)
    # Log-uniform: draws spread over decades, not bunched near the top.
    rates = [p["training.learning_rate"] for p in expand(space, 200, seed=1)]
    low = sum(math.log10(r) < -3 for r in rates) / len(rates)
    assert 0.4 < low < 0.6


def test_expand_of_an_empty_space_repeats_the_fixed_config():
    assert expand({}, num_samples=3, seed=0) == [{}, {}, {}]
    with pytest.raises(ValueError, match="num_samples"):
        expand({}, num_samples=0, seed=0)


def test_apply_sets_dotted_paths_on_a_deep_copy():
    base = {
        "training": {"learning_rate": 0.001, "steps": 10},
        "lora": {"rank": 8},
        "micro_batch": 4,
    }
    applied = apply(base, {"training.learning_rate": 0.01, "lora.rank": 16, "micro_batch": 8})
    assert applied == {
        "training": {"learning_rate": 0.01, "steps": 10},
        "lora": {"rank": 16},
        "micro_batch": 8,
    }
    assert base["training"]["learning_rate"] == 0.001 and base["lora"]["rank"] == 8


def test_apply_refuses_paths_whose_parents_are_missing():
    base = {"training": {"learning_rate": 0.001}, "micro_batch": 4}
    with pytest.raises(ValueError, match="no section 'optimizer'"):
        apply(base, {"optimizer.beta1": 0.9})
    with pytest.raises(ValueError, match="no section 'micro_batch'"):
        apply(base, {"micro_batch.size": 2})


def test_the_driver_plans_lora_trials_with_applied_settings_and_absolute_paths(tmp_path):
    from computeswarm.jobs.run_store import RunStore
    from computeswarm.tune.run import plan_sweep

    (tmp_path / "tiny").mkdir()
    (tmp_path / "data.jsonl").write_text('{"text": "1+1=2"}\n')
    lora = {
        "model": "tiny",
        "dataset": "data.jsonl",
        "training": {"steps": 12, "eval_every": 5, "learning_rate": 0.001, "epochs": None},
        "lora": {"rank": 8},
        "micro_batch": 4,
    }
    spec = {
        "trial": {"lora": lora, "function": None, "config": {}},
        "search_space": {"lora.rank": {"grid": [4, 16]}, "training.eval_every": {"grid": [4]}},
        "num_samples": 2,
        "seed": 0,
        "metric": "eval_loss",
        "mode": "min",
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "max_concurrent_trials": None,
        "cost_cap": "0.05",
        "resources": {"gpus": "any:4", "nodes": 2, "cpus_per_node": 3.0},
    }
    plan = plan_sweep(spec, tmp_path, RunStore(str(tmp_path / "run"), False))
    assert [c["params"]["lora.rank"] for c in plan.configs] == [4, 16, 4, 16]
    first = plan.configs[0]
    assert first["index"] == 0 and first["trial"]["lora"] == {"rank": 4}
    assert first["trial"]["training"]["eval_every"] == 4 and lora["training"]["eval_every"] == 5
    assert first["trial"]["model"] == str(tmp_path / "tiny")
    assert first["trial"]["dataset"] == str(tmp_path / "data.jsonl")
    assert first["max_iterations"] == plan.max_iterations == 3  # steps 4, 8, 12
    assert plan.cap_micros == 50_000 and plan.max_concurrent == 4  # one per leased GPU
    assert plan.trial_resources == {"CPU": 1.5, "GPU": 1}
    hub = plan_sweep(
        spec | {"trial": {"lora": lora | {"model": "org/hub-model"}}},
        tmp_path,
        RunStore(str(tmp_path), False),
    )
    assert hub.configs[0]["trial"]["model"] == "org/hub-model"  # not a working-dir path


def test_the_driver_plans_function_trials_with_fixed_config_and_params(tmp_path):
    from computeswarm.jobs.run_store import RunStore
    from computeswarm.tune.run import plan_sweep

    spec = {
        "trial": {"lora": None, "function": "train.py:train", "config": {"base": 1}},
        "search_space": {"x": {"choice": [1, 2]}},
        "num_samples": 3,
        "seed": 1,
        "metric": "score",
        "mode": "max",
        "scheduler": {"type": "fifo"},
        "max_concurrent_trials": 2,
        "cost_cap_micros": 7,
    }
    plan = plan_sweep(spec, tmp_path, RunStore(str(tmp_path / "run"), False))
    assert plan.kind == "function" and len(plan.configs) == 3
    assert plan.max_iterations is None and plan.cap_micros == 7 and plan.max_concurrent == 2
    assert (
        plan.configs[2]["fixed"] == {"base": 1} and plan.configs[2]["function"] == "train.py:train"
    )
