"""Runs on a leased seller (the driver) and fans out one task per leased GPU."""

import os
import socket
import time

import numpy as np
import ray

ray.init()
NODES = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
sellers = sorted(
    a
    for n in ray.nodes()
    if n["Alive"] and n["Resources"].get("GPU")
    for a in [n["NodeManagerAddress"]]
)


def here() -> str:
    """This process's node, by Ray's node id (robust on one machine's loopback too)."""
    return NODES.get(ray.get_runtime_context().get_node_id(), "?")


def my_address() -> str:
    """The address this process reaches the cluster from: its host's, not its Ray node's."""
    head = os.environ["RAY_ADDRESS"].rsplit(":", 1)[0]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((head, 1))
        return s.getsockname()[0]


print(f"driver running at {my_address()}; seller nodes: {sellers}", flush=True)


@ray.remote(num_gpus=1)
def estimate_pi(seed: int) -> tuple[str, str, float, float]:
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    n = int(os.environ.get("SAMPLES", "1000000"))
    x, y = rng.random(n), rng.random(n)
    pi = 4 * float(np.mean(x * x + y * y < 1))
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "?")
    return here(), gpu, pi, time.perf_counter() - start


results = ray.get([estimate_pi.remote(seed) for seed in range(8)])
for node, gpu, pi, seconds in results:
    print(f"  seller node {node} (GPU {gpu}): pi ~ {pi:.5f} in {seconds:.2f} s", flush=True)
print(
    f"mean pi ~ {np.mean([r[2] for r in results]):.5f} from {len({r[0] for r in results})} "
    "seller nodes",
    flush=True,
)
