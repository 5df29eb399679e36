"""The driver of a training job: `python -m computeswarm.jobs.train.run job.json`.

The swarm submits this as the Ray job of a `lora` or `pipeline` spec. It starts a Ray Train
`TorchTrainer` over the lease's sellers, named after the run folder so a restarted or
resubmitted run resumes from its latest complete checkpoint, and writes `result.json` with
the metrics and the checkpoint the final adapter came from (the registry reads it). The run
folder is a prefix in the object store (`jobs/run_store.py`): Ray Train uploads every
worker's checkpoint part there, and nothing depends on a disk the sellers share.
"""

from __future__ import annotations

import json
import os
import sys

from computeswarm.jobs import contract
from computeswarm.jobs.run_store import RunStore
from computeswarm.jobs.spec import LoraJob, PipelineJob
from computeswarm.jobs.train.runs import file_hash, spec_hash

MAX_FAILURES = 3  # a lost seller restarts the worker group from the last checkpoint


def worker_config(spec: LoraJob | PipelineJob, run: RunStore, init_adapter: str | None) -> dict:
    """What each Ray Train worker needs, as plain data (paths relative to the working dir)."""
    config = {
        "model": spec.model,
        "dataset": spec.dataset,
        "training": spec.training.model_dump(),
        "run": run.describe(),
    }
    if isinstance(spec, LoraJob):
        config |= {
            "lora": spec.lora.model_dump(),
            "deepspeed": spec.deepspeed.model_dump(),
            "low_bandwidth": spec.low_bandwidth.model_dump() if spec.low_bandwidth else None,
            "init_adapter": init_adapter,
        }
    else:
        config |= {"pipeline": spec.pipeline.model_dump(), "stages": spec.num_stages}
    return config


def scaling(spec: LoraJob | PipelineJob):
    from ray.train import ScalingConfig

    per_node = spec.resources.gpus_per_node
    cpus = spec.resources.cpus_per_node / per_node
    if isinstance(spec, PipelineJob):
        # One stage per seller: STRICT_SPREAD puts no two stages on one node.
        return ScalingConfig(
            num_workers=spec.num_stages,
            use_gpu=True,
            resources_per_worker={"CPU": cpus, "GPU": 1},
            placement_strategy="STRICT_SPREAD",
        )
    return ScalingConfig(
        num_workers=spec.num_workers,
        use_gpu=True,  # the leased GPU, even where a simulated seller's "GPU" is its CPU
        resources_per_worker={"CPU": cpus, "GPU": 1},
        placement_strategy="SPREAD",
    )


def main(argv: list[str]) -> int:
    import torch
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    # Workers stay in the job's working dir, where the model and dataset paths point
    # (Ray Train would otherwise move them into its run folder).
    os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"
    spec = contract.read_spec(argv[1])
    run = RunStore.from_env()
    init_adapter = os.environ.get(contract.INIT_ADAPTER) or None
    if isinstance(spec, LoraJob):
        from computeswarm.jobs.train.lora import train_lora_worker as loop
    else:
        from computeswarm.jobs.train.pipeline import train_pipeline_worker as loop
    import ray

    # Attach to this seller's own node (see cluster.ray_nodes.seller_node_env).
    if not ray.is_initialized():
        ray.init(_node_ip_address=os.environ.get(contract.NODE_IP))
    cuda = torch.cuda.is_available()
    trainer = TorchTrainer(
        loop,
        train_loop_config=worker_config(spec, run, init_adapter),
        scaling_config=scaling(spec),
        torch_config=TorchConfig(backend="nccl" if cuda else "gloo"),
        run_config=RunConfig(
            name=run.name,
            storage_path=run.parent,
            storage_filesystem=run.fs,
            failure_config=FailureConfig(max_failures=MAX_FAILURES),
            checkpoint_config=CheckpointConfig(num_to_keep=3),
            worker_runtime_env={"env_vars": {"DS_ACCELERATOR": "cuda" if cuda else "cpu"}},
        ),
    )
    result = trainer.fit()
    # Names inside the run folder: the coordinator resolves them against its own record
    # of where the run lives, never against a path a driver claims.
    checkpoint = _basename(result.checkpoint.path) if result.checkpoint else None
    outcome = {
        "kind": spec.kind,
        "base_model": spec.model,
        "metrics": _plain(result.metrics or {}),
        "checkpoint": checkpoint,
        "adapter": f"{checkpoint}/adapter" if checkpoint and spec.kind == "lora" else None,
        "spec_hash": spec_hash(spec.model_dump(mode="json")),
        "data_hash": file_hash(contract.dataset_file(spec.dataset)),
        "init_adapter": init_adapter,
    }
    run.write_text(contract.RESULT_FILE, json.dumps(outcome, indent=2))
    print(f"training finished: {json.dumps(outcome['metrics'])}", flush=True)
    return 0


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _plain(metrics: dict) -> dict:
    """The JSON-safe part of Ray Train's last report (placement lists included)."""
    out = {}
    for key, value in metrics.items():
        try:
            json.dumps(value)
        except TypeError:
            continue
        out[key] = value
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv))
