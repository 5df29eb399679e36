"""What one sweep trial runs: a LoRA fine-tune (`train_lora_trial`) or a user's function
(`run_function_trial`), as Ray Tune function trainables.

A LoRA trial is one process on one (leased) GPU, or the CPU. Every `eval_every` steps and
at the last step it evaluates, saves a checkpoint folder (`adapter/`, `optimizer.pt` with
the optimizer and RNG states, `state.json`) and reports it with its metrics. Batches are a
pure function of the step, so a trial restored from its checkpoint continues the same data
order with the same optimizer state. `trial_seconds` in every report is the trial's wall
time so far, counting the time spent before a restore (saved in `state.json`): the sweep
bills a trial by it.

Heavy imports (torch, transformers, peft) happen inside the trial process only.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

from computeswarm.data.refs import is_dataset_ref
from computeswarm.jobs import contract
from computeswarm.jobs.run_store import RunStore
from computeswarm.tune.records import read_trial

STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"
ADAPTER_DIR = "adapter"


def reports_per_trial(steps: int, eval_every: int) -> int:
    """How many times a full LoRA trial reports: every `eval_every` steps and at the last."""
    return steps // eval_every + (1 if steps % eval_every else 0)


def train_lora_trial(config: dict) -> None:
    """Tune trainable. `config` = {"trial": the applied `trial.lora` settings (model and
    dataset paths made absolute by the driver), "params": this trial's sampled values,
    "index": its plan position, "max_iterations": its planned reports, "run": the
    sweep's run folder (`RunStore.describe()`), "workdir": the driver's working dir}."""
    started = time.monotonic()
    if _already_finished(config):
        return
    import ray.tune
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from computeswarm.jobs.train.data import IGNORE, encode, read_jsonl, split
    from computeswarm.jobs.train.lora import evaluate, lora_targets, micro_batch, total_steps

    torch.set_num_threads(1)  # several trials share a seller's cores
    trial = config["trial"]
    training, lora, size = trial["training"], trial["lora"], trial["micro_batch"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(training["seed"])  # the same adapter init on a restart

    model_path = str(resolve(trial["model"], config.get("workdir")))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    base = AutoModelForCausalLM.from_pretrained(model_path, attn_implementation="sdpa")
    targets, fan_in_fan_out = lora_targets(base.config.model_type, lora["target_modules"])
    model = get_peft_model(
        base,
        LoraConfig(
            r=lora["rank"],
            lora_alpha=lora["alpha"],
            lora_dropout=lora["dropout"],
            target_modules=targets,
            fan_in_fan_out=fan_in_fan_out,  # GPT-2's Conv1D weights are (in, out)
            task_type="CAUSAL_LM",
        ),
    ).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=training["learning_rate"])

    dataset = trial["dataset"]
    if is_dataset_ref(dataset):  # a stored version, in the folder this node's agent fetched
        records = read_jsonl(contract.dataset_file(dataset))
    else:
        records = read_jsonl(resolve(dataset, config.get("workdir")))
    train_records, eval_records = split(records, training["eval_fraction"], training["seed"])
    length = training["max_seq_len"]
    shard = [encode(r, tokenizer, length) for r in train_records]
    eval_shard = [encode(r, tokenizer, length) for r in eval_records]
    steps = total_steps(training, len(train_records), 1, size, 1)

    step, before = 0, 0.0  # `before`: trial seconds spent before this (re)start
    checkpoint = ray.tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            folder = Path(folder)
            state = json.loads((folder / STATE_FILE).read_text())
            weights = load_file(str(folder / ADAPTER_DIR / "adapter_model.safetensors"))
            set_peft_model_state_dict(model, weights)
            saved = torch.load(folder / OPTIMIZER_FILE, map_location=device)
            optimizer.load_state_dict(saved["optimizer"])
            torch.set_rng_state(saved["rng"].cpu())  # the same dropout masks as without a stop
            if saved.get("cuda_rng") is not None and device.type == "cuda":
                torch.cuda.set_rng_state(saved["cuda_rng"].cpu())
        step, before = state["step"], state["trial_seconds"]
        print(f"trial resumed from its checkpoint at step {step}", flush=True)

    model.train()
    losses: list[float] = []
    while step < steps:
        batch = micro_batch(shard, step, 0, 1, size)
        ids = torch.tensor([e.input_ids for e in batch], device=device)
        labels = torch.tensor([e.labels for e in batch], device=device)
        logits = model(input_ids=ids).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=IGNORE
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        step += 1
        if step % training["eval_every"] and step != steps:
            continue
        metrics = {
            "step": step,
            "loss": sum(losses) / len(losses),
            **evaluate(model, eval_shard, size, device),
        }
        losses = []
        metrics["trial_seconds"] = before + (time.monotonic() - started)
        with tempfile.TemporaryDirectory() as folder:
            folder = Path(folder)
            model.save_pretrained(folder / ADAPTER_DIR)
            saved = {
                "optimizer": optimizer.state_dict(),
                "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state() if device.type == "cuda" else None,
            }
            torch.save(saved, folder / OPTIMIZER_FILE)
            state = {"step": step, "trial_seconds": metrics["trial_seconds"]}
            (folder / STATE_FILE).write_text(json.dumps(state))
            ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(folder))


def run_function_trial(config: dict) -> None:
    """Tune trainable for `trial.function: "file.py:func"`: calls the user's function with
    `{**trial.config, **params}`; it reports with `ray.tune.report` itself."""
    if _already_finished(config):
        return
    function = load_function(config["function"], config.get("workdir"))
    function({**config["fixed"], **config["params"]})


def load_function(ref: str, workdir: str | None = None):
    """`"train.py:train"` → the function, imported from the file (relative to the working
    dir; the file's folder goes on `sys.path` so it can import its neighbours)."""
    file, _, name = ref.rpartition(":")
    if not file or not name:
        raise ValueError(f"{ref!r} is not FILE.py:FUNCTION")
    path = resolve(file, workdir)
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(f"_sweep_trial_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"{file}: not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    function = getattr(module, name, None)
    if not callable(function):
        raise ValueError(f"{file} has no function {name!r}")
    return function


def resolve(path: str, workdir: str | None = None) -> Path:
    """A model/dataset/function path for this process. The driver made it absolute (under
    its working dir `workdir`), which holds where that folder is shared; on a node with its
    own copy of the job's working dir (Ray's runtime_env), the same relative path under this
    process's cwd."""
    candidate = Path(path)
    if candidate.exists():
        return candidate
    if not candidate.is_absolute():  # not here: maybe a hub id already in the cache
        shared = Path(workdir or Path.cwd()) / candidate
        return shared if shared.exists() else candidate
    if workdir and candidate.is_relative_to(workdir):
        local = Path.cwd() / candidate.relative_to(workdir)
        if local.exists():
            return local
    return candidate


def _already_finished(config: dict) -> bool:
    """True if this trial's record says it already ended normally. After a driver crash,
    Tune can restore a trial that finished after its last experiment snapshot: it must not
    train again (an ASHA-stopped trial would otherwise continue past its stop). Errored
    trials are not "finished": a restored sweep resumes them."""
    if not config.get("run"):
        return False
    import ray.tune

    record = read_trial(RunStore.of(config["run"]), ray.tune.get_context().get_trial_id())
    return record is not None and record.done
