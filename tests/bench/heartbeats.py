"""Benchmark: seller heartbeats per second one coordinator core sustains, vs `GET /healthz`.

Starts the real coordinator (`computeswarm head up`, SQLite store or `--database-url`'s,
`none` tunnel backend) as
a subprocess pinned to one core, enrolls `--sellers` simulated sellers (5,000 by default)
over its HTTP API, then drives it from a load generator pinned to another core with
`--concurrency` requests in flight over keep-alive connections. Each heartbeat is
`POST /v1/sellers/{id}/heartbeat` for the enrolled sellers in turn, each with its own key:
authentication, the rate limiter, the store update and the response view, exactly as an
agent's heartbeat. The baseline is `GET /healthz` (a no-op endpoint) against the same
server in the same run, so the ratio says what the heartbeat's work costs over the bare HTTP
stack on this machine. Figures are medians of `--runs` runs (only 200s count as successes);
latencies are p50/p99 of successful requests as the client sees them.

The per-key rate limit is raised for the run: every heartbeat of one seller shares a key, and
the load is far above what one agent sends. `make bench` runs it; CI does not:

    .venv/bin/python -m computeswarm.tests.bench.heartbeats [--sellers N] [--runs N] ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
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
HOST = "127.0.0.1"  # everything stays on loopback
REQUEST_TIMEOUT_S = 60.0  # a hung coordinator fails the run instead of hanging it
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
    parser.add_argument(
        "--database-url",
        default=None,
        help="the coordinator's store (default: SQLite in its state dir); PostgreSQL: run "
        "under tests/with_postgres.sh with $COMPUTESWARM_TEST_POSTGRES_URL",
    )
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
        proc = _start_coordinator(
            Path(tmp) / "state", port, args.server_cpu, log_path, args.database_url
        )
        try:
            _wait_healthy(port, proc, log_path)
            admin_key = (Path(tmp) / "state" / "admin.key").read_text().strip()
            runs, interval = asyncio.run(_bench(port, admin_key, proc.pid, args))
        except Exception:
            print(f"coordinator log, last lines:\n{_tail(log_path)}", file=sys.stderr)
            raise
        finally:
            _stop(proc)
        _report(runs, interval, args)
        _report_log(log_path)


async def _bench(port: int, admin_key: str, pid: int, args) -> tuple[dict[str, list[Run]], float]:
    """Enroll the sellers, then time both kinds of request; also the heartbeat interval."""
    http = Connection(port)
    status, body = await http.send(_request("GET", "/v1/hub"))
    http.close()
    if status != 200:
        raise RuntimeError(f"GET /v1/hub answered {status}: {body[:200]!r}")
    hub = json.loads(body)
    started = time.perf_counter()
    sellers, failures = await _enroll(
        port, admin_key, hub["public_key"], args.sellers, args.concurrency
    )
    took = time.perf_counter() - started
    print(
        f"enrolled {len(sellers)} sellers in {took:.1f} s "
        f"({len(sellers) / took:.0f}/s, invite + enroll each, {args.concurrency} in flight)"
        + (f"; failed attempts (retried): {_counts(failures)}" if failures else ""),
        flush=True,
    )
    # Requests are encoded once up front, so the load generator only picks and sends bytes.
    body = json.dumps(HEARTBEAT).encode()
    heartbeats = [
        _request(
            "POST", f"/v1/sellers/{s.id}/heartbeat", body, {"Authorization": f"Bearer {s.api_key}"}
        )
        for s in sellers
    ]
    healthz = _request("GET", "/healthz")
    # Sellers in turn, from a random start: as agents do, each beating once an interval
    # (a random pick leaves some silent past their timeout, and flapping offline and back
    # is work no real swarm of live agents asks for).
    turn = itertools.cycle(random.sample(heartbeats, len(heartbeats)))
    requests = {"heartbeat": lambda: next(turn), "healthz": lambda: healthz}
    runs: dict[str, list[Run]] = {kind: [] for kind in requests}
    for i in range(args.runs):
        # Alternate which kind goes first, so a drift over time (the store growing its
        # WAL, the machine warming up) does not favour one side of the ratio.
        order = list(requests) if i % 2 == 0 else list(reversed(requests))
        for kind in order:
            cycle = len(heartbeats) if kind == "heartbeat" else 0
            run = await _load(port, requests[kind], pid, args, cycle)
            runs[kind].append(run)
            print(
                f"  run {i + 1}/{args.runs} {kind:<9} {run.rate:8.0f} req/s  "
                f"p50 {run.percentile_ms(0.5):6.1f} ms  p99 {run.percentile_ms(0.99):6.1f} ms"
                f"  server cpu {run.server_cpu:4.0%}  client cpu {run.client_cpu:4.0%}"
                + (f"  errors: {_counts(run.errors)}" if run.errors else ""),
                flush=True,
            )
    return runs, hub["heartbeat_interval_s"]


class Connection:
    """One keep-alive HTTP/1.1 connection: send a request's bytes, read status and body.

    httpx's connection pool scans every connection on each request; with 64 in flight that
    made the load generator, not the coordinator, the bottleneck (about 60 req/s of
    /healthz). This does only what the benchmark needs: Content-Length bodies, no TLS.
    """

    def __init__(self, port: int):
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def send(self, request: bytes) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(HOST, self.port)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):  # TimeoutError is an OSError
                self._writer.write(request)
                head = await self._reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                status = int(lines[0].split(" ", 2)[1])
                headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
                body = await self._reader.readexactly(int(headers["content-length"]))
        except BaseException:
            self.close()  # a half-read response leaves the stream unusable
            raise
        # uvicorn drops the connection after a 500 from an unhandled exception, without
        # always saying so: start a fresh one rather than write into a closed socket.
        if headers.get("connection") == "close" or status >= 500:
            self.close()
        return status, body

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


def _request(method: str, path: str, body: bytes = b"", headers: dict | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method != "GET":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _enroll(
    port: int, admin_key: str, hub_key: str, count: int, concurrency: int
) -> tuple[list[Seller], Counter]:
    """Enroll `count` sellers as a seller's `join` does: an invite, then key + proof."""
    admin = {"Authorization": f"Bearer {admin_key}"}
    sellers: list[Seller] = []
    failures: Counter = Counter()
    todo = list(range(count))
    new_invite = _request("POST", "/v1/invites", b'{"note": "bench"}', admin)

    async def one(http: Connection, i: int) -> None:
        status, body = await http.send(new_invite)
        if status != 200:
            raise RuntimeError(f"POST /v1/invites answered {status}: {body[:200]!r}")
        invite = json.loads(body)["invite"]
        keys = KeyPair.generate()
        request = {
            "invite": invite,
            "public_key": keys.public,
            "proof": possession_proof(keys, hub_key, invite),
            "name": f"bench-{i}",
        }
        enroll = _request("POST", "/v1/enroll", json.dumps(request).encode())
        # A failed enrollment is retried with the same invite and key, as a seller's `join`
        # would be re-run; each failure is counted and reported.
        for _attempt in range(5):
            try:
                status, body = await http.send(enroll)
            except (OSError, asyncio.IncompleteReadError) as e:
                failures[f"enroll {type(e).__name__}"] += 1
                continue
            if status == 200:
                enrolled = json.loads(body)
                sellers.append(Seller(enrolled["seller_id"], enrolled["api_key"]))
                return
            failures[f"enroll {status}"] += 1
        raise RuntimeError(f"seller {i}: enrollment failed 5 times: {_counts(failures)}")

    async def worker() -> None:
        http = Connection(port)
        try:
            while todo:
                await one(http, todo.pop())
        finally:
            http.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sellers, failures


async def _load(port: int, pick, pid: int, args, cycle: int = 0) -> Run:
    """`concurrency` workers send back to back: a warmup, then a run bounded by time and count.

    `cycle` requests go first, untimed: one heartbeat of every seller, so that the run
    sees a live swarm (every seller online, its key in the coordinator's cache), not one
    whose sellers all fell silent past their timeout during the `/healthz` run before."""
    connections = [Connection(port) for _ in range(args.concurrency)]
    try:
        if cycle:
            await _drive(connections, pick, REQUEST_TIMEOUT_S * 10, cycle, Run(0))
        if args.warmup > 0:
            await _drive(connections, pick, args.warmup, args.max_requests, Run(args.warmup))
        run = Run(args.seconds)
        server_before, client_before = _cpu_seconds(pid), time.process_time()
        started = time.perf_counter()
        await _drive(connections, pick, args.seconds, args.max_requests, run)
        # Requests in flight at the deadline finish and count, so time runs until they do.
        run.seconds = time.perf_counter() - started
        run.server_cpu = (_cpu_seconds(pid) - server_before) / run.seconds
        run.client_cpu = (time.process_time() - client_before) / run.seconds
    finally:
        for connection in connections:
            connection.close()
    return run


async def _drive(
    connections: list[Connection], pick, seconds: float, max_requests: int, run: Run
) -> None:
    deadline = time.perf_counter() + seconds
    budget = max_requests

    async def worker(http: Connection) -> None:
        nonlocal budget
        while budget > 0 and time.perf_counter() < deadline:
            budget -= 1
            request = pick()
            t0 = time.perf_counter()
            try:
                status, _ = await http.send(request)
            except (OSError, asyncio.IncompleteReadError, ValueError, KeyError) as e:
                run.errors[type(e).__name__] += 1
                continue
            if status == 200:
                run.ok += 1
                run.latencies.append(time.perf_counter() - t0)
            else:
                run.errors[status] += 1

    await asyncio.gather(*(worker(c) for c in connections))


def _report(runs: dict[str, list[Run]], interval: float, args) -> None:
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
    # What the figure is for: every seller's agent heartbeats once per interval.
    needed = args.sellers / interval
    print(
        f"  {args.sellers} sellers at heartbeat.interval_s = {interval:g} s need {needed:.0f}"
        f" heartbeats/s: {_median_rate(runs['heartbeat']) / needed:.2f} x that on one core"
    )
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
    """What the coordinator logged above info, summarised: a benchmark must not hide it."""
    by_source: Counter = Counter()
    causes: Counter = Counter()
    first: dict[str, str] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("level") not in ("warning", "error", "critical"):
            continue
        source = f"{entry['level']} ({entry.get('logger')})"
        by_source[source] += 1
        first.setdefault(source, str(entry.get("msg", "")).strip()[:160])
        if entry.get("exc"):
            causes[_exception(entry["exc"])] += 1
    if not by_source:
        return
    print("\n  coordinator log, above info:")
    for source, n in by_source.most_common():
        print(f"    {n:6d} x {source}, first: {first[source]}")
    for cause, n in causes.most_common(5):
        print(f"    {n:6d} x exception: {cause}")


def _exception(traceback: str) -> str:
    """The line of a traceback that names the exception (not SQLAlchemy's trailing notes)."""
    named = [
        line
        for line in traceback.splitlines()
        if line[:1].isalpha() and ": " in line and not line.startswith("The above")
    ]
    return (named or traceback.strip().splitlines() or ["?"])[-1][:200]


def _median_rate(runs: list[Run]) -> float:
    return statistics.median(r.rate for r in runs)


def _counts(counter: Counter) -> str:
    return ", ".join(f"{key}: {n}" for key, n in counter.most_common())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _start_coordinator(
    state: Path, port: int, cpu: int, log_path: Path, database_url: str | None
) -> subprocess.Popen:
    argv = ["taskset", "-c", str(cpu), sys.executable, "-m", "computeswarm.cli", "head", "up"]
    argv += ["--state-dir", str(state), "--port", str(port), "--host", HOST]
    argv += ["--backend", "none"]
    if database_url:
        argv += ["--database-url", database_url]
    # Its log goes to a file: a pipe nobody reads would fill and stall the server.
    with log_path.open("wb") as log:
        return subprocess.Popen(
            argv,
            env={**os.environ, **SERVER_ENV},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _wait_healthy(port: int, proc: subprocess.Popen, log_path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"coordinator exited with {proc.returncode}:\n{_tail(log_path)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://{HOST}:{port}/healthz", timeout=1).status_code == 200:
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
