"""Pipeline-parallel training (kind `pipeline`): a causal LM's blocks split into stages, one
per seller, sized by each seller's GPU memory, trained with `torch.distributed.pipelining`.

    TorchTrainer(train_pipeline_worker, train_loop_config=config, scaling_config=...)

`train_pipeline_worker` is the thin Ray Train entry; `train_stages` is the training itself
and runs in any initialised torch.distributed group (a plain torch.multiprocessing gloo group
in tests). `reference_losses` trains the same model on the same batches in one process, to
check that the pipeline computes the losses a single model would.
"""

from __future__ import annotations

import gc
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from computeswarm.jobs import contract
from computeswarm.jobs.run_store import RunStore, StepsLog
from computeswarm.jobs.spec_parts import PipelineSettings, Training
from computeswarm.jobs.train.data import IGNORE, Example, encode, read_jsonl, split
from computeswarm.jobs.train.pipeline_plan import SUPPORTED, plan_stages

VRAM_LABEL = "cs-vram-gb"
# Evaluation runs on (at most) this many batches of the held-out split, so it stays cheap.
EVAL_MAX_BATCHES = 16


def train_pipeline_worker(config: dict) -> None:
    """Ray Train per-worker loop: worker `rank` trains stage `rank`. See `train_stages`."""
    import ray
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    train_stages(
        context.get_world_rank(),
        context.get_world_size(),
        config,
        ray.train.report,
        # A simulated seller's "GPU" is a Ray resource, not a CUDA device.
        device=ray.train.torch.get_device() if torch.cuda.is_available() else torch.device("cpu"),
        node_ip=ray.util.get_node_ip_address(),
        memory_gb=node_memory_gb(),
        final_report=_report_with_stage,
    )


def _report_with_stage(metrics: dict, stage: nn.Module) -> None:
    """Each rank saves its stage's weights into the run's final checkpoint."""
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    with tempfile.TemporaryDirectory() as folder:
        torch.save(stage.state_dict(), Path(folder) / f"stage-{rank}.pt")
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(folder),
            checkpoint_dir_name="final",
        )


def node_memory_gb() -> float:
    """This node's GPU memory from its `cs-vram-gb` Ray node label; 1.0 when unlabelled,
    so unlabelled nodes get even shares."""
    import ray

    value = ray.get_runtime_context().get_node_labels().get(VRAM_LABEL)
    if isinstance(value, list):
        value = value[0] if value else None
    try:
        memory = float(value)
    except (TypeError, ValueError):
        return 1.0
    return memory if math.isfinite(memory) and memory > 0 else 1.0


def train_stages(
    rank: int,
    world: int,
    config: dict,
    report: Callable[[dict], None],
    *,
    device: torch.device | None = None,
    node_ip: str = "127.0.0.1",
    memory_gb: float = 1.0,
    final_report: Callable[[dict, nn.Module], None] | None = None,
) -> None:
    """Train stage `rank` of a `world`-stage pipeline in the initialised default process group.

    config: `model` (a save_pretrained folder), `dataset` (JSONL), `training` (a `Training`
    dict), `pipeline` (a `PipelineSettings` dict); optionally `stages` (checked against
    `world`), `memories_gb` (one per rank; default: each rank's `memory_gb`, gathered) and
    `dropout` (False turns the model's dropout off: with it on, no two runs draw the same
    masks, so only then do the losses match `reference_losses`).

    Every rank calls `report(metrics)` after every `eval_every` steps and after the last one,
    with the same metrics: step, loss, losses (one per step since the previous report),
    eval_loss and placement ({stage, rank, node_ip, pid, memory_gb, layers} per stage).
    """
    import torch.distributed as dist
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    training = Training.model_validate(config.get("training", {}))
    settings = PipelineSettings.model_validate(config.get("pipeline", {}))
    stages = config.get("stages") or settings.stages
    if stages is not None and stages != world:
        raise ValueError(f"the pipeline has {stages} stages but {world} workers were started")
    device = device or torch.device("cpu")
    torch.manual_seed(training.seed)

    peers: list[dict] = [{}] * world
    dist.all_gather_object(
        peers, {"rank": rank, "node_ip": node_ip, "pid": os.getpid(), "memory_gb": memory_gb}
    )
    memories = [float(m) for m in config.get("memories_gb") or [p["memory_gb"] for p in peers]]
    if len(memories) != world:
        raise ValueError(f"memories_gb has {len(memories)} entries for {world} stages")

    model = load_model(config["model"], dropout=config.get("dropout", True))
    plan = plan_stages(model.config.num_hidden_layers, memories)
    stage = Stage(model, plan[rank]).to(device)
    # The stage holds references to its own parts only: dropping the model frees the rest.
    del model
    gc.collect()
    placement = [
        {**peers[i], "stage": i, "memory_gb": memories[i], "layers": list(plan[i])}
        for i in range(world)
    ]

    train_examples, eval_examples = _examples(config["model"], config["dataset"], training)
    schedule_type = ScheduleGPipe if settings.schedule == "gpipe" else Schedule1F1B
    # Each micro-batch's loss is a token sum over the whole batch's label count, and the
    # schedule does not rescale gradients: their sum is then the full-batch per-token mean.
    schedule = schedule_type(
        PipelineStage(stage, rank, world, device),
        n_microbatches=settings.micro_batches,
        loss_fn=batch_token_loss,
        scale_grads=False,
    )
    optimizer = torch.optim.AdamW(stage.parameters(), lr=training.learning_rate)

    pending: list[float] = []  # last stage: losses since the previous report
    run = config.get("run")  # absent when a test trains stages without a run folder
    steps_log = StepsLog(RunStore.of(run)) if run and rank == world - 1 else None
    for step in range(1, training.steps + 1):
        ids, labels = batch_at(train_examples, step - 1, settings.batch_size)
        optimizer.zero_grad(set_to_none=True)
        tokens = max(1, label_count(labels))
        loss = _run(schedule, stage, ids.to(device), labels.to(device), tokens)
        optimizer.step()
        if stage.last:
            pending.append(loss)
            print(f"step {step} loss {loss:.6f}", flush=True)
            if steps_log:  # the buyer's progress view reads this file
                steps_log.add(f"{step} {loss:.8f}")
        if step % training.eval_every and step != training.steps:
            continue
        eval_loss = _evaluate(schedule, stage, eval_examples, settings.batch_size, device)
        steps_since = (step - 1) % training.eval_every + 1
        *losses, eval_loss = _from_last_stage([*pending, eval_loss], steps_since + 1, device)
        metrics = {
            "step": step,
            "loss": losses[-1],
            "losses": losses,
            "eval_loss": eval_loss,
            "placement": placement,
        }
        if step == training.steps and final_report is not None:
            final_report(metrics, stage)  # the last report carries the trained stages
        else:
            report(metrics)
        pending = []
    if steps_log:
        steps_log.flush()


def reference_losses(
    model_path: str | Path,
    dataset_path: str | Path,
    training: dict,
    batch_size: int,
    steps: int,
    *,
    dropout: bool = True,
) -> list[float]:
    """Per-step losses of the whole model trained in one process: same seed, batches, AdamW
    and learning rate as the pipeline, with the transformers model's own loss."""
    settings = Training.model_validate(training)
    torch.manual_seed(settings.seed)
    model = load_model(model_path, dropout=dropout)
    examples, _ = _examples(model_path, dataset_path, settings)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate)
    losses = []
    for step in range(steps):
        ids, labels = batch_at(examples, step, batch_size)
        optimizer.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def load_model(path: str | Path, *, dropout: bool = True) -> nn.Module:
    """The causal LM in fp32 with sdpa attention and an untied lm_head, in training mode."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path, attn_implementation="sdpa", dtype=torch.float32
    )
    if model.config.model_type not in SUPPORTED:
        raise ValueError(
            f"pipeline stages support {', '.join(SUPPORTED)} models; {path} is "
            f"{model.config.model_type!r}"
        )
    head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    if head.weight is embeddings.weight:
        # The first and the last stage live on different sellers: each needs its own copy.
        head.weight = nn.Parameter(embeddings.weight.detach().clone())
        model.config.tie_word_embeddings = False
    if not dropout:
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
            if isinstance(getattr(module, "attention_dropout", None), float):
                module.attention_dropout = 0.0  # Llama passes a float to sdpa
    return model.train()


class Stage(nn.Module):
    """One pipeline stage of a GPT-2 or Llama causal LM, holding only its parts: the
    embeddings (first stage), blocks[layers], the final norm and lm_head (last stage).

    forward: input ids (first stage) or hidden states -> hidden states, or logits (last).
    """

    def __init__(self, model: nn.Module, layers: range):
        super().__init__()
        gpt2 = model.config.model_type == "gpt2"
        base = model.transformer if gpt2 else model.model
        blocks = base.h if gpt2 else base.layers
        self.layers = layers
        self.first = layers.start == 0
        self.last = layers.stop == len(blocks)
        self.blocks = nn.ModuleList(blocks[i] for i in layers)
        self.embed_tokens = (base.wte if gpt2 else base.embed_tokens) if self.first else None
        # GPT-2 learns its positions (and drops out after embedding); Llama rotates q and k
        # in every block, from tables (buffers, not weights) each stage keeps a copy of.
        self.embed_positions = base.wpe if gpt2 and self.first else None
        self.embed_dropout = base.drop if gpt2 and self.first else None
        self.rotary = None if gpt2 else base.rotary_emb
        self.norm = (base.ln_f if gpt2 else base.norm) if self.last else None
        self.lm_head = model.lm_head if self.last else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
        hidden = self.embed_tokens(x) if self.first else x
        if self.embed_positions is not None:
            hidden = self.embed_dropout(hidden + self.embed_positions(positions))
        extra = {}
        if self.rotary is not None:
            extra["position_embeddings"] = self.rotary(hidden, positions)
        for block in self.blocks:
            # No mask: sdpa then runs causal, which is all a right-padded batch needs.
            out = block(hidden, attention_mask=None, position_ids=positions, **extra)
            hidden = out[0] if isinstance(out, tuple) else out  # tuple in some versions
        if self.last:
            hidden = self.lm_head(self.norm(hidden))
        return hidden


def batch_at(examples: list[Example], step: int, batch_size: int) -> tuple[torch.Tensor, ...]:
    """Step `step`'s (0-based) input ids and labels: the next examples in order, cycled."""
    rows = [examples[(step * batch_size + j) % len(examples)] for j in range(batch_size)]
    return (
        torch.tensor([row.input_ids for row in rows]),
        torch.tensor([row.labels for row in rows]),
    )


def label_count(labels: torch.Tensor) -> int:
    """Tokens a batch learns: labels after the shift that are not ignored."""
    return int((labels[:, 1:] != IGNORE).sum())


def batch_token_loss(logits: torch.Tensor, labels: torch.Tensor, tokens: int) -> torch.Tensor:
    """A micro-batch's share of the batch's mean next-token loss: its summed cross-entropy
    over the whole batch's `tokens`."""
    return (
        nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
            labels[:, 1:].reshape(-1),
            ignore_index=IGNORE,
            reduction="sum",
        )
        / tokens
    )


def _run(schedule, stage: Stage, ids, labels, tokens: int, *, train: bool = True) -> float:
    # The first stage feeds ids, the last scores logits against labels, middles just relay.
    args = (ids,) if stage.first else ()
    kwargs = {}
    losses: list[torch.Tensor] = []
    if stage.last:
        kwargs = {"target": labels, "losses": losses, "loss_kwargs": {"tokens": tokens}}
    (schedule.step if train else schedule.eval)(*args, **kwargs)
    return float(sum(loss.item() for loss in losses)) if stage.last else math.nan


def _from_last_stage(values: list[float], count: int, device) -> list[float]:
    """The last stage's `count` values on every rank: only it sees the losses, and every
    rank reports the same metrics."""
    import torch.distributed as dist

    world = dist.get_world_size()
    last = dist.get_rank() == world - 1
    shared = torch.tensor(values if last else [0.0] * count, dtype=torch.float64, device=device)
    dist.broadcast(shared, src=world - 1)
    return shared.tolist()


def _evaluate(schedule, stage: Stage, examples: list[Example], batch_size: int, device) -> float:
    """Mean next-token loss over (a bounded prefix of) the held-out split."""
    examples = examples[: EVAL_MAX_BATCHES * batch_size]
    # Pad to whole batches with rows that learn nothing (any token id will do): under causal
    # attention they change no other row, and they add no tokens and no loss.
    blank = Example([0] * len(examples[0].input_ids), [IGNORE] * len(examples[0].labels))
    examples = examples + [blank] * (-len(examples) % batch_size)
    batches = [batch_at(examples, i, batch_size) for i in range(len(examples) // batch_size)]
    tokens = max(1, sum(label_count(labels) for _, labels in batches))
    stage.eval()
    total = 0.0
    with torch.no_grad():
        for ids, labels in batches:
            total += _run(schedule, stage, ids.to(device), labels.to(device), tokens, train=False)
    stage.train()
    return total


def _examples(model_path, dataset_path, training: Training) -> tuple[list, list]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    records = read_jsonl(contract.dataset_file(str(dataset_path)))
    train, held_out = split(records, training.eval_fraction, training.seed)
    return (
        [encode(record, tokenizer, training.max_seq_len) for record in train],
        [encode(record, tokenizer, training.max_seq_len) for record in held_out],
    )
