"""LoRA fine-tuning on a lease: one Ray Train worker per leased GPU, DeepSpeed ZeRO-2/3
around a PEFT model, or local SGD in low-bandwidth mode.

Only the adapter trains, so only adapter gradients cross the WAN. Full-sync mode lets
DeepSpeed reduce them every optimizer step (gradient accumulation makes those steps rarer);
low-bandwidth mode trains each seller alone and averages the adapters every H steps.

A checkpoint folder holds `state.json` (step, base metrics), `adapter/` (PEFT files) and
the optimizer: DeepSpeed's shards under `ds/`, or `optim-rank{r}.pt` per rank. Every rank
reports its part and Ray Train uploads it to the run folder in the object store; it
registers the checkpoint only when all parts are uploaded, and rank 0 then writes its
`COMPLETE` marker, so a restart (on any seller) never resumes from a partial one.
Batches are a pure function of the step, so a resumed run continues the same data order
and never redoes a checkpointed step.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path

from computeswarm.jobs import artifacts, contract
from computeswarm.jobs.run_store import RunStore, StepsLog
from computeswarm.jobs.train.data import IGNORE, encode, read_jsonl, split
from computeswarm.jobs.train.runs import ring_allreduce_bytes

COMPLETE = "COMPLETE"
EVENTS_LOG = "events.log"  # "resumed <step> <checkpoint>" per restart
# Attention and MLP projections: a random or small base needs both to learn anything.
TARGETS = {
    "gpt2": (["c_attn", "c_proj", "c_fc"], True),  # Conv1D weights are (in, out)
    "llama": (["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], False),
    "mistral": (["q_proj", "k_proj", "v_proj", "o_proj"], False),
    "qwen2": (["q_proj", "k_proj", "v_proj", "o_proj"], False),
}


def lora_targets(model_type: str, chosen: list[str] | None) -> tuple[list[str], bool]:
    modules, fan_in_fan_out = TARGETS.get(model_type, (["q_proj", "v_proj"], False))
    return (chosen or modules), fan_in_fan_out


def deepspeed_config(ds: dict, learning_rate: float, cuda: bool) -> dict:
    return {
        "train_micro_batch_size_per_gpu": ds["micro_batch"],
        "gradient_accumulation_steps": ds["gradient_accumulation"],
        "zero_optimization": {"stage": ds["zero_stage"]},
        "optimizer": {"type": "AdamW", "params": {"lr": learning_rate, "torch_adam": True}},
        "gradient_clipping": 1.0,
        "bf16": {"enabled": cuda},
        "steps_per_print": 10**9,
    }


def sync_bytes_per_step(trainable_bytes: int, world: int, sync_every: int | None) -> float:
    """Bytes each worker sends per optimizer step: every step (full sync) or every H."""
    return ring_allreduce_bytes(trainable_bytes, world) / (sync_every or 1)


def total_steps(training: dict, train_size: int, world: int, size: int, accumulation: int) -> int:
    """`steps`, or enough optimizer steps for `epochs` passes over the training split (the
    same number on every rank: it depends on the whole split, not a rank's shard)."""
    if not training.get("epochs"):
        return training["steps"]
    per_step = world * size * accumulation
    return max(1, math.ceil(training["epochs"] * train_size / per_step))


def micro_batch(shard: list, step: int, micro: int, accumulation: int, size: int) -> list:
    """The samples of one micro-step: a pure function of the step (resumes continue it)."""
    start = ((step * accumulation + micro) * size) % len(shard)
    return [shard[(start + i) % len(shard)] for i in range(size)]


def train_lora_worker(config: dict) -> None:
    """Ray Train's per-worker loop. `config` comes from `run.worker_config`."""
    cuda = _cpu_or_cuda()
    import ray.train
    import torch
    import torch.distributed as dist
    from peft import LoraConfig, PeftModel, get_peft_model
    from ray.train import Checkpoint
    from transformers import AutoModelForCausalLM, AutoTokenizer

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    training, ds = config["training"], config["deepspeed"]
    torch.manual_seed(training["seed"])
    local = config.get("low_bandwidth")

    tokenizer = AutoTokenizer.from_pretrained(config["model"])
    base = AutoModelForCausalLM.from_pretrained(config["model"], attn_implementation="sdpa")
    if config.get("init_adapter"):  # a registered version: fetched onto this worker's node
        init = str(artifacts.local_folder(config["init_adapter"]))
        model = PeftModel.from_pretrained(base, init, is_trainable=True)
    else:
        lora = config["lora"]
        targets, fan_in_fan_out = lora_targets(base.config.model_type, lora["target_modules"])
        model = get_peft_model(
            base,
            LoraConfig(
                r=lora["rank"],
                lora_alpha=lora["alpha"],
                lora_dropout=lora["dropout"],
                target_modules=targets,
                fan_in_fan_out=fan_in_fan_out,
                task_type="CAUSAL_LM",
            ),
        )
    trainable = [p for p in model.parameters() if p.requires_grad]
    trainable_bytes = sum(p.numel() * p.element_size() for p in trainable)

    records = read_jsonl(contract.dataset_file(config["dataset"]))
    train_records, eval_records = split(records, training["eval_fraction"], training["seed"])
    length = training["max_seq_len"]
    shard = [encode(r, tokenizer, length) for r in train_records[rank::world]]
    eval_shard = [encode(r, tokenizer, length) for r in eval_records[rank::world]]

    if local:
        engine = None
        optimizer = torch.optim.AdamW(trainable, lr=training["learning_rate"])
        forward = model
    else:
        import deepspeed

        engine, optimizer, _, _ = deepspeed.initialize(
            model=model,
            model_parameters=trainable,
            config=deepspeed_config(ds, training["learning_rate"], cuda),
        )
        forward = engine

    step, base_metrics = 0, None
    run = RunStore.of(config["run"])
    name = latest_complete_checkpoint(run, ray.train.get_checkpoint())
    restored = tempfile.TemporaryDirectory() if name else None
    if name:
        folder = run.download(name, Path(restored.name))  # the store's copy, on this node
        state = json.loads((Path(folder) / "state.json").read_text())
        step, base_metrics = state["step"], state["base"]
        if engine is not None:
            engine.load_checkpoint(str(Path(folder) / "ds"), tag="ckpt")
        else:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            weights = load_file(str(Path(folder) / "adapter" / "adapter_model.safetensors"))
            set_peft_model_state_dict(model, weights)
            optimizer.load_state_dict(torch.load(Path(folder) / f"optim-rank{rank}.pt"))
        _say(rank, f"resumed from the checkpoint at step {step}")
        restored.cleanup()
        if rank == 0:  # a record that outlives log streaming: tests and operators read it
            run.append_text(EVENTS_LOG, f"resumed {step} {name}\n")
    if base_metrics is None:
        base_metrics = evaluate(forward, eval_shard, ds["micro_batch"])
        _say(rank, f"base eval_loss {base_metrics['eval_loss']:.4f}")

    def loss_of(batch) -> torch.Tensor:
        ids = torch.tensor([e.input_ids for e in batch])
        labels = torch.tensor([e.labels for e in batch])
        logits = forward(input_ids=ids).logits[:, :-1].float()
        return torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=IGNORE
        )

    steps_log = StepsLog(run) if rank == 0 else None
    sync_every = local["sync_every"] if local else None
    per_step = sync_bytes_per_step(trainable_bytes, world, sync_every)
    accumulation, size = ds["gradient_accumulation"], ds["micro_batch"]
    steps = total_steps(training, len(train_records), world, size, accumulation)
    _say(rank, f"training {steps} steps on {world} workers")
    while step < steps:
        started = time.perf_counter()
        losses = []
        for micro in range(accumulation):
            loss = loss_of(micro_batch(shard, step, micro, accumulation, size))
            if engine is not None:
                engine.backward(loss)
                engine.step()  # DeepSpeed steps the optimizer at the accumulation boundary
            else:
                (loss / accumulation).backward()
            losses.append(loss.item())
        if engine is None:
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            optimizer.zero_grad()
        step += 1
        if local and world > 1 and step % sync_every == 0:
            _average(trainable, world)  # local SGD: average the adapters, not the gradients
        mean = sum(losses) / len(losses)
        if rank == 0:
            elapsed = time.perf_counter() - started
            steps_log.add(f"{step} {mean:.6f} {elapsed:.4f}")  # progress and benchmarks
            _say(rank, f"step {step} loss {mean:.4f} ({elapsed:.2f} s)")
        metrics = {
            "step": step,
            "loss": mean,
            "sync_bytes_per_step": per_step,
            **_base(base_metrics),
        }
        last = step == steps
        if step % training["eval_every"] == 0 or last:
            metrics.update(evaluate(forward, eval_shard, size))
            if rank == 0:
                _say(
                    rank,
                    f"step {step} eval_loss {metrics['eval_loss']:.4f} "
                    f"token_accuracy {metrics['token_accuracy']:.3f}",
                )
        if step % training["checkpoint_every"] == 0 or last:
            if local and world > 1 and step % sync_every:
                _average(trainable, world)  # a checkpoint holds one adapter: average first
            if steps_log:
                steps_log.flush()  # every step up to a checkpoint is on record
            began = time.perf_counter()
            with tempfile.TemporaryDirectory() as folder:
                _save(folder, rank, step, base_metrics, model, engine, optimizer)
                saved = time.perf_counter()
                ray.train.report(
                    metrics,
                    checkpoint=Checkpoint.from_directory(folder),
                    checkpoint_dir_name=checkpoint_name(step),
                )
            reported = time.perf_counter()
            # Every rank's part is uploaded once its report returns: after a barrier, mark
            # the folder complete. A restart trusts only marked folders.
            if dist.is_initialized():
                dist.barrier()
            if rank == 0:
                mark_complete(run, checkpoint_name(step), step, world)
            _say(  # every rank: the slowest one is what a checkpoint costs the run
                rank,
                f"checkpoint {step}: saved {saved - began:.2f} s, uploaded "
                f"{reported - saved:.2f} s, all ranks {time.perf_counter() - reported:.2f} s",
                every=True,
            )
        elif "eval_loss" in metrics:
            ray.train.report(metrics)
    if steps_log:
        steps_log.flush()


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def mark_complete(run: RunStore, name: str, step: int, world: int) -> None:
    """One whole object (or file): a marker is there entirely or not at all."""
    run.write_text(f"{name}/{COMPLETE}", json.dumps({"step": step, "world": world}))


def latest_complete_checkpoint(run: RunStore, registered) -> str | None:
    """The newest checkpoint folder to resume from, by name: the one Ray Train registered,
    or a newer one every rank finished (Ray's controller can die before it registers one).
    Folders without the completion marker are partial and never used."""
    candidates = [
        name for name in run.listdir() if name.startswith("step-") and COMPLETE in run.listdir(name)
    ]
    if registered is not None:
        candidates.append(registered.path.rstrip("/").rsplit("/", 1)[-1])
    return max(candidates, default=None)


def _save(folder, rank, step, base_metrics, model, engine, optimizer) -> None:
    import torch

    folder = Path(folder)
    if engine is not None:
        engine.save_checkpoint(str(folder / "ds"), tag="ckpt")  # every rank writes its shard
        if engine.zero_optimization_stage() == 3:
            import deepspeed

            trainable = [p for p in model.parameters() if p.requires_grad]
            with deepspeed.zero.GatheredParameters(trainable):  # collective: all ranks
                if rank == 0:
                    model.save_pretrained(folder / "adapter")
        elif rank == 0:
            model.save_pretrained(folder / "adapter")
    else:
        torch.save(optimizer.state_dict(), folder / f"optim-rank{rank}.pt")
        if rank == 0:
            model.save_pretrained(folder / "adapter")
    if rank == 0:
        (folder / "state.json").write_text(json.dumps({"step": step, "base": base_metrics}))


def _average(params: list, world: int) -> None:
    """Every rank's parameters replaced by their mean across the ranks."""
    import torch
    import torch.distributed as dist

    with torch.no_grad():
        for p in params:
            dist.all_reduce(p.data)
            p.data /= world


def evaluate(forward, examples: list, size: int, device=None) -> dict:
    """Loss and next-token accuracy on the held-out labels, summed over all ranks when
    training is distributed (a sweep trial is one process: nothing to sum there)."""
    import torch
    import torch.distributed as dist

    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, tokens
    was_training = forward.training
    forward.eval()
    with torch.no_grad():
        for start in range(0, len(examples), size):
            batch = examples[start : start + size]
            ids = torch.tensor([e.input_ids for e in batch], device=device)
            labels = torch.tensor([e.labels for e in batch], device=device)[:, 1:]
            logits = forward(input_ids=ids).logits[:, :-1].float()
            mask = labels != IGNORE
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)),
                labels.reshape(-1),
                ignore_index=IGNORE,
                reduction="sum",
            )
            totals += torch.tensor(
                [
                    loss.item(),
                    (logits.argmax(-1)[mask] == labels[mask]).sum().item(),
                    mask.sum().item(),
                ],
                dtype=torch.float64,
            )
    if dist.is_initialized():
        dist.all_reduce(totals)
    forward.train(was_training)
    tokens = max(totals[2].item(), 1.0)
    return {"eval_loss": totals[0].item() / tokens, "token_accuracy": totals[1].item() / tokens}


def _base(base_metrics: dict) -> dict:
    return {f"base_{k}": v for k, v in base_metrics.items()}


def _cpu_or_cuda() -> bool:
    """DeepSpeed picks its accelerator at import: tell it before anything imports it."""
    import torch

    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return cuda


def _say(rank: int, text: str, every: bool = False) -> None:
    if rank == 0 or every:
        print(text if rank == 0 else f"rank {rank}: {text}", flush=True)
