"""The README's main job: a local swarm, a LoRA fine-tune on two simulated sellers, the
loss falling, the bill and the registered model version.

`computeswarm up --local`; a tiny GPT-2 built from a config and a synthetic addition task
(nothing can be downloaded), pushed as the dataset `sums@1` (each seller fetches it into
its cache); the `lora-finetune` template rendered into a job, quoted,
submitted and followed; who paid and earned what; the adapter's model version; then
`down --local` - always, even when a step fails or is interrupted.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

from computeswarm.cluster.client import CoordinatorClient
from computeswarm.cluster.local import swarm as local_swarm
from computeswarm.data.transfer import push
from computeswarm.jobs.templates import render_job_spec
from computeswarm.jobs.upload import pack_working_dir

TEMPLATE = "lora-finetune"
SETTINGS = {
    "name": "adder",
    "gpus": "RTX4090:24GB:2",
    "nodes": "2",
    "steps": "60",
    "learning_rate": "0.003",
    "max_seq_len": "16",
    "checkpoint_every": "20",
    "memory_gb": "1.5",
    "max_duration": "20m",
    "budget": "0.50",
    "dataset": "sums",  # a pushed dataset: pinned to its newest version at submit
}
_STEP = re.compile(r"step (\d+) (loss|eval_loss) ([0-9.]+)")


def prepare(folder: Path) -> tuple[Path, Path]:
    """A job folder with a model (random weights) and a dataset folder with a learnable
    signal: the data travels as a dataset version, not in the job's upload."""
    from computeswarm.jobs.train.data import synthetic_addition
    from computeswarm.jobs.train.tiny import make_tiny_model

    make_tiny_model(folder / "job" / "model", "gpt2")
    (folder / "data").mkdir()
    synthetic_addition(folder / "data" / "data.jsonl", n=800)
    return folder / "job", folder / "data"


def run_demo(sellers: int = 2, say=print) -> int:
    if local_swarm.LocalSwarm.load() is not None:
        say("removing the local swarm left by an earlier run")
        local_swarm.down(say=say)
    started = time.monotonic()
    swarm = None
    try:
        say(f"== 1. a local swarm: a coordinator and {sellers} sellers with simulated GPUs ==")
        swarm = local_swarm.up(sellers, "RTX4090:24GB:1", "0.40", "100", say=say)
        say(f"   up in {time.monotonic() - started:.0f} s; coordinator {swarm.coordinator}")
        buyer = CoordinatorClient(swarm.coordinator, swarm.buyer_key, timeout=60)

        say("\n== 2. a job: LoRA on a tiny GPT-2 (built from a config) learning addition ==")
        folder = Path(tempfile.mkdtemp(prefix="computeswarm-demo-"))
        job_folder, data = prepare(folder)
        say(f"   computeswarm datasets push {data} --name sums")
        pushed = push(buyer, data, "sums")
        v = pushed.version
        say(
            f"   {v['ref']}: {v['files']} file, {v['size_bytes']:,} bytes, id {v['id'][:12]}; "
            f"{pushed.chunks_sent} of {pushed.chunks} chunks sent"
        )
        sets = " ".join(f"{k}={v}" for k, v in SETTINGS.items())
        say(f"   computeswarm templates render {TEMPLATE} --set {sets}")
        spec, working_dir = render_job_spec(TEMPLATE, SETTINGS, job_folder)
        quote = buyer.quote(spec.model_dump(mode="json"), explain=True)
        for s in quote.get("sellers", []):
            say(
                f"   {s['seller_id']}: ask {s['ask_per_gpu_hour']} + fee = "
                f"{s['price_per_gpu_hour']} per GPU-hour"
            )
        say(f"   at most {quote.get('estimated_cost')}; escrow {quote['escrow']}")

        say("\n== 3. submit it: Ray Train + DeepSpeed ZeRO-2 + PEFT across both sellers ==")
        job = buyer.submit_job(
            spec.model_dump(mode="json"), pack_working_dir(working_dir, 16 * 2**20)
        )
        say(f"   dataset pinned: {job.get('datasets')}")
        state = _follow(buyer, job["id"], say)

        job = buyer.job(job["id"])
        metrics = (job.get("training") or {}).get("metrics") or {}
        if metrics:
            say(
                f"   held-out loss {metrics['base_eval_loss']:.3f} -> {metrics['eval_loss']:.3f}, "
                f"next-token accuracy {metrics['base_token_accuracy']:.2f} -> "
                f"{metrics['token_accuracy']:.2f}"
            )
        say("\n== 4. the bill ==")
        _bill(swarm, job, say)

        say("\n== 5. the adapter, registered as a model version ==")
        version = _registered(buyer, job["id"])
        if version:
            say(
                f"   {version['name']}@{version['version']}: base {version['base_model']}, "
                f"from checkpoint {Path(version['checkpoint']).name}, "
                f"{version['size_bytes']:,} bytes"
            )
            say(f"   computeswarm models download {version['name']}@{version['version']} --to DIR")
        return 0 if state == "succeeded" and version else 1
    finally:
        say("\n== 6. tear down ==")
        local_swarm.down(say=say)


def _follow(buyer: CoordinatorClient, job_id: str, say) -> str:
    """Show every 10th step's loss and each evaluation, as the driver logs them."""
    offset, seen, seen_reason = 0, set(), None
    while True:
        chunk = buyer.job_logs(job_id, offset)
        for line in chunk["text"].splitlines():
            found = _STEP.search(line)
            if found and found.groups() not in seen:
                seen.add(found.groups())
                step, what, value = found.groups()
                if what == "eval_loss" or int(step) % 10 == 0 or step == "1":
                    say(f"   step {step:>3} {what:<9} {float(value):.4f}")
            elif "resumed from" in line or "TrainingFailedError" in line:
                say(f"   | {line.strip()}")
        offset = chunk["offset"]
        if chunk["done"]:
            break
        job = buyer.job(job_id)
        if job["state"] != "running" and job["reason"] and job["reason"] != seen_reason:
            say(f"   [{job['state']}] {job['reason']}")
            seen_reason = job["reason"]
        time.sleep(1.0)
    job = buyer.job(job_id)
    say(f"   [{job['state']}] {job['reason']}".rstrip())
    return job["state"]


def _registered(buyer: CoordinatorClient, job_id: str) -> dict | None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ref = buyer.job(job_id).get("model_version")
        if ref:
            name, version = ref.split("@")
            return buyer.model_version(name, int(version))
        time.sleep(0.5)
    return None


def _bill(swarm, job: dict, say) -> None:
    admin = CoordinatorClient(swarm.coordinator, swarm.admin_key)
    names = {s["id"]: s["name"] for s in admin.sellers(include_left=True)}
    lease = job["lease"]
    for m in lease["members"]:
        seconds = int((m["detached_at"] or 0) - (m["attached_at"] or 0))
        say(
            f"   {names.get(m['seller_id'], m['seller_id'])}: {m['gpus']} GPU x {seconds} s "
            f"at {m['price_per_gpu_hour']}/GPU-h{' (ran the driver)' if m['driver'] else ''}"
        )
    entries = [e for e in admin.ledger()["entries"] if e["ref"] == lease["id"]]
    for e in entries:
        if e["kind"] == "settle" and not e["account"].startswith(("escrow", "buyer")):
            who = e["account"].split(":", 1)[-1]
            say(f"   {names.get(who, who):<10} earned {e['amount']}")
    say(
        f"   buyer paid {job['cost']} (escrow {lease['escrow']} held, the rest returned); "
        "every ledger transaction sums to zero"
    )
