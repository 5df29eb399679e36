"""The driver of a serve job: `python -m computeswarm.serve.run computeswarm-job.json`.

The swarm submits this as the Ray job of a `serve` spec. It deploys the spec's base model
and adapters as one Serve application behind Serve's HTTP proxy, writes `serve.json` (into
the job's serve folder in the object store) once the API answers, and keeps the application up
until SIGTERM (or SIGINT), when it shuts Serve down and exits 0. A bad spec or a missing
model/adapter folder exits 2 with one line saying what to fix, before Ray is touched.

Environment (set by the swarm):
    COMPUTESWARM_ADAPTERS     JSON {served name: absolute adapter folder}
    COMPUTESWARM_SERVE_HOST   where Serve's HTTP proxy listens (default 127.0.0.1)
    COMPUTESWARM_SERVE_PORT   its port (default 8000)
    COMPUTESWARM_SERVE_PROXY  proxy location: HeadOnly (default), EveryNode, Disabled
    COMPUTESWARM_NODE_IP      this node's overlay address, for ray.init
    COMPUTESWARM_RUN_PREFIX   the job's serve folder in the store (with the lease's key:
                              COMPUTESWARM_S3_*, AWS_*); or
    COMPUTESWARM_RUN_DIR      a local folder for serve.json (default: the working dir)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from computeswarm.errors import UserError
from computeswarm.jobs import contract
from computeswarm.jobs.run_store import RunStore

READY_TIMEOUT_S = 300.0
STATUS_EVERY_S = 2.0  # how often serve.json follows the replica count (autoscaling, losses)
EXIT_SPEC_ERROR = 2


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    proxy_location: str

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def probe_url(self) -> str:
        """Where this node reaches the proxy (a wildcard host is reached on loopback)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        return f"http://{host}:{self.port}"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m computeswarm.serve.run computeswarm-job.json", file=sys.stderr)
        return EXIT_SPEC_ERROR
    try:
        spec = contract.read_spec(argv[1])
        adapters = adapters_from_env(os.environ)
        endpoint = endpoint_from_env(os.environ)
        from computeswarm.serve.app import serve_options

        options = serve_options(spec, adapters, Path.cwd())
    except (OSError, ValueError, UserError) as exc:  # ValueError: JSON or the spec's model
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_SPEC_ERROR
    # The job's serve folder in the store (or a local folder when run by hand).
    run = RunStore.from_env({contract.RUN_DIR: ".", **os.environ})
    import ray
    from ray import serve

    if not ray.is_initialized():
        # Attach to this node of the lease's cluster (see cluster.ray_nodes).
        ray.init(_node_ip_address=os.environ.get(contract.NODE_IP))
    # After ray.init, which installs its own SIGTERM handler (sys.exit).
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        status = start(options, endpoint, run)
    except Exception as exc:
        write_status(run, {"state": "failed", "error": f"{type(exc).__name__}: {exc}"})
        with contextlib.suppress(Exception):
            serve.shutdown()
        raise
    print(f"serving {', '.join(status['models'])} at {endpoint.url}", flush=True)
    while not stop.wait(STATUS_EVERY_S):
        status = refresh_replicas(status, options.name, run)
    print("stopping: shutting Serve down", flush=True)
    serve.shutdown()
    write_status(run, {**status, "state": "stopped", "stopped_at": time.time()})
    return 0


def adapters_from_env(env: dict | os._Environ) -> dict[str, str]:
    raw = env.get(contract.ADAPTERS) or "{}"
    try:
        adapters = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UserError(f"COMPUTESWARM_ADAPTERS is not JSON: {exc}") from exc
    if not isinstance(adapters, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in adapters.items()
    ):
        raise UserError("COMPUTESWARM_ADAPTERS must be a JSON object {name: folder}")
    return adapters


def endpoint_from_env(env: dict | os._Environ) -> Endpoint:
    host = env.get(contract.SERVE_HOST) or "127.0.0.1"
    port_text = env.get(contract.SERVE_PORT) or "8000"
    location = env.get(contract.SERVE_PROXY) or "HeadOnly"
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UserError(f"COMPUTESWARM_SERVE_PORT={port_text!r} is not a port number")
    if location not in ("HeadOnly", "EveryNode", "Disabled"):
        raise UserError(
            f"COMPUTESWARM_SERVE_PROXY={location!r}: use HeadOnly, EveryNode or Disabled"
        )
    return Endpoint(host, int(port_text), location)


def start(options, endpoint: Endpoint, run: RunStore, timeout: float = READY_TIMEOUT_S) -> dict:
    """Deploy `options` on the connected Ray cluster behind a proxy at `endpoint`, wait
    until GET /v1/models answers, write serve.json; return what it holds."""
    from ray import serve
    from ray.serve.config import ProxyLocation

    from computeswarm.serve.app import bind

    serve.start(
        proxy_location=ProxyLocation(endpoint.proxy_location),
        http_options={"host": endpoint.host, "port": endpoint.port},
    )
    serve.run(bind(options), name=options.name, route_prefix="/")
    listed = wait_until_answering(endpoint, timeout)
    status = {
        "state": "ready",
        "url": endpoint.url,
        "application": options.name,
        "models": listed or options.models,
        "base_model": options.base_name,
        "replicas": {
            "min": options.min_replicas,
            "max": options.max_replicas,
            **replica_counts(options.name),
        },
        "max_concurrent_requests": options.max_concurrent_requests,
        "max_tokens": options.max_tokens,
        "ready_at": time.time(),
    }
    write_status(run, status)
    return status


def wait_until_answering(endpoint: Endpoint, timeout: float) -> list[str]:
    """The model names GET /v1/models lists, once the proxy routes to a replica."""
    import httpx

    if endpoint.proxy_location == "Disabled":
        return []
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{endpoint.probe_url}/v1/models", timeout=5.0)
            if response.status_code == 200:
                return [m["id"] for m in response.json()["data"]]
            last = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5)
    raise TimeoutError(f"{endpoint.probe_url}/v1/models did not answer in {timeout:.0f} s: {last}")


def replica_counts(app_name: str) -> dict[str, int]:
    """{"running": n, "pending": m}: replicas answering, and those starting or being
    replaced (say after their seller was lost). Zeros when Serve cannot say."""
    from ray import serve

    try:
        app = serve.status().applications[app_name]
    except Exception:  # status is informational; never fail the job over it
        return {"running": 0, "pending": 0}
    counts = {"running": 0, "pending": 0}
    for deployment in app.deployments.values():
        for state, count in deployment.replica_states.items():
            name = str(getattr(state, "value", state))
            if name == "RUNNING":
                counts["running"] += count
            elif name != "STOPPING":
                counts["pending"] += count
    return counts


def refresh_replicas(status: dict, app_name: str, run: RunStore) -> dict:
    """serve.json with the replica counts of now, rewritten only when they changed."""
    counts = replica_counts(app_name)
    if all(status["replicas"].get(k) == v for k, v in counts.items()):
        return status
    status = {**status, "replicas": {**status["replicas"], **counts}}
    write_status(run, status)
    print(f"replicas: {counts['running']} running, {counts['pending']} pending", flush=True)
    return status


def write_status(run: RunStore, status: dict) -> None:
    """serve.json, one whole object: readers never see half a file."""
    run.write_text(contract.SERVE_FILE, json.dumps(status, indent=2))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
