"""Pipeline stage plans: which transformer blocks each seller's GPU holds, and what a stage
costs in memory, worked out from the model's config alone (no torch, no weights).

The coordinator shows `stage_estimates` before anything is leased; every pipeline worker
calls `plan_stages` with the same inputs, so all ranks agree on the split without talking.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SUPPORTED = ("gpt2", "llama")
FP32 = 4
# Weights, gradients and Adam's two moments, all fp32.
STATE_BYTES_PER_PARAM = 4 * FP32
GB = 1024**3


@dataclass(frozen=True)
class ParamCounts:
    """Parameters of a causal LM in the three kinds of pieces a pipeline splits it into."""

    embeddings: int  # token (and learned position) embeddings: the first stage
    per_layer: int  # one transformer block
    head: int  # final norm + lm_head (untied): the last stage
    num_layers: int
    hidden: int
    intermediate: int
    vocab: int

    @property
    def total(self) -> int:
        return self.embeddings + self.per_layer * self.num_layers + self.head


@dataclass(frozen=True)
class StageEstimate:
    """What one stage holds and roughly needs to train, next to the GPU memory it gets."""

    stage: int
    layers: range
    params: int
    state_gb: float  # params + grads + Adam moments, fp32
    activations_gb: float  # a rough upper bound for the micro-batches in flight
    available_gb: float

    @property
    def memory_gb(self) -> float:
        return self.state_gb + self.activations_gb

    @property
    def fits(self) -> bool:
        return self.memory_gb <= self.available_gb


def plan_stages(num_layers: int, memories_gb: list[float]) -> list[range]:
    """Contiguous block ranges, one per stage, sized in proportion to each stage's GPU memory.

    Largest-remainder rounding; a stage whose share rounds to zero still gets one layer,
    taken from the stage furthest above its share. Deterministic: every rank gets the same.
    """
    stages = len(memories_gb)
    if stages == 0:
        raise ValueError("a pipeline needs at least one stage: no GPU memories given")
    if num_layers < stages:
        raise ValueError(
            f"{stages} stages but the model has only {num_layers} transformer layers: every "
            f"stage needs at least one layer; lease at most {num_layers} nodes"
        )
    if any(not (math.isfinite(m) and m > 0) for m in memories_gb):
        raise ValueError(f"every stage's GPU memory must be a positive number of GB: {memories_gb}")
    total = sum(memories_gb)
    quotas = [num_layers * memory / total for memory in memories_gb]
    counts = [math.floor(quota) for quota in quotas]
    by_remainder = sorted(range(stages), key=lambda i: (counts[i] - quotas[i], i))
    for i in by_remainder[: num_layers - sum(counts)]:
        counts[i] += 1
    for i in range(stages):
        if counts[i] == 0:
            donor = max(
                (j for j in range(stages) if counts[j] > 1),
                key=lambda j: (counts[j] - quotas[j], -j),
            )
            counts[donor] -= 1
            counts[i] = 1
    ranges, start = [], 0
    for count in counts:
        ranges.append(range(start, start + count))
        start += count
    return ranges


def stage_estimates(
    config: dict,
    memories_gb: list[float],
    *,
    seq_len: int = 64,
    batch_size: int = 8,
    micro_batches: int = 4,
    schedule: str = "gpipe",
) -> list[StageEstimate]:
    """Per stage: its layers, parameter count and estimated training memory, from a HF
    config dict (`config.json`) and each stage's GPU memory. The first stage also holds the
    embeddings, the last the final norm and an untied lm_head.

    Activations are a rough fp32 estimate (sdpa attention, so no seq x seq scores kept):
    GPipe keeps every micro-batch of a step in flight, 1F1B at most (stages - index).
    """
    counts = count_params(config)
    plan = plan_stages(counts.num_layers, memories_gb)
    tokens = (batch_size // micro_batches) * seq_len  # per micro-batch
    # Per token and block: residual, norms, q/k/v, attention output, MLP hidden pre/post act.
    block_floats = 8 * counts.hidden + 3 * counts.intermediate
    estimates = []
    for index, layers in enumerate(plan):
        first, last = index == 0, index == len(plan) - 1
        params = counts.per_layer * len(layers)
        floats = block_floats * len(layers)
        if first:
            params += counts.embeddings
            floats += counts.hidden
        if last:
            params += counts.head
            floats += counts.hidden + 2 * counts.vocab  # logits and their softmax gradient
        in_flight = micro_batches if schedule == "gpipe" else min(micro_batches, len(plan) - index)
        estimates.append(
            StageEstimate(
                stage=index,
                layers=layers,
                params=params,
                state_gb=params * STATE_BYTES_PER_PARAM / GB,
                activations_gb=in_flight * tokens * floats * FP32 / GB,
                available_gb=memories_gb[index],
            )
        )
    return estimates


def count_params(config: dict) -> ParamCounts:
    """Parameter counts of a GPT-2 or Llama causal LM from its config dict."""
    model_type = config.get("model_type")
    if model_type == "gpt2":
        return _gpt2_counts(config)
    if model_type == "llama":
        return _llama_counts(config)
    raise ValueError(
        f"pipeline stages support model_type {', '.join(SUPPORTED)}; this model is {model_type!r}"
    )


def _gpt2_counts(config: dict) -> ParamCounts:
    if config.get("add_cross_attention"):
        raise ValueError("GPT-2 with cross-attention is not a causal LM the pipeline can split")
    d = config.get("n_embd") or config["hidden_size"]
    inner = config.get("n_inner") or 4 * d
    vocab = config["vocab_size"]
    positions = config.get("n_positions") or config["max_position_embeddings"]
    norm = 2 * d  # LayerNorm: weight and bias
    attention = (d * 3 * d + 3 * d) + (d * d + d)  # c_attn, c_proj (Conv1D, with bias)
    mlp = (d * inner + inner) + (inner * d + d)  # c_fc, c_proj
    return ParamCounts(
        embeddings=vocab * d + positions * d,
        per_layer=2 * norm + attention + mlp,
        head=norm + vocab * d,
        num_layers=config.get("n_layer") or config["num_hidden_layers"],
        hidden=d,
        intermediate=inner,
        vocab=vocab,
    )


def _llama_counts(config: dict) -> ParamCounts:
    h = config["hidden_size"]
    inner = config["intermediate_size"]
    vocab = config["vocab_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or h // heads
    q, kv = heads * head_dim, kv_heads * head_dim
    attention = h * q + 2 * h * kv + q * h
    if config.get("attention_bias"):
        attention += q + 2 * kv + h
    mlp = 3 * h * inner  # gate, up, down
    if config.get("mlp_bias"):
        mlp += 2 * inner + h
    return ParamCounts(
        embeddings=vocab * h,
        per_layer=2 * h + attention + mlp,  # two RMSNorms: weight only
        head=h + vocab * h,
        num_layers=config["num_hidden_layers"],
        hidden=h,
        intermediate=inner,
        vocab=vocab,
    )


def split_table(
    config: dict,
    sellers: list[tuple[str, float]],
    *,
    seq_len: int,
    batch_size: int,
    micro_batches: int,
    schedule: str,
) -> list[dict]:
    """The split as a buyer sees it before training: per stage, its seller, layers,
    parameters and memory estimate. `sellers` are (seller id, GPU memory GB) in stage order."""
    estimates = stage_estimates(
        config,
        [vram for _, vram in sellers],
        seq_len=seq_len,
        batch_size=batch_size,
        micro_batches=micro_batches,
        schedule=schedule,
    )
    return [
        {
            "stage": e.stage,
            "seller_id": seller,
            "vram_gb": vram,
            "layers": f"{e.layers.start}-{e.layers.stop - 1}",
            "params": e.params,
            "memory_gb": round(e.memory_gb, 4),
            "fits": e.fits,
        }
        for e, (seller, vram) in zip(estimates, sellers, strict=True)
    ]
