"""The README's main job: a local swarm, a real job on two simulated sellers, the bill.

`computeswarm up --local`, then the example from configs/ (quoted, submitted, its logs
followed), then who paid and who earned what, then `down --local` - always, even when a
step fails or is interrupted.
"""

from __future__ import annotations

import time
from pathlib import Path

import computeswarm.configs
from computeswarm.cluster import local_swarm
from computeswarm.cluster.client import CoordinatorClient
from computeswarm.jobs.spec import load_job_spec
from computeswarm.jobs.upload import pack_working_dir

EXAMPLE = Path(computeswarm.configs.__file__).parent / "examples" / "hello-swarm" / "job.yaml"


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
        spec, working_dir = load_job_spec(EXAMPLE)

        say(f"\n== 2. what the market would do with {EXAMPLE.name} ({spec.name}) ==")
        quote = buyer.quote(spec.model_dump(mode="json"), explain=True)
        for s in quote.get("sellers", []):
            say(
                f"   {s['seller_id']}: ask {s['ask_per_gpu_hour']} + fee = "
                f"{s['price_per_gpu_hour']} per GPU-hour"
            )
        say(
            f"   at most {quote.get('estimated_cost')} for the whole max_duration; "
            f"escrow {quote['escrow']}"
        )

        say("\n== 3. submit it and follow its logs ==")
        job = buyer.submit_job(
            spec.model_dump(mode="json"), pack_working_dir(working_dir, 16 * 2**20)
        )
        state = _follow(buyer, job["id"], say)

        say("\n== 4. the bill ==")
        _bill(swarm, buyer.job(job["id"]), say)
        return 0 if state == "succeeded" else 1
    finally:
        say("\n== 5. tear down ==")
        local_swarm.down(say=say)


def _follow(buyer: CoordinatorClient, job_id: str, say) -> str:
    offset, seen_reason = 0, None
    while True:
        chunk = buyer.job_logs(job_id, offset)
        for line in chunk["text"].splitlines():
            if "\tINFO " not in line:  # Ray's own chatter stays out of the demo
                say(f"   | {line}")
        offset = chunk["offset"]
        if chunk["done"]:
            break
        job = buyer.job(job_id)
        if job["state"] != "running" and job["reason"] and job["reason"] != seen_reason:
            say(f"   [{job['state']}] {job['reason']}")
            seen_reason = job["reason"]
        time.sleep(0.5)
    job = buyer.job(job_id)
    say(f"   [{job['state']}] {job['reason']}".rstrip())
    return job["state"]


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
