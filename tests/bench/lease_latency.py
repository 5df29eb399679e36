"""Benchmark: how long a buyer waits for a lease, vs submitting to a Ray cluster that is up.

Brings up a local swarm (`computeswarm.cluster.local.swarm.up`: a coordinator and 2 simulated
sellers with one RTX4090 each, on testbed namespaces joined by real WireGuard when root,
loopback otherwise), then, `--runs` times (3), measures on one 2-node job:

1. Lease formation. The clock starts before `POST /v1/jobs` (`CoordinatorClient.submit_job`)
   and is read when the job is first seen `running` (lease matched, its Ray head up on the
   hub, both sellers' worker nodes attached, the job submitted to the head's Jobs API), and
   when the first line the buyer's code prints is first seen in `GET /v1/jobs/{id}/logs`
   (both polled every `--poll` s, 0.1). The entrypoint is
   `python -c "print('FIRST' + ' LINE', flush=True); time.sleep(...)"` (the marker is built
   at run time, so the command line echoed in a log cannot match it).
   "running -> first line" is the difference: what ComputeSwarm adds after the lease is up
   (driver placement on the driver seller, the log path through the coordinator). The job
   turns `running` once the coordinator's own `submit_job` to the lease head has returned,
   so this figure leaves that call out while the baseline's includes it; the baseline's
   `submit_job()` time is printed to show how much that is.

2. The baseline, in the same run, on the same cluster: while the job above still holds its
   lease (same head, same two seller nodes, same WireGuard paths), a plain
   `ray.job_submission.JobSubmissionClient(...).submit_job(...)` of the same kind of
   entrypoint, with the lease's own dashboard URL (hub overlay address, port_base + 1) and
   token (both read from the coordinator's SQLite store). The hub's overlay address is not
   reachable from this machine's namespace (it is plugged into the underlay only), so the
   client runs inside the hub's namespace (`ip netns exec cs-<run>-hub`), like the
   coordinator's own client. Its clock starts at `submit_job` (the client is made, and Ray
   imported, before) and stops when `GET /api/v0/logs/file` for the driver's log on the
   driver's node first shows the marker, polled every `--poll` s: the same log path the
   coordinator uses, without the coordinator in front.

   Placement: the lease's one `cs_driver` resource is held by the holding job's driver, so a
   baseline asking for `cs_driver` would queue until the lease ends. Ray Jobs' entrypoints
   take no CPU by default, so the baseline instead asks for 0.001 of the built-in
   `node:<ip>` resource of the driver seller: it runs on the same node as ComputeSwarm's
   driver (checked: the two `driver_node_id`s are printed as equal or not), and needs
   nothing the holding job uses.

The ratios are per run (ComputeSwarm / plain Ray), then the median. ComputeSwarm's total
necessarily includes forming the lease, which the baseline had ready, so "total / plain" is
the price of a lease on demand; "running -> first line / plain" compares like with like.
The baseline runs on a warm cluster (its node already started workers for the first job).

Between runs the benchmark cancels the holding job, waits until its lease is settled, both
sellers are online again and no process of that lease is left (its head and worker nodes
stop in the background), so a run never measures the teardown of the one before. The swarm
is removed (`local_swarm.down()`) whatever happens, and the run checks that no process or
namespace of it is left. State lives in temporary directories (`COMPUTESWARM_HOME`,
`COMPUTESWARM_LOCAL_DIR`), never in ~/.computeswarm; they are removed unless the run fails.
Only testbed addresses are used. `make bench` runs it; CI does not:

    .venv/bin/python -m computeswarm.tests.bench.lease_latency [--runs N] [--poll S]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from computeswarm.tests.bench.leftovers import processes_with, swarm_leftovers

SELLERS = 2
GPUS = "RTX4090:24GB:1"
MARKER = "FIRST LINE"
# The marker is assembled at run time: an echoed command line never contains it.
PRINT_MARKER = "print('FIRST' + ' LINE', flush=True)"
RAY_TMP = Path("/tmp/cs-ray")  # where lease heads and worker nodes keep their Ray files

# Runs inside the hub's namespace: a plain Ray Jobs client against the lease's head.
BASELINE = r"""
import json, sys, time
import httpx
from ray.job_submission import JobSubmissionClient

a = json.loads(sys.stdin.read())
headers = {"Authorization": "Bearer " + a["token"]}
client = JobSubmissionClient(a["url"], headers=headers)
logs = httpx.Client(headers=headers, timeout=10)
out = {"cs_driver_node": client.get_job_info(a["cs_submission"]).driver_node_id}
start = time.perf_counter()
sid = client.submit_job(entrypoint=a["entrypoint"], entrypoint_resources=a["resources"])
out["submit_s"] = time.perf_counter() - start
node = None
while time.perf_counter() - start < a["timeout"]:
    if node is None:
        node = client.get_job_info(sid).driver_node_id or None
    if node is not None:
        r = logs.get(
            a["url"] + "/api/v0/logs/file",
            params={"node_id": node, "filename": f"job-driver-{sid}.log", "lines": 1000},
        )
        if r.status_code == 200 and a["marker"] in r.text:
            out["first_line_s"] = time.perf_counter() - start
            break
    time.sleep(a["poll"])
out["driver_node"] = node
end = time.perf_counter() + 20
while time.perf_counter() < end and not client.get_job_status(sid).is_terminal():
    time.sleep(0.2)
out["status"] = str(client.get_job_status(sid).value)
print(json.dumps(out), flush=True)
"""


@dataclass
class Run:
    running_s: float  # submit -> job running (lease formed)
    first_line_s: float  # submit -> first line in the job's logs
    plain_s: float  # plain Ray on the same lease: submit -> first line
    plain_submit_s: float  # of which the submit_job() call itself
    same_node: bool  # the baseline's driver ran where ComputeSwarm's did

    @property
    def after_running_s(self) -> float:
        return self.first_line_s - self.running_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between polls")
    parser.add_argument("--timeout", type=float, default=240, help="seconds per phase")
    args = parser.parse_args()
    if not 0.05 <= args.poll <= 1:
        parser.error("--poll must be between 0.05 and 1 s")

    home = Path(tempfile.mkdtemp(prefix="cs-bench-home-"))
    local = Path(tempfile.mkdtemp(prefix="cs-bench-local-"))
    os.environ["COMPUTESWARM_HOME"] = str(home)
    os.environ["COMPUTESWARM_LOCAL_DIR"] = str(local / "swarm")
    from computeswarm.cluster.local import swarm as local_swarm

    began = time.monotonic()
    runs: list[Run] = []
    leases: list[str] = []
    swarm = None
    ok = False
    try:
        swarm = local_swarm.up(sellers=SELLERS, gpus=GPUS, price="0.40", deposit="50", say=_say)
        setup_s = time.monotonic() - began
        for i in range(args.runs):
            runs.append(_one_run(swarm, args, leases))
            r = runs[-1]
            _say(
                f"run {i + 1}/{args.runs}: running {r.running_s:.2f} s, first line "
                f"{r.first_line_s:.2f} s, plain Ray {r.plain_s:.2f} s"
            )
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
    total_s = time.monotonic() - began
    _report(swarm, runs, args.poll, setup_s, total_s)
    if leftovers:
        print("LEFTOVERS after down():\n  " + "\n  ".join(leftovers))
        sys.exit(1)
    print("leftovers after down(): none (no namespace, no process of this run)")


def _one_run(swarm, args: argparse.Namespace, leases: list[str]) -> Run:
    from computeswarm.cluster.client import CoordinatorClient

    buyer = CoordinatorClient(swarm.coordinator, swarm.buyer_key)
    admin = CoordinatorClient(swarm.coordinator, swarm.admin_key)
    _wait_idle(admin, leases, args.timeout)
    spec = {
        "kind": "script",
        "name": "bench-lease",
        # Holds the lease while the baseline runs; cancelled right after.
        "entrypoint": f'python -c "{PRINT_MARKER}; import time; time.sleep(300)"',
        "resources": {
            "gpus": f"RTX4090:24GB:{SELLERS}",
            "nodes": SELLERS,
            "memory_gb_per_node": 0.5,
        },
        "pricing": {"max_price_per_gpu_hour": "0.50"},
        "max_duration": "10m",
    }
    start = time.perf_counter()
    job_id = buyer.submit_job(spec, None)["id"]
    running_s = first_line_s = None
    deadline = start + args.timeout
    try:
        while first_line_s is None:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"job {job_id} did not print in time: {buyer.job(job_id)}")
            if running_s is None:
                job = buyer.job(job_id)
                if job["lease"] and job["lease"]["id"] not in leases:
                    leases.append(job["lease"]["id"])
                if job["state"] == "running":
                    running_s = time.perf_counter() - start
                elif job["state"] in ("succeeded", "failed", "cancelled"):
                    raise RuntimeError(f"job {job_id} ended {job['state']}: {job['reason']}")
            else:
                if MARKER in buyer.job_logs(job_id)["text"]:
                    first_line_s = time.perf_counter() - start
                    break
            time.sleep(args.poll)
        job = buyer.job(job_id)
        plain = _baseline(swarm, admin, job, args)
    finally:
        _cancel(buyer, job_id, args.timeout)
    if "first_line_s" not in plain:
        raise RuntimeError(f"the plain Ray job never printed: {plain}")
    return Run(
        running_s,
        first_line_s,
        plain["first_line_s"],
        plain["submit_s"],
        plain["driver_node"] == plain["cs_driver_node"],
    )


def _baseline(swarm, admin, job: dict, args: argparse.Namespace) -> dict:
    """Plain Ray Jobs on the job's own lease cluster, from the hub's namespace."""
    lease = job["lease"]
    db = Path(swarm.state_dir) / "head" / "coordinator.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        port_base, token = conn.execute(
            "SELECT port_base, token FROM leases WHERE id = ?", (lease["id"],)
        ).fetchone()
    driver = next(m["seller_id"] for m in lease["members"] if m["driver"])
    address = next(s["address"] for s in admin.sellers() if s["id"] == driver)
    head_ip = "10.90.0.1" if swarm.mode == "wireguard" else "127.90.0.1"
    request = {
        "url": f"http://{head_ip}:{port_base + 1}",
        "token": token,
        "cs_submission": f"{job['id']}-{lease['id']}",
        "entrypoint": f'python -c "{PRINT_MARKER}"',
        "resources": {f"node:{address}": 0.001},
        "marker": MARKER,
        "poll": args.poll,
        "timeout": args.timeout,
    }
    argv = [sys.executable, "-c", BASELINE]
    if swarm.mode == "wireguard":
        argv = ["ip", "netns", "exec", f"cs-{swarm.run_id}-hub", *argv]
    done = subprocess.run(
        argv,
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=args.timeout + 60,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"the plain Ray client failed ({done.returncode}): {done.stderr[-2000:]}"
        )
    return json.loads(lines[-1])


def _cancel(buyer, job_id: str, timeout: float) -> None:
    """Cancel the holding job and wait until its lease is settled."""
    from computeswarm.cluster.errors import Conflict

    with contextlib.suppress(Conflict):  # already over
        buyer.cancel_job(job_id)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = buyer.job(job_id)
        if job["lease"] is None or job["lease"]["state"] in ("closed", "failed"):
            return
        time.sleep(0.2)
    raise RuntimeError(f"the lease of job {job_id} was not released: {buyer.job(job_id)}")


def _wait_idle(admin, leases: list[str], timeout: float) -> None:
    """Until every seller is online and no process of an earlier lease is left."""
    start = time.monotonic()
    while time.monotonic() < start + timeout:
        sellers = admin.sellers()
        online = [s for s in sellers if s["state"] == "online" and s["offer"]]
        if len(online) >= SELLERS and not processes_with(leases):
            if leases:
                _say(f"idle {time.monotonic() - start:.1f} s after the previous lease closed")
            return
        time.sleep(0.2)
    raise RuntimeError(
        f"the swarm did not become idle: sellers {[s['state'] for s in admin.sellers()]}, "
        f"processes of earlier leases {processes_with(leases)}"
    )


def _report(swarm, runs: list[Run], poll: float, setup_s: float, total_s: float) -> None:
    mode = swarm.mode if swarm else "?"
    print(
        f"lease latency: {SELLERS} sellers x {GPUS} (simulated), "
        f"{'real WireGuard' if mode == 'wireguard' else 'loopback, no WireGuard'}, "
        f"2-node jobs; medians of {len(runs)} runs, polled every {poll:g} s"
    )
    rows = [
        ("lease formation: submit -> job running", [r.running_s for r in runs], "s"),
        ("ComputeSwarm: submit -> first line", [r.first_line_s for r in runs], "s"),
        ("ComputeSwarm: running -> first line", [r.after_running_s for r in runs], "s"),
        ("plain Ray, same lease: submit -> first line", [r.plain_s for r in runs], "s"),
        ("  of which plain Ray's submit_job() call", [r.plain_submit_s for r in runs], "s"),
        ("ratio submit -> first line, CS / plain", [r.first_line_s / r.plain_s for r in runs], "x"),
        (
            "ratio running -> first line, CS / plain",
            [r.after_running_s / r.plain_s for r in runs],
            "x",
        ),
    ]
    for label, values, unit in rows:
        each = " ".join(f"{v:.2f}" for v in values)
        print(f"  {label:<46} {statistics.median(values):7.2f} {unit}   (runs: {each})")
    same = sum(r.same_node for r in runs)
    print(f"  plain Ray driver on ComputeSwarm's driver node: {same}/{len(runs)} runs")
    print(f"  swarm up: {setup_s:.1f} s; whole benchmark incl. teardown: {total_s:.1f} s")


def _say(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
