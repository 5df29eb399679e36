"""Benchmark: seller heartbeats per second one coordinator core sustains, vs `GET /healthz`.

Starts the real coordinator (`computeswarm head up`, SQLite store, `none` tunnel backend) as
a subprocess pinned to one core, enrolls `--sellers` simulated sellers (5,000 by default)
over its HTTP API, then drives it from a load generator pinned to another core with
`--concurrency` requests in flight over keep-alive connections. Each heartbeat is
`POST /v1/sellers/{id}/heartbeat` for a random enrolled seller with that seller's own key:
authentication, the rate limiter, one store transaction and the response view, exactly as
an agent's heartbeat. The baseline is `GET /healthz` (a no-op endpoint) against the same
server in the same run, so the ratio says what the heartbeat's work costs over the bare HTTP
stack on this machine. Figures are medians of `--runs` runs (only 200s count as successes);
latencies are p50/p99 of successful requests as the client sees them.

The per-key rate limit is raised for the run: every heartbeat of one seller shares a key, and
the load is far above what one agent sends. `make bench` runs it; CI does not.
    .venv/bin/python -m computeswarm.tests.bench.heartbeats [--sellers N] [--runs N] ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from computeswarm.tunnel.keys import KeyPair, possession_proof

HEARTBEAT = {
    "gpus": [{"model": "RTX4090", "vram_gb": 24, "simulated": True}],
    "simulated": True,
    "rtt_ms": 1.0,
}
# Rate limits high enough never to refuse a benchmark request (the limiter still runs).
SERVER_ENV = {
    "COMPUTESWARM_HEAD__LIMITS__REQUESTS_PER_SECOND": "1000000",
    "COMPUTESWARM_HEAD__LIMITS__BURST": "1000000",
}
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Seller:
    id: str
    api_key: str


@dataclass
class Run:
    """One timed run of one kind of request."""

    seconds: float
    ok: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    errors: Counter = field(default_factory=Counter)  # status code or exception name
    server_cpu: float = 0.0  # share of one core the coordinator used, 0..1
    client_cpu: float = 0.0  # share of one core this load generator used

    @property
    def rate(self) -> float:
        return self.ok / self.seconds

    def percentile_ms(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sellers", type=int, default=5000, help="sellers to enroll")
    parser.add_argument("--runs", type=int, default=3, help="runs per kind; medians reported")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each run")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument(
        "--max-requests", type=int, default=1_000_000, help="cap on requests per run"
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="uncounted seconds per run")
    parser.add_argument("--server-cpu", type=int, default=0, help="core for the coordinator")
    parser.add_argument("--client-cpu", type=int, default=1, help="core for the load generator")
    args = parser.parse_args()
    if args.server_cpu == args.client_cpu:
        parser.error("--server-cpu and --client-cpu must differ")
    if shutil.which("taskset") is None:
        sys.exit("taskset not found (util-linux): it pins the coordinator to one core")
    # The load generator gets its own core so it never takes cycles from the one measured.
    os.sched_setaffinity(0, {args.client_cpu})

    with tempfile.TemporaryDirectory(prefix="cs-bench-hb-") as tmp:
        log_path = Path(tmp) / "coordinator.log"
        port = _free_port()
        proc = _start_coordinator(Path(tmp) / "state", port, args.server_cpu, log_path)
        try:
            base = f"http://127.0.0.1:{port}"
            _wait_healthy(base, proc, log_path)
            admin_key = (Path(tmp) / "state" / "admin.key").read_text().strip()
            runs = asyncio.run(_bench(base, admin_key, proc.pid, args))
        finally:
            _stop(proc)
        _report(runs, args)
        _report_log(log_path)


async def _bench(base: str, admin_key: str, pid: int, args) -> dict[str, list[Run]]:
    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as http:
        started = time.perf_counter()
        sellers, failures = await _enroll(http, admin_key, args.sellers, args.concurrency)
        took = time.perf_counter() - started
        print(
            f"enrolled {len(sellers)} sellers in {took:.1f} s "
            f"({len(sellers) / took:.0f}/s, invite + enroll each, {args.concurrency} in flight)"
            + (f"; failed attempts (retried): {_counts(failures)}" if failures else ""),
            flush=True,
        )
        requests = {
            "heartbeat": lambda: _heartbeat(http, random.choice(sellers)),
            "healthz": lambda: http.get("/healthz"),
        }
        runs: dict[str, list[Run]] = {kind: [] for kind in requests}
        for i in range(args.runs):
            # Alternate which kind goes first, so a drift over time (the store growing its
            # WAL, the machine warming up) does not favour one side of the ratio.
            order = list(requests) if i % 2 == 0 else list(reversed(requests))
            for kind in order:
                run = await _load(requests[kind], pid, args)
                runs[kind].append(run)
                print(
                    f"  run {i + 1}/{args.runs} {kind:<9} {run.rate:8.0f} req/s  "
                    f"p50 {run.percentile_ms(0.5):6.1f} ms  p99 {run.percentile_ms(0.99):6.1f} ms"
                    f"  server cpu {run.server_cpu:4.0%}  client cpu {run.client_cpu:4.0%}"
                    + (f"  errors: {_counts(run.errors)}" if run.errors else ""),
                    flush=True,
                )
    return runs


async def _enroll(
    http: httpx.AsyncClient, admin_key: str, count: int, concurrency: int
) -> tuple[list[Seller], Counter]:
    """Enroll `count` sellers as a seller's `join` does: an invite, then key + proof."""
    hub = (await http.get("/v1/hub")).raise_for_status().json()
    admin = {"Authorization": f"Bearer {admin_key}"}
    sellers: list[Seller] = []
    failures: Counter = Counter()
    todo = list(range(count))

    async def one(i: int) -> None:
        # An enrollment that fails (e.g. two racing for the same next address past the
        # coordinator's retries) is retried with a fresh invite, a few times, and counted.
        for _attempt in range(5):
            response = await http.post("/v1/invites", json={"note": "bench"}, headers=admin)
            if response.status_code != 200:
                failures[f"invite {response.status_code}"] += 1
                continue
            invite = response.json()["invite"]
            keys = KeyPair.generate()
            body = {
                "invite": invite,
                "public_key": keys.public,
                "proof": possession_proof(keys, hub["public_key"], invite),
                "name": f"bench-{i}",
            }
            response = await http.post("/v1/enroll", json=body)
            if response.status_code == 200:
                enrolled = response.json()
                sellers.append(Seller(enrolled["seller_id"], enrolled["api_key"]))
                return
            failures[f"enroll {response.status_code}"] += 1
        raise RuntimeError(f"seller {i}: enrollment failed 5 times: {_counts(failures)}")

    async def worker() -> None:
        while todo:
            await one(todo.pop())

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sellers, failures


def _heartbeat(http: httpx.AsyncClient, seller: Seller):
    return http.post(
        f"/v1/sellers/{seller.id}/heartbeat",
        json=HEARTBEAT,
        headers={"Authorization": f"Bearer {seller.api_key}"},
    )


async def _load(send, pid: int, args) -> Run:
    """`concurrency` workers send back to back: a warmup, then a run bounded by time and count."""
    if args.warmup > 0:
        await _drive(send, args.concurrency, args.warmup, args.max_requests, Run(args.warmup))
    run = Run(args.seconds)
    server_before, client_before = _cpu_seconds(pid), time.process_time()
    started = time.perf_counter()
    await _drive(send, args.concurrency, args.seconds, args.max_requests, run)
    # Requests in flight at the deadline finish and count, so time runs until they do.
    run.seconds = time.perf_counter() - started
    run.server_cpu = (_cpu_seconds(pid) - server_before) / run.seconds
    run.client_cpu = (time.process_time() - client_before) / run.seconds
    return run


async def _drive(send, concurrency: int, seconds: float, max_requests: int, run: Run) -> None:
    deadline = time.perf_counter() + seconds
    budget = max_requests

    async def worker() -> None:
        nonlocal budget
        while budget > 0 and time.perf_counter() < deadline:
            budget -= 1
            t0 = time.perf_counter()
            try:
                response = await send()
            except httpx.HTTPError as e:
                run.errors[type(e).__name__] += 1
                continue
            if response.status_code == 200:
                run.ok += 1
                run.latencies.append(time.perf_counter() - t0)
            else:
                run.errors[response.status_code] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def _report(runs: dict[str, list[Run]], args) -> None:
    print(
        f"\nCoordinator on 1 core, {args.sellers} sellers enrolled, {args.concurrency} in flight;"
        f" median of {args.runs} x {args.seconds:g} s:"
    )
    print(f"  {'':<10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}   runs (req/s)")
    for kind, kind_runs in runs.items():
        print(
            f"  {kind:<10} {_median_rate(kind_runs):8.0f}"
            f" {statistics.median(r.percentile_ms(0.5) for r in kind_runs):8.1f}"
            f" {statistics.median(r.percentile_ms(0.99) for r in kind_runs):8.1f}   "
            + ", ".join(f"{r.rate:.0f}" for r in kind_runs)
        )
    ratio = _median_rate(runs["heartbeat"]) / _median_rate(runs["healthz"])
    print(f"\n  heartbeat / healthz throughput ratio = {ratio:.3f}")
    errors = {kind: sum((r.errors for r in rs), Counter()) for kind, rs in runs.items()}
    for kind, counts in errors.items():
        if counts:
            print(f"  {kind} errors (not counted): {_counts(counts)}")
    # The ratio means something only if the coordinator's core was the bottleneck.
    for kind, kind_runs in runs.items():
        server = statistics.median(r.server_cpu for r in kind_runs)
        if server < 0.9:
            print(
                f"  warning: the coordinator used only {server:.0%} of its core on {kind}: "
                "the load generator (or something else) limited the figure"
            )


def _report_log(log_path: Path) -> None:
    """Anything the coordinator logged above info, summarised: a benchmark must not hide it."""
    levels: Counter = Counter()
    samples: dict[str, str] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        for level in ("warning", "error", "critical"):
            if f'"level": "{level}"' in line:
                levels[level] += 1
                samples.setdefault(level, line[:300])
        if "Traceback" in line:
            levels["traceback"] += 1
    if levels:
        print(f"\n  coordinator log: {_counts(levels)}")
        for level, line in samples.items():
            print(f"    first {level}: {line}")


def _median_rate(runs: list[Run]) -> float:
    return statistics.median(r.rate for r in runs)


def _counts(counter: Counter) -> str:
    return ", ".join(f"{key}: {n}" for key, n in counter.most_common())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_coordinator(state: Path, port: int, cpu: int, log_path: Path) -> subprocess.Popen:
    argv = ["taskset", "-c", str(cpu), sys.executable, "-m", "computeswarm.cli", "head", "up"]
    argv += ["--state-dir", str(state), "--port", str(port), "--host", "127.0.0.1"]
    argv += ["--backend", "none"]
    # Its log goes to a file: a pipe nobody reads would fill and stall the server.
    with log_path.open("wb") as log:
        return subprocess.Popen(
            argv,
            env={**os.environ, **SERVER_ENV},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _wait_healthy(base: str, proc: subprocess.Popen, log_path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"coordinator exited with {proc.returncode}:\n{_tail(log_path)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"coordinator not healthy after {timeout:.0f} s:\n{_tail(log_path)}")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the coordinator we started (by its PID), then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


if __name__ == "__main__":
    main()
