"""Benchmark: pushing and pulling a dataset through the coordinator over the overlay, vs
the same bytes over the same overlay in a plain TCP stream; what a killed push saves on
resume; what a new version sends (dedup), content-defined vs fixed-size chunks.

Real WireGuard (wireguard-go) between testbed hosts: a coordinator (with its embedded
object store) listens on the hub's overlay address; the buyer's client runs in a spoke's
workload namespace. Each figure is a median of several runs; each ratio compares two
paths measured in the same run. Needs root and wireguard-go. `make bench` runs it; CI
does not.

    python -m computeswarm.tests.bench.dataset_transfer [--runs 3] [--mb 256]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from computeswarm.tests.bench.store_transfer import tcp_client, tcp_server
from computeswarm.tunnel import netns
from computeswarm.tunnel.backends import get_backend
from computeswarm.tunnel.testbed_overlay import TestbedOverlay

API_PORT, TCP_PORT = 9921, 9922
ME = [sys.executable, "-m", "computeswarm.tests.bench.dataset_transfer"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mb", type=int, default=256)
    args = parser.parse_args()
    with TestbedOverlay.start(get_backend("userspace"), ["s1"]) as lab:
        bed, hub = lab.bed, lab.hub
        hub.set_groups({"bench": frozenset(s.node.address for s in lab.spokes.values())})
        address = hub.node.address
        state = Path(tempfile.mkdtemp(prefix="cs-dataset-bench-"))
        hub_ns = bed.host("hub").netns
        bed.spawn(hub_ns, [*ME, "coordinator", str(state), address, str(API_PORT)])
        bed.spawn(hub_ns, [*ME, "tcp-server", address, str(TCP_PORT), str(args.mb)])
        key = _wait_for(state / "buyer.key").strip()
        seller = lab.workload_netns("s1")
        rows: dict[str, list[float]] = {}
        for _ in range(args.runs):
            for mode in ("datasets", "tcp"):
                argv = [*ME, f"{mode}-client", address]
                argv += [str(API_PORT if mode == "datasets" else TCP_PORT), str(args.mb), key]
                done = netns.run(argv, netns=seller, timeout=1200)
                result = json.loads(done.stdout.strip().splitlines()[-1])
                for label, value in result.items():
                    rows.setdefault(f"{mode}: {label}", []).append(value)
    print(f"\n{args.mb} MB over WireGuard, one client, median of {args.runs} runs:")
    for label, values in rows.items():
        shown = ", ".join(f"{v:.3g}" for v in values)
        print(f"  {label:<44} {statistics.median(values):10.3g}   runs: {shown}")
    print()
    for direction, verb in (("up", "push"), ("down", "pull")):
        ours = statistics.median(rows[f"datasets: {direction} MB/s"])
        tcp = statistics.median(rows[f"tcp: {direction}"])
        print(f"  {verb} via the coordinator / plain TCP = {ours / tcp:.3f}   (goal >= 0.8)")
    resumed = statistics.median(rows["datasets: resume sent / total"])
    print(f"  resumed push sent / total = {resumed:.3f}")
    for kind in ("cdc", "fixed"):
        sent = statistics.median(rows[f"datasets: new version sent / total ({kind})"])
        print(f"  a version with 1 byte inserted sends / total, {kind} chunks = {sent:.4f}")


def _wait_for(path: Path) -> str:
    deadline = time.monotonic() + 120
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"the coordinator did not start: see {path.parent}")
        time.sleep(0.3)
    return path.read_text()


# -- the parts that run inside the testbed's namespaces ----------------------------------


def serve_coordinator(state: str, host: str, port: str) -> None:
    """A coordinator (none backend: the testbed's WireGuard is already up) whose API
    listens on the hub's overlay address, and one buyer for the bench."""
    import uvicorn

    from computeswarm.cluster.api.app import create_app
    from computeswarm.cluster.client import CoordinatorClient
    from computeswarm.cluster.config import load_config
    from computeswarm.cluster.coordinator import Coordinator
    from computeswarm.tunnel.backends.none import NoneBackend

    config = load_config(
        env={},
        overrides={
            "state_dir": str(Path(state) / "head"),
            "overlay.interface": "csbench",
            "storage.port": 0,
            "storage.quota_bytes_per_account": 64 * 2**30,
            "limits.requests_per_second": 10_000,
            "limits.burst": 10_000,
        },
    )
    coordinator = Coordinator(config, backend=NoneBackend())
    coordinator.start()
    server = uvicorn.Server(
        uvicorn.Config(create_app(coordinator), host=host, port=int(port), log_level="warning")
    )
    import threading

    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    admin = CoordinatorClient(
        f"http://{host}:{port}", coordinator.admin_key_path.read_text().strip()
    )
    buyer = admin.create_account("bench", "buyer")
    (Path(state) / "buyer.key").write_text(buyer["api_key"])
    try:
        while True:
            time.sleep(3600)
    finally:
        coordinator.stop()


def datasets_client(host: str, port: str, mb: str, key: str) -> None:
    from computeswarm.cluster.client import CoordinatorClient
    from computeswarm.data.chunking import Chunker
    from computeswarm.data.refs import DatasetRef
    from computeswarm.data.transfer import pull, push

    client = CoordinatorClient(f"http://{host}:{port}", key, timeout=120)
    name = f"b{os.getpid()}"
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as local:
        src = Path(local, "src")
        src.mkdir()
        data = random.Random(os.getpid()).randbytes(int(mb) * 2**20)
        (src / "data.bin").write_bytes(data)
        started = time.perf_counter()
        pushed = push(client, src, name)
        out["up MB/s"] = int(mb) / (time.perf_counter() - started)
        started = time.perf_counter()
        pull(client, DatasetRef(name, 1), Path(local, "back"))
        out["down MB/s"] = int(mb) / (time.perf_counter() - started)
        if Path(local, "back", "data.bin").read_bytes() != data:
            raise SystemExit("the pulled version is not the pushed one")
        out["resume sent / total"] = _resumed(client, src, f"{name}r", pushed.chunks)
        for kind, chunker in (("cdc", Chunker()), ("fixed", Chunker(fixed=True))):
            (src / "data.bin").write_bytes(data)
            push(client, src, f"{name}{kind}", chunker=chunker)
            middle = len(data) // 2
            (src / "data.bin").write_bytes(data[:middle] + b"!" + data[middle:])
            again = push(client, src, f"{name}{kind}", chunker=chunker)
            out[f"new version sent / total ({kind})"] = again.bytes_sent / again.bytes_total
    print(json.dumps(out))


def _resumed(client, src: Path, name: str, chunks: int) -> float:
    """Stop a push half-way (after half its chunks), push again: the share it resends."""
    from computeswarm.data.transfer import push

    class Stop(Exception):
        pass

    sent = 0
    real = client.put_chunk

    def half(*args):
        nonlocal sent
        if sent >= chunks // 2:
            raise Stop
        sent += 1
        return real(*args)

    client.put_chunk = half
    with contextlib.suppress(Stop):
        push(client, src, name, streams=1)
    client.put_chunk = real
    again = push(client, src, name)
    return again.bytes_sent / again.bytes_total


PARTS = {
    "coordinator": serve_coordinator,
    "datasets-client": datasets_client,
    "tcp-server": tcp_server,
    "tcp-client": lambda host, port, mb, _key: tcp_client(host, port, mb, "c"),
}

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in PARTS:
        PARTS[sys.argv[1]](*sys.argv[2:])
    else:
        main()
