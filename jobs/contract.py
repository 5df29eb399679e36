"""The contract between the coordinator and the drivers that run inside buyers' Ray jobs.

Both sides import these names: the coordinator (`cluster/kinds/`) renders a driver's
entrypoint and environment, and writes the spec file; the drivers (`jobs/train/run.py`,
`tune/run.py`, `serve/run.py`) read them and write their artifacts into the run folder,
where the coordinator reads them back. A training run's folder is a prefix in the object
store (`jobs/run_store.py`): its sellers and the coordinator are separate machines.
Nothing here imports the coordinator's code: the drivers run on sellers, inside the
lease's sandbox.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from computeswarm.jobs.spec import AnyJob, job_from_record

# -- the environment a driver starts with ----------------------------------------------------
JOB_ID = "COMPUTESWARM_JOB_ID"
LEASE_ID = "COMPUTESWARM_LEASE_ID"
RUN_DIR = "COMPUTESWARM_RUN_DIR"  # the job's run folder (read-write; every kind but script)
RUN_PREFIX = "COMPUTESWARM_RUN_PREFIX"  # training: the run folder's prefix in the store instead
NODE_IP = "COMPUTESWARM_NODE_IP"  # this node's overlay address, for ray.init (cluster/nodes)
INIT_ADAPTER = "COMPUTESWARM_INIT_ADAPTER"  # lora: the registered adapter to start from (STORED)
INIT_VERSION = "COMPUTESWARM_INIT_VERSION"  # lora: its version id
PRICE_MICROS = "COMPUTESWARM_PRICE_MICROS"  # sweep: the lease's dearest price per GPU-hour
ADAPTERS = "COMPUTESWARM_ADAPTERS"  # serve: JSON {served name: adapter folder or STORED ref}
# A folder in the object store, read with the lease's key: "store:<key prefix>" (a
# registered model version; jobs/artifacts.py fetches it onto the node that needs it).
STORED = "store:"
# Dataset versions on this node: JSON {"[OWNER/]NAME@N": folder}. Set by the seller's agent
# on the node it starts (the folder is its cache's read-only view), not by the coordinator.
DATASETS = "COMPUTESWARM_DATASETS"
# Volumes on this node: JSON {mount path: folder} (the same path inside a sandbox, where
# each is bound at its mount; the folder on a seller that cannot sandbox). Set by the agent.
VOLUMES = "COMPUTESWARM_VOLUMES"
# A folder only this node's job and the seller's agent write: `commit_volumes` asks there.
CONTROL_DIR = "COMPUTESWARM_CONTROL_DIR"
COMMIT_REQUEST = "computeswarm-commit"
COMMIT_DONE = "computeswarm-committed"
SERVE_HOST = "COMPUTESWARM_SERVE_HOST"  # serve: where Serve's HTTP proxy listens
SERVE_PORT = "COMPUTESWARM_SERVE_PORT"  # serve: its port (in the lease's own block)
SERVE_PROXY = "COMPUTESWARM_SERVE_PROXY"  # serve: HeadOnly | EveryNode | Disabled
# The object store, with the lease's own key in the standard AWS_* variables: its keys
# reach only the lease's prefixes, and stop working when the lease ends.
S3_ENDPOINT = "COMPUTESWARM_S3_ENDPOINT"  # http://<hub overlay address>:<port>
S3_BUCKET = "COMPUTESWARM_S3_BUCKET"
S3_PREFIX = "COMPUTESWARM_S3_PREFIX"  # the prefix the lease writes to: <account>/jobs/<job>/

# -- what a driver reads and writes -----------------------------------------------------------
SPEC_FILE = "computeswarm-job.json"  # the validated spec, written into the working_dir
STEPS_LOG = "steps.log"  # training: "<step> <loss> <seconds>" per line
RESULT_FILE = "result.json"  # training and sweeps: the outcome (metrics, adapter, checkpoint)
SWEEP_FILE = "sweep.json"  # sweeps: the driver's status (launching_done, busy_node_ips)
TRIALS_DIR = "trials"  # sweeps: one record per trial
SERVE_FILE = "serve.json"  # serve: state (ready, failed, stopped), models, replicas

# -- the drivers -----------------------------------------------------------------------------
# -I: the buyer's working_dir (the current folder, and on PYTHONPATH) cannot shadow the
# driver's modules.
TRAIN_DRIVER = f"python -I -m computeswarm.jobs.train.run {SPEC_FILE}"
SWEEP_DRIVER = f"python -I -m computeswarm.tune.run {SPEC_FILE}"
SERVE_DRIVER = f"python -I -m computeswarm.serve.run {SPEC_FILE}"


def write_spec(working_dir: Path, spec: Mapping) -> None:
    """The coordinator's side: the stored (validated) spec, for the driver to read."""
    (Path(working_dir) / SPEC_FILE).write_text(json.dumps(dict(spec)))


def read_spec(path: str | Path) -> AnyJob:
    """The driver's side: the spec as its pydantic model (validated again on the way in:
    the file travels inside the buyer's working_dir)."""
    return job_from_record(json.loads(Path(path).read_text()))


def dataset_file(value: str, env: Mapping[str, str] = os.environ) -> Path:
    """The file a spec's `dataset` names, on this node: a working_dir file as it is; a
    pinned version's file (`NAME@N/FILE`) in the folder the seller's agent fetched."""
    from computeswarm.data.refs import is_dataset_ref, parse_ref

    if not is_dataset_ref(value):
        return Path(value)
    ref = parse_ref(value)
    folder = json.loads(env.get(DATASETS) or "{}").get(ref.version_key)
    if folder is None:
        raise FileNotFoundError(f"dataset {ref.version_key} is not on this node ({DATASETS})")
    return Path(folder) / (ref.path or "")


def run_dir(env: Mapping[str, str] = os.environ, default: str | None = None) -> Path:
    """The run folder the coordinator chose for this job (never one the upload names)."""
    value = env.get(RUN_DIR) or default
    if value is None:
        raise KeyError(f"{RUN_DIR} is not set: the coordinator sets it for every driver")
    return Path(value)


def volume_path(mount: str, env: Mapping[str, str] = os.environ) -> Path:
    """Where a spec's volume mount is on this node (the mount path itself when sandboxed)."""
    return Path(json.loads(env.get(VOLUMES) or "{}").get(mount, mount))


def commit_volumes(timeout_s: float = 300.0, env: Mapping[str, str] = os.environ) -> None:
    """Ask this node's agent to commit its read-write volumes now, and wait until it has
    (a later job on any seller sees what was written before this call). Raises
    RuntimeError with the agent's reason when the commit was refused (e.g. the volume is
    full) and TimeoutError when no answer came."""
    import time

    folder = Path(env.get(CONTROL_DIR) or "/tmp")
    done = folder / COMMIT_DONE
    done.unlink(missing_ok=True)
    (folder / COMMIT_REQUEST).write_text("commit")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if done.exists() and (answer := done.read_text()):
            done.unlink(missing_ok=True)
            if answer != "ok":
                raise RuntimeError(f"the volumes were not committed: {answer}")
            return
        time.sleep(0.5)
    raise TimeoutError(f"no commit answer from the seller's agent in {timeout_s:.0f} s")
