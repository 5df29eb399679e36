"""The coordinator's object store as an operator on the head host reads it: through the
root key, from inside the hub's namespace (the store listens on the hub's overlay address
and its loopback, never on the underlay)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

READ = """
import json, sys
from pathlib import Path
from computeswarm.cluster.objects.client import ObjectStore
from computeswarm.cluster.objects.server import Credentials
head, contains = Path(sys.argv[1]), sys.argv[2]
root = json.loads((head / "objects" / "root.json").read_text())
UP = "object store up at "
log = (head.parent / "head.log").read_text().splitlines()
endpoint = [line.split(UP)[1].split()[0] for line in log if UP in line][-1]
store = ObjectStore(endpoint, Credentials(**root), "computeswarm")
keys = [o.key for o in store.list("") if contains in o.key]
print(json.dumps({k: store.get_bytes(k).decode(errors="replace") for k in keys}))
"""


def stored_texts(swarm, contains: str) -> dict[str, str]:
    """Every object whose key contains `contains`, as text."""
    head = Path(swarm.state_dir) / "head"
    argv = [sys.executable, "-c", READ, str(head), contains]
    if swarm.head.get("netns"):
        argv = ["ip", "netns", "exec", swarm.head["netns"], *argv]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)
