"""GPU check for the `lora` workload: a few steps on real GPUs (NCCL, bf16), step time.

For a session lent a device machine (`make gpu-check`; not in CI): a one-node Ray cluster
with the machine's GPUs, the production driver (`jobs.train.run.main`) around
`train_lora_worker` - DeepSpeed ZeRO-2 on NCCL with bf16, PEFT LoRA - on a small GPT-2-style
model built from a config, then the median step time and tokens/s. Without CUDA it says so
and exits 0: this machine class has no GPU.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("gpu_lora: no CUDA device here; skipped (run it on a machine with a GPU)")
        return 0
    import ray

    from computeswarm.jobs.spec import parse_job_spec
    from computeswarm.jobs.train import run
    from computeswarm.jobs.train.data import synthetic_addition
    from computeswarm.jobs.train.tiny import make_tiny_model

    gpus = torch.cuda.device_count()
    folder = Path(tempfile.mkdtemp(prefix="cs-gpu-lora-"))
    make_tiny_model(folder / "model", "gpt2", layers=12, width=768)  # GPT-2 small's shape
    synthetic_addition(folder / "data.jsonl", n=20000)
    steps, micro, seq = 30, 32, 64
    spec = parse_job_spec(
        {
            "kind": "lora",
            "name": "gpu-check",
            "model": "model",
            "dataset": "data.jsonl",
            "runtime_env": {"working_dir": "."},
            "resources": {"gpus": f"any:{gpus}", "nodes": 1, "cpus_per_node": 4},
            "pricing": {"max_price_per_gpu_hour": "1"},
            "training": {"steps": steps, "max_seq_len": seq, "eval_every": steps,
                         "checkpoint_every": steps},
            "deepspeed": {"zero_stage": 2, "micro_batch": micro},
        }
    )  # fmt: skip
    os.chdir(folder)
    (folder / "job.json").write_text(spec.model_dump_json())
    os.environ["COMPUTESWARM_RUN_DIR"] = str(folder / "runs" / "gpu-check")
    ray.init(num_cpus=4 * gpus, num_gpus=gpus, runtime_env={"working_dir": str(folder)})
    started = time.monotonic()
    try:
        run.main(["run", "job.json"])
    finally:
        ray.shutdown()
    lines = (folder / "runs" / "gpu-check" / "steps.log").read_text().splitlines()
    times = [float(line.split()[2]) for line in lines[5:]]  # past warm-up
    result = json.loads((folder / "runs" / "gpu-check" / "result.json").read_text())
    print(f"gpu_lora: {gpus} x {torch.cuda.get_device_name(0)}, NCCL, bf16, ZeRO-2")
    step_s = statistics.median(times)
    print(f"  {len(lines)} steps in {time.monotonic() - started:.1f} s (incl. start-up)")
    print(f"  median step {step_s * 1000:.1f} ms, {gpus * micro * seq / step_s:,.0f} tokens/s")
    print(f"  eval loss {result['metrics']['base_eval_loss']:.3f} -> "
          f"{result['metrics']['eval_loss']:.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
