"""Pipeline stage plans: layers split by GPU memory, and per-stage size estimates that add
up to the real model's parameters."""

from __future__ import annotations

import random
import re

import pytest

from computeswarm.jobs.train.pipeline_plan import (
    GB,
    STATE_BYTES_PER_PARAM,
    count_params,
    plan_stages,
    stage_estimates,
)
from computeswarm.jobs.train.tiny import tiny_config

VOCAB = 97


def test_equal_memories_split_the_layers_evenly():
    assert plan_stages(4, [1.0, 1.0]) == [range(0, 2), range(2, 4)]
    assert plan_stages(12, [8, 8, 8]) == [range(0, 4), range(4, 8), range(8, 12)]


def test_a_24gb_and_a_12gb_gpu_get_an_uneven_split():
    assert plan_stages(4, [24, 12]) == [range(0, 3), range(3, 4)]
    assert plan_stages(12, [24, 12]) == [range(0, 8), range(8, 12)]
    assert plan_stages(12, [12, 24]) == [range(0, 4), range(4, 12)]


def test_leftover_layers_go_to_the_largest_remainders():
    # Quotas 2.4, 1.2, 2.4: floors 2, 1, 2 and one left for the first of the two .4 ties.
    assert [len(r) for r in plan_stages(6, [2, 1, 2])] == [3, 1, 2]
    # Quotas 1.6, 2.4, 1.0 (of 5): floors 1, 2, 1; the .6 beats the .4.
    assert [len(r) for r in plan_stages(5, [16, 24, 10])] == [2, 2, 1]


def test_a_tiny_gpu_still_gets_one_layer_taken_from_the_biggest():
    assert plan_stages(4, [100, 1, 1]) == [range(0, 2), range(2, 3), range(3, 4)]
    assert [len(r) for r in plan_stages(3, [80, 1, 1])] == [1, 1, 1]


def test_plans_cover_every_layer_once_in_order_and_follow_memory():
    rng = random.Random(0)
    for _ in range(500):
        stages = rng.randint(1, 8)
        layers = rng.randint(stages, 80)
        sizes = [8, 12, 16, 24, 40, 48, 80]
        memories = [rng.choice(sizes) * rng.uniform(0.5, 1) for _ in range(stages)]
        plan = plan_stages(layers, memories)
        assert len(plan) == stages
        assert [i for r in plan for i in r] == list(range(layers))
        assert all(len(r) >= 1 for r in plan)
        quotas = [layers * m / sum(memories) for m in memories]
        if min(quotas) >= 1:  # no stage needed topping up: plain largest-remainder rounding
            assert all(abs(len(r) - q) < 1 for r, q in zip(plan, quotas, strict=True))


def test_more_stages_than_layers_is_an_error_that_says_so():
    with pytest.raises(ValueError, match=re.escape("3 stages but the model has only 2")):
        plan_stages(2, [24, 24, 24])
    with pytest.raises(ValueError, match="no GPU memories"):
        plan_stages(4, [])
    with pytest.raises(ValueError, match="positive"):
        plan_stages(4, [24, 0])


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_stage_parameters_match_the_real_model_stage_by_stage(architecture):
    from transformers import AutoModelForCausalLM

    config = tiny_config(architecture, VOCAB, layers=4, width=64)
    memories = [24, 12]
    estimates = stage_estimates(config.to_dict(), memories)
    model = AutoModelForCausalLM.from_config(config)
    plan = plan_stages(4, memories)
    real = [0] * len(plan)
    for name, param in model.named_parameters():
        real[_stage_of(name, plan)] += param.numel()

    assert [e.params for e in estimates] == real
    assert sum(e.params for e in estimates) == sum(p.numel() for p in model.parameters())
    assert count_params(config.to_dict()).total == sum(real)
    assert [e.layers for e in estimates] == plan


def test_memory_estimate_counts_adam_state_and_the_schedule_in_flight():
    config = tiny_config("gpt2", VOCAB, layers=4, width=64).to_dict()
    gpipe = stage_estimates(config, [1, 1], seq_len=64, batch_size=8, micro_batches=4)
    one_f_one_b = stage_estimates(
        config, [1, 1], seq_len=64, batch_size=8, micro_batches=4, schedule="1f1b"
    )
    for estimate in gpipe:
        assert estimate.state_gb == estimate.params * STATE_BYTES_PER_PARAM / GB
        assert estimate.memory_gb == estimate.state_gb + estimate.activations_gb
        assert estimate.fits
    # GPipe keeps all 4 micro-batches' activations; 1F1B's first of 2 stages at most 2.
    assert one_f_one_b[0].activations_gb == pytest.approx(gpipe[0].activations_gb / 2)
    assert one_f_one_b[1].activations_gb == pytest.approx(gpipe[1].activations_gb / 4)
    longer = stage_estimates(config, [1, 1], seq_len=128, batch_size=8, micro_batches=4)
    assert longer[0].activations_gb == pytest.approx(2 * gpipe[0].activations_gb)
    assert not stage_estimates(config, [1e-6, 1e-6])[0].fits


def test_unknown_architectures_are_refused_by_name():
    with pytest.raises(ValueError, match="'bert'"):
        stage_estimates({"model_type": "bert", "num_hidden_layers": 4}, [1, 1])


def _stage_of(name: str, plan: list[range]) -> int:
    layer = re.search(r"\.(?:h|layers)\.(\d+)\.", name)
    if layer:
        return next(i for i, r in enumerate(plan) if int(layer[1]) in r)
    if any(part in name for part in ("wte", "wpe", "embed_tokens")):
        return 0
    assert any(part in name for part in ("ln_f", "model.norm", "lm_head")), name
    return len(plan) - 1
