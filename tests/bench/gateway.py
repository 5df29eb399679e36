"""Benchmark: the inference gateway's throughput and p50/p99 latency vs calling Ray Serve directly.

Brings up a local swarm (`computeswarm.cluster.local.swarm.up`: a coordinator and one
simulated seller with one RTX4090, on testbed namespaces joined by real WireGuard when root,
loopback otherwise) and submits a `serve` job: a tiny GPT-2 (`make_tiny_model`, 2 layers,
width 32) with one LoRA adapter ("adder", random B), one replica (min = max, so autoscaling
cannot change the replica count between rounds), `max_concurrent_requests` >= the
concurrency and rate limits far above anything the benchmark sends (the limiter never
refuses). Once the job says `serve.ready`, the same completion request
(`{"model": "adder", "prompt": "12+34=", "max_tokens": 4, "temperature": 0}`) goes to two
targets:

    gateway   http://<coordinator>/v1/serve/<job>/v1/completions, the buyer's key as bearer
    direct    http://<hub overlay IP>:<lease port block's serve port>/v1/completions: Ray
              Serve's own HTTP proxy on the lease head, the gateway's upstream

The direct URL is the `url` the job's Serve driver (`computeswarm.serve.run`) wrote to its
`serve.json` in the coordinator's job storage (`<state>/head/storage/<account>/serve/<job>/`,
the file the coordinator reads `serve.ready` from): the proxy's own statement of where it
listens, built from the same head IP and `PortBlock(lease.port_base).serve` the gateway's
target is. It is read, never written, and nothing is added to the product to expose it.

The Serve proxy is bound to the hub's overlay address, reachable only inside the hub's
network namespace (where the coordinator runs), so the load generator runs there for both
targets (`ip netns exec cs-<run>-hub`, as the coordinator's own client): the two paths differ
by the gateway hop only. It is one asyncio + httpx process with one keep-alive client per
target (as many connections as the concurrency): a warm-up of each target first, then
`--rounds` rounds (3) of `--requests` requests (200) at `--concurrency` (8), per target,
the order of the targets alternating by round. Per round and target: every request's
latency (send -> whole response read) and the round's wall time; throughput = requests /
wall time, p50 and p99 by nearest rank. Ratios (gateway / direct) are taken within a round,
then the median over rounds; absolute figures are medians too. Every request must answer
200 with the same text on both targets, and the job's `serve.requests` must grow by exactly
the number of requests sent through the gateway (warm-up included): every gateway request
metered, none of the direct ones.

This machine has no GPU: the replica generates on CPU, and every process of the swarm and
the load generator share this machine's cores, so read the ratios as this box's.

The job is cancelled and the swarm removed (`local_swarm.down()`) whatever happens, then the
run checks that no namespace or process of it is left. State lives in temporary directories
(`COMPUTESWARM_HOME`, `COMPUTESWARM_LOCAL_DIR`), removed unless the run fails. `make bench`
runs it; CI does not:

    .venv/bin/python -m computeswarm.tests.bench.gateway [--requests N] [--concurrency C]
        [--rounds R]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from computeswarm.tests.bench.leftovers import swarm_leftovers

GPUS = "RTX4090:24GB:1"
MAX_TOKENS = 4
ADAPTER = "adder"
BODY = {"model": ADAPTER, "prompt": "12+34=", "max_tokens": MAX_TOKENS, "temperature": 0}
TARGETS = ("gateway", "direct")
RAY_TMP = Path("/tmp/cs-ray")  # where lease heads and worker nodes keep their Ray files

# Runs inside the hub's namespace: the load generator, for both targets.
CLIENT = r"""
import asyncio, json, sys, time
import httpx

a = json.loads(sys.stdin.read())


def say(text):
    print(text, file=sys.stderr, flush=True)


async def load(http, url, n):
    latencies, codes, texts = [], {}, set()
    pending = iter(range(n))

    async def worker():
        for _ in pending:  # one iterator shared by the workers: n requests in all
            start = time.perf_counter()
            try:
                r = await http.post(url, json=a["body"])
                code = str(r.status_code)
                if r.status_code == 200:
                    texts.add(r.json()["choices"][0]["text"])
            except httpx.HTTPError as exc:
                code = type(exc).__name__
            latencies.append(time.perf_counter() - start)
            codes[code] = codes.get(code, 0) + 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(a["concurrency"])))
    wall = time.perf_counter() - start
    return {"latencies": latencies, "wall_s": wall, "codes": codes, "texts": sorted(texts)}


async def main():
    c = a["concurrency"]
    limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
    clients = {
        name: httpx.AsyncClient(headers=t["headers"], timeout=a["timeout"], limits=limits)
        for name, t in a["targets"].items()
    }
    out = {"warmup": {}, "rounds": []}
    try:
        for name, t in a["targets"].items():
            got = await load(clients[name], t["url"], a["warmup"])
            out["warmup"][name] = {k: got[k] for k in ("codes", "texts")}
            say(f"warm-up {name}: {got['codes']} in {got['wall_s']:.1f} s")
        for i in range(a["rounds"]):
            order = list(a["targets"]) if i % 2 == 0 else list(a["targets"])[::-1]
            this = {}
            for name in order:
                this[name] = await load(clients[name], a["targets"][name]["url"], a["requests"])
                got = this[name]
                say(
                    f"round {i + 1}/{a['rounds']} {name}: {a['requests'] / got['wall_s']:.1f}"
                    f" req/s, {got['codes']}"
                )
            out["rounds"].append({"order": order, **this})
    finally:
        for client in clients.values():
            await client.aclose()
    print(json.dumps(out), flush=True)


asyncio.run(main())
"""


@dataclass
class Load:
    """One target's figures in one round."""

    throughput: float  # requests / wall time, req/s
    p50_s: float
    p99_s: float
    mean_s: float


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="per target per round")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=0, help="per target (0: 2 x concurrency)")
    parser.add_argument("--timeout", type=float, default=60, help="seconds per request")
    args = parser.parse_args()
    if not 1 <= args.concurrency <= 1024:
        parser.error("--concurrency must be between 1 and 1024 (max_concurrent_requests)")
    if args.requests < args.concurrency or args.rounds < 1:
        parser.error("--requests must be at least --concurrency, --rounds at least 1")
    args.warmup = args.warmup or 2 * args.concurrency

    home = Path(tempfile.mkdtemp(prefix="cs-bench-home-"))
    local = Path(tempfile.mkdtemp(prefix="cs-bench-local-"))
    os.environ["COMPUTESWARM_HOME"] = str(home)
    os.environ["COMPUTESWARM_LOCAL_DIR"] = str(local / "swarm")
    from computeswarm.cluster.local import swarm as local_swarm

    began = time.monotonic()
    swarm = None
    leases: list[str] = []
    result = None
    ok = False
    try:
        swarm = local_swarm.up(sellers=1, gpus=GPUS, price="0.40", deposit="50", say=_say)
        setup_s = time.monotonic() - began
        result = _bench(swarm, local / "job", args, leases)
        result["setup_s"] = setup_s
        ok = True
    finally:
        if swarm is not None or local_swarm.LocalSwarm.load() is not None:
            local_swarm.down(say=_say)
        run_id = swarm.run_id if swarm else None
        leftovers = swarm_leftovers(str(local), run_id, leases)
        if ok and not leftovers:
            shutil.rmtree(home, ignore_errors=True)
            shutil.rmtree(local, ignore_errors=True)
            for lease in leases:
                for path in RAY_TMP.glob(f"{lease}*"):
                    shutil.rmtree(path, ignore_errors=True)
        else:
            for leftover in leftovers:
                _say(f"LEFTOVER after down(): {leftover}")
            _say(f"kept the swarm's files for a look: {local}")
    result["total_s"] = time.monotonic() - began
    _report(swarm, args, result)
    if leftovers:
        print("LEFTOVERS after down():\n  " + "\n  ".join(leftovers))
        sys.exit(1)
    print("leftovers after down(): none (no namespace, no process of this run)")


def _bench(swarm, folder: Path, args: argparse.Namespace, leases: list[str]) -> dict:
    """Submit the serve job, load both targets from the hub's namespace, cancel the job."""
    from computeswarm.cluster.client import CoordinatorClient
    from computeswarm.jobs.upload import pack_working_dir

    _make_models(folder)
    spec = {
        "kind": "serve",
        "name": "bench-gateway",
        "runtime_env": {"working_dir": "."},
        "model": "tiny-gpt2",
        "adapters": {ADAPTER: f"./adapters/{ADAPTER}"},
        "replicas": {"min": 1, "max": 1},
        "max_concurrent_requests": max(8, args.concurrency),
        "max_tokens": MAX_TOKENS,
        # Far above what one client sends (the limiter's burst is one second of the rate).
        "rate_limits": {"requests_per_second": 100_000, "tokens_per_second": 10_000_000},
        "resources": {"gpus": GPUS, "nodes": 1, "memory_gb_per_node": 1.5},
        "pricing": {"max_price_per_gpu_hour": "0.60", "budget": "2.00"},
        "max_duration": "1h",
    }
    buyer = CoordinatorClient(swarm.coordinator, swarm.buyer_key, timeout=60)
    submitted = time.monotonic()
    job_id = buyer.submit_job(spec, pack_working_dir(folder, 2**22))["id"]
    try:
        job = _wait_ready(buyer, job_id, leases, timeout=600)
        ready_s = time.monotonic() - submitted
        _say(f"serve job {job_id} ready in {ready_s:.1f} s on lease {job['lease']['id']}")
        direct = _direct_url(swarm, job_id)
        request = {
            "targets": {
                "gateway": {
                    "url": f"{swarm.coordinator}/v1/serve/{job_id}/v1/completions",
                    "headers": {"Authorization": f"Bearer {swarm.buyer_key}"},
                },
                "direct": {"url": f"{direct}/v1/completions", "headers": {}},
            },
            "body": BODY,
            "requests": args.requests,
            "concurrency": args.concurrency,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "timeout": args.timeout,
        }
        _say(f"direct: {request['targets']['direct']['url']}")
        metered_before = job["serve"]["requests"]
        loads = _run_client(swarm, request, args)
        sent = args.warmup + args.rounds * args.requests  # through the gateway
        metered = _wait_metered(buyer, job_id, metered_before + sent, timeout=30)
    finally:
        _cancel(buyer, job_id, timeout=120)
    return {
        "job": job_id,
        "direct_url": direct,
        "ready_s": ready_s,
        "loads": loads,
        "sent": sent,
        "metered": metered - metered_before,
    }


def _make_models(folder: Path) -> None:
    """tiny-gpt2 and one LoRA adapter with a random B (it changes the base's outputs), as
    `tests/integration/test_serve_app.py::make_models` makes them."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from computeswarm.jobs.train.tiny import make_tiny_model

    base = make_tiny_model(folder / "tiny-gpt2", "gpt2", layers=2, width=32)
    torch.manual_seed(1)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False),
    )
    model.save_pretrained(folder / "adapters" / ADAPTER)


def _wait_ready(buyer, job_id: str, leases: list[str], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = buyer.job(job_id)
        if job["lease"] and job["lease"]["id"] not in leases:
            leases.append(job["lease"]["id"])
        if job["serve"]["ready"]:
            return job
        if job["state"] in ("succeeded", "failed", "cancelled"):
            logs = buyer.job_logs(job_id)["text"][-3000:]
            raise RuntimeError(f"serve job {job_id} ended {job['state']}: {job['reason']}\n{logs}")
        time.sleep(1)
    raise RuntimeError(f"serve job {job_id} not ready in {timeout:g} s: {buyer.job(job_id)}")


def _direct_url(swarm, job_id: str) -> str:
    """Where Serve's proxy listens, as the job's Serve driver wrote it in its serve.json
    (the coordinator's job storage, read-only): no product code exposes it otherwise."""
    found = list((Path(swarm.state_dir) / "head" / "storage").glob(f"*/serve/{job_id}/serve.json"))
    if len(found) != 1:
        raise RuntimeError(f"expected one serve.json for job {job_id}, found {found}")
    return json.loads(found[0].read_text())["url"].rstrip("/")


def _run_client(swarm, request: dict, args: argparse.Namespace) -> list[dict[str, Load]]:
    """The load generator in the hub's namespace; its progress goes to our stderr."""
    from computeswarm.tunnel.netns import ns_argv

    argv = ns_argv([sys.executable, "-c", CLIENT], swarm.head.get("netns"))
    total = (args.warmup + args.rounds * args.requests) * len(TARGETS)
    done = subprocess.run(
        argv,
        input=json.dumps(request),
        stdout=subprocess.PIPE,
        text=True,
        timeout=120 + total * args.timeout / args.concurrency,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the load generator failed ({done.returncode})")
    out = json.loads(lines[-1])
    codes = {name: got["codes"] for name, got in out["warmup"].items()}
    texts = {name: got["texts"] for name, got in out["warmup"].items()}
    for i, round_ in enumerate(out["rounds"]):
        for name in TARGETS:
            codes[f"{name} round {i + 1}"] = round_[name]["codes"]
            texts[f"{name} round {i + 1}"] = round_[name]["texts"]
    bad = {k: v for k, v in codes.items() if set(v) != {"200"}}
    if bad:
        raise RuntimeError(f"requests that did not answer 200: {bad}")
    if len({tuple(t) for t in texts.values()}) != 1 or len(texts["gateway"]) != 1:
        raise RuntimeError(f"the targets did not give one and the same answer: {texts}")
    return [
        {name: _load(round_[name], args.requests) for name in TARGETS} for round_ in out["rounds"]
    ]


def _load(got: dict, requests: int) -> Load:
    latencies = sorted(got["latencies"])
    return Load(
        throughput=requests / got["wall_s"],
        p50_s=_nearest_rank(latencies, 0.50),
        p99_s=_nearest_rank(latencies, 0.99),
        mean_s=statistics.fmean(latencies),
    )


def _nearest_rank(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered), math.ceil(q * len(ordered))) - 1]


def _wait_metered(buyer, job_id: str, expected: int, timeout: float) -> int:
    """The job's metered request count once it reaches `expected` (metering is recorded as
    each response ends), or what it is after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        count = buyer.job(job_id)["serve"]["requests"]
        if count >= expected or time.monotonic() > deadline:
            return count
        time.sleep(0.5)


def _cancel(buyer, job_id: str, timeout: float) -> None:
    """Cancel the job and wait until its lease is settled (down() removes the rest)."""
    from computeswarm.cluster.errors import Conflict

    with contextlib.suppress(Conflict):  # already over
        buyer.cancel_job(job_id)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = buyer.job(job_id)
        if job["lease"] is None or job["lease"]["state"] in ("closed", "failed"):
            return
        time.sleep(0.5)
    _say(f"the lease of job {job_id} was not settled in {timeout:g} s; down() removes it")


def _report(swarm, args: argparse.Namespace, result: dict) -> None:
    loads = result["loads"]
    gateway = [r["gateway"] for r in loads]
    direct = [r["direct"] for r in loads]
    mode = swarm.mode if swarm else "?"
    print(
        f"\ngateway vs Ray Serve direct: 1 seller x {GPUS} (simulated, CPU), "
        f"{'real WireGuard' if mode == 'wireguard' else 'loopback, no WireGuard'}, tiny GPT-2 "
        f"+ 1 LoRA adapter, 1 replica; {args.requests} completions (max_tokens {MAX_TOKENS}, "
        f"greedy) per target per round at concurrency {args.concurrency}, from the hub's "
        f"namespace; medians of {len(loads)} rounds, ratios taken per round"
    )
    _line("throughput, gateway / direct", _ratios(gateway, direct, "throughput"), "x")
    _line("p50 latency, gateway / direct", _ratios(gateway, direct, "p50_s"), "x")
    _line("p99 latency, gateway / direct", _ratios(gateway, direct, "p99_s"), "x")
    print()
    for name, runs in (("gateway", gateway), ("direct", direct)):
        _line(f"{name}: throughput", [r.throughput for r in runs], "req/s")
        _line(f"{name}: p50 latency", [r.p50_s * 1e3 for r in runs], "ms")
        _line(f"{name}: p99 latency", [r.p99_s * 1e3 for r in runs], "ms")
        _line(f"{name}: mean latency", [r.mean_s * 1e3 for r in runs], "ms")
    _line(
        "added by the gateway, p50 (gateway - direct)",
        [(g.p50_s - d.p50_s) * 1e3 for g, d in zip(gateway, direct, strict=True)],
        "ms",
    )
    metered, sent = result["metered"], result["sent"]
    verdict = "every one" if metered == sent else "MISMATCH"
    print(
        f"\n  metered: serve.requests grew by {metered} for {sent} gateway requests "
        f"({args.warmup} warm-up + {args.rounds} x {args.requests}): {verdict}; "
        f"the {sent} direct ones bypass the gateway"
    )
    print(f"  direct URL (from the job's serve.json): {result['direct_url']}")
    print(
        f"  swarm up: {result['setup_s']:.1f} s; serve job ready: {result['ready_s']:.1f} s; "
        f"whole benchmark incl. teardown: {result['total_s']:.1f} s"
    )
    if metered != sent:
        print("METERING MISMATCH: not every gateway request was metered exactly once")
        sys.exit(1)


def _ratios(num: list[Load], den: list[Load], field: str) -> list[float]:
    """Round by round: `field` of `num` over the same round's `den`."""
    return [getattr(a, field) / getattr(b, field) for a, b in zip(num, den, strict=True)]


def _line(label: str, values: list[float], unit: str) -> None:
    each = " ".join(f"{v:.3f}" if unit == "x" else f"{v:.1f}" for v in values)
    median = statistics.median(values)
    shown = f"{median:.3f}" if unit == "x" else f"{median:.1f}"
    print(f"  {label:<46} {shown:>8} {unit:<5} (rounds: {each})")


def _say(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
