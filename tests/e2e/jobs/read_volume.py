"""A buyer's job that reads a volume on every node of its lease (for the e2e tests)."""

import json
import os

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

MOUNT = os.environ["VOLUME_MOUNT"]


@ray.remote(num_cpus=0)
def read() -> dict:
    with open(os.path.join(MOUNT, "probe.json")) as f:
        found = json.load(f)
    try:
        open(os.path.join(MOUNT, "x"), "w").close()
        writable = True
    except OSError:
        writable = False
    return {"node": ray.get_runtime_context().get_node_id(), "read": found, "writable": writable}


ray.init()
nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU")]
reads = ray.get(
    [
        read.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote()
        for n in nodes
    ]
)
print("READS " + json.dumps(reads), flush=True)
