"""A buyer's job that reports where it runs and what it can reach (for the e2e tests)."""

import json
import os
import socket
import sys
import time

targets = json.loads(os.environ.get("PROBE_TARGETS", "[]"))
reach = {}
for host, port in targets:
    try:
        socket.create_connection((host, port), timeout=2).close()
        reach[f"{host}:{port}"] = "open"
    except OSError as e:
        reach[f"{host}:{port}"] = type(e).__name__
print(
    "PROBE " + json.dumps({"netns": os.readlink("/proc/self/ns/net"), "reach": reach}), flush=True
)
if mount := os.environ.get("VOLUME_MOUNT"):  # a volume: what the job writes persists
    with open(os.path.join(mount, "probe.json"), "w") as f:
        json.dump({"netns": os.readlink("/proc/self/ns/net")}, f)
time.sleep(float(os.environ.get("HOLD_S", "0")))
print("done", flush=True)
sys.exit(0)
