"""Benchmark: a 256 MB checkpoint saved to and loaded from the object store over the overlay,
vs the same bytes over the same overlay in a plain TCP stream, from one seller and from
two at once.

Real WireGuard (wireguard-go) between testbed hosts; the embedded store (JuiceFS's S3
gateway) runs in the hub's namespace on its overlay address, as `head up` runs it. The
client writes and reads with pyarrow's S3 file system through a lease key, as Ray Train
does. Each figure is a median of several runs; each ratio compares two paths measured in
the same run. Needs root and wireguard-go. `make bench` runs it; CI does not.

    python -m computeswarm.tests.bench.store_transfer [--runs 3] [--mb 256]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from computeswarm.tunnel import netns
from computeswarm.tunnel.backends import get_backend
from computeswarm.tunnel.testbed_overlay import TestbedOverlay

STORE_PORT, TCP_PORT = 9911, 9912
CHUNK = 1 << 20
ME = [sys.executable, "-m", "computeswarm.tests.bench.store_transfer"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mb", type=int, default=256)
    args = parser.parse_args()
    with TestbedOverlay.start(get_backend("userspace"), ["s1", "s2"]) as lab:
        bed, hub = lab.bed, lab.hub
        hub.set_groups({"bench": frozenset(s.node.address for s in lab.spokes.values())})
        address = hub.node.address
        state = Path(tempfile.mkdtemp(prefix="cs-store-bench-"))
        hub_ns = bed.host("hub").netns
        bed.spawn(hub_ns, [*ME, "store", str(state), address, str(STORE_PORT)])
        bed.spawn(hub_ns, [*ME, "tcp-server", address, str(TCP_PORT), str(args.mb)])
        env = _wait_for_key(state)
        sellers = [lab.workload_netns(s) for s in ("s1", "s2")]
        rows: dict[str, list[float]] = {}
        for _ in range(args.runs):
            for label, namespaces in (("one seller", sellers[:1]), ("two sellers", sellers)):
                for mode in ("store", "tcp"):
                    for result in _parallel(namespaces, mode, address, args.mb, env):
                        for direction, mbps in result.items():
                            rows.setdefault(f"{label}: {mode} {direction}", []).append(mbps)
    print(
        f"\n{args.mb} MB per seller over WireGuard, median of {args.runs} runs (MB/s per seller):"
    )
    for label, values in rows.items():
        shown = ", ".join(f"{v:.1f}" for v in values)
        print(f"  {label:<32} {statistics.median(values):8.1f}   runs: {shown}")
    print()
    for label in ("one seller", "two sellers"):
        for direction, verb in (("up", "save"), ("down", "load")):
            store = statistics.median(rows[f"{label}: store {direction}"])
            tcp = statistics.median(rows[f"{label}: tcp {direction}"])
            print(f"  {label}, {verb} via store / plain TCP = {store / tcp:.3f}   (goal >= 0.8)")


def _parallel(namespaces, mode, address, mb, env) -> list[dict]:
    results: list[dict] = [{} for _ in namespaces]

    def one(i: int, ns: str) -> None:
        argv = [*ME, f"{mode}-client", address, str(STORE_PORT if mode == "store" else TCP_PORT)]
        done = netns.run(
            ["env", *(f"{k}={v}" for k, v in env.items()), *argv, str(mb), f"c{i}"],
            netns=ns,
            timeout=600,
        )
        results[i] = json.loads(done.stdout.strip().splitlines()[-1])

    threads = [threading.Thread(target=one, args=(i, ns)) for i, ns in enumerate(namespaces)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _wait_for_key(state: Path) -> dict[str, str]:
    path = state / "lease-env.json"
    deadline = time.monotonic() + 60
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"the store did not start: see {state}/gateway.out")
        time.sleep(0.3)
    return json.loads(path.read_text())


# -- the parts that run inside the testbed's namespaces ----------------------------------


def serve_store(state: str, host: str, port: str) -> None:
    """The embedded store on the hub's overlay address, and one lease key for the bench."""
    from computeswarm.cluster.config import StorageConfig
    from computeswarm.cluster.objects.layout import Grant, run_prefix
    from computeswarm.cluster.objects.plane import ObjectPlane

    plane = ObjectPlane(StorageConfig(port=int(port)), Path(state))
    plane.start(host)
    env = plane.issue("bench", Grant(write=(run_prefix("acct-bench", "ckpt"),)))
    (Path(state) / "lease-env.json").write_text(json.dumps(env))
    try:
        while True:
            time.sleep(3600)
    finally:
        plane.stop()


def store_client(host: str, port: str, mb: str, name: str) -> None:
    """Save a checkpoint folder as Ray Train does (pyarrow copy_files), then load it."""
    import pyarrow.fs

    from computeswarm.jobs.run_store import RunStore

    run = RunStore(f"{os.environ['COMPUTESWARM_S3_BUCKET']}/acct-bench/runs/ckpt", True)
    with tempfile.TemporaryDirectory() as local:
        folder = Path(local, "ckpt")
        folder.mkdir()
        _write_random(folder / "shard.bin", int(mb))
        started = time.perf_counter()
        pyarrow.fs.copy_files(
            str(folder),
            run.path(name),
            source_filesystem=pyarrow.fs.LocalFileSystem(),
            destination_filesystem=run.fs,
        )
        up = time.perf_counter() - started
        started = time.perf_counter()
        run.download(name, Path(local, "back"))
        down = time.perf_counter() - started
        if Path(local, "back", "shard.bin").stat().st_size != int(mb) * CHUNK:
            raise SystemExit("the loaded checkpoint is not the saved one")
    print(json.dumps({"up": int(mb) / up, "down": int(mb) / down}))


def tcp_server(host: str, port: str, mb: str) -> None:
    """Plain TCP on the same overlay: "u" then the bytes (a save), or "d" (a load)."""
    payload = os.urandom(CHUNK)
    with socket.create_server((host, int(port)), reuse_port=True) as server:
        while True:
            conn, _ = server.accept()
            threading.Thread(target=_serve_one, args=(conn, payload, int(mb)), daemon=True).start()


def _serve_one(conn: socket.socket, payload: bytes, mb: int) -> None:
    with conn:
        if conn.recv(1) == b"u":
            got = 0
            while got < mb * CHUNK and (data := conn.recv(CHUNK)):
                got += len(data)
            conn.sendall(b"k")
        else:
            for _ in range(mb):
                conn.sendall(payload)


def tcp_client(host: str, port: str, mb: str, name: str) -> None:
    payload, mb = os.urandom(CHUNK), int(mb)
    started = time.perf_counter()
    with socket.create_connection((host, int(port))) as conn:
        conn.sendall(b"u")
        for _ in range(mb):
            conn.sendall(payload)
        conn.recv(1)
    up = time.perf_counter() - started
    started, got = time.perf_counter(), 0
    with socket.create_connection((host, int(port))) as conn:
        conn.sendall(b"d")
        while got < mb * CHUNK and (data := conn.recv(CHUNK)):
            got += len(data)
    down = time.perf_counter() - started
    print(json.dumps({"up": mb / up, "down": mb / down}))


def _write_random(path: Path, mb: int) -> None:
    with open(path, "wb") as f:
        for _ in range(mb):
            f.write(os.urandom(CHUNK))


PARTS = {
    "store": serve_store,
    "store-client": store_client,
    "tcp-server": tcp_server,
    "tcp-client": tcp_client,
}

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in PARTS:
        PARTS[sys.argv[1]](*sys.argv[2:])
    else:
        main()
