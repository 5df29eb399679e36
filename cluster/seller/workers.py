"""A seller's Ray worker nodes, one per lease it serves, started and stopped on request.

The agent reconciles what the coordinator assigns with what runs: a new assignment starts
`ray start --block` (inside the workload namespace, where the agent itself runs), a
withdrawn one stops that node's whole session. Sessions are recorded on disk, so an agent
restarted after a crash stops the nodes its predecessor left behind.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from computeswarm.cluster.nodes import sandbox
from computeswarm.cluster.nodes.ray_nodes import (
    PortBlock,
    node_env,
    seller_node_env,
    session_pids,
    start_node,
    stop_session,
    worker_argv,
)
from computeswarm.cluster.sellers.gpus import Gpu
from computeswarm.jobs import contract

if TYPE_CHECKING:
    from computeswarm.cluster.seller.datasets import LeaseDatasets
    from computeswarm.cluster.seller.join import Enrollment
    from computeswarm.cluster.seller.volumes import LeaseVolumes, Mounted

log = logging.getLogger("computeswarm.agent")
READY_MARK = "Ray runtime started"
SESSIONS_FILE = "worker-sessions.json"


class LeaseWorkers:
    def __init__(
        self,
        ip: str,
        state_dir: Path,
        gpus: list[Gpu],
        datasets: LeaseDatasets | None = None,
        volumes: LeaseVolumes | None = None,
    ):
        self.ip = ip
        self.state_dir = state_dir
        self.gpus = gpus
        self.datasets = datasets  # fetches the dataset versions a lease reads
        self.volumes = volumes  # fetches and commits the volumes a lease mounts
        self.nodes: dict[str, tuple[subprocess.Popen, Path]] = {}
        # Leases whose datasets are being fetched before their node starts: "fetching", or
        # "failed" (reported, so the coordinator replaces this seller).
        self.preparing: dict[str, str] = {}
        self.views: dict[str, dict[str, Path]] = {}  # lease -> its dataset folders
        self._stoppers: list[tuple[int, threading.Thread]] = []
        self._temp_dirs: dict[str, Path] = {}
        self._lock = threading.RLock()  # the agent's loop and the fetch threads

    @classmethod
    def of(cls, enrollment: Enrollment, state_dir: Path) -> LeaseWorkers:
        """An enrolled box's workers; datasets come over the overlay (their own client:
        a long fetch never holds up a heartbeat) into the cache in its state dir."""
        from computeswarm.cluster.client import CoordinatorClient
        from computeswarm.cluster.seller.datasets import LeaseDatasets
        from computeswarm.cluster.seller.volumes import LeaseVolumes

        client = CoordinatorClient(
            enrollment.hub["overlay_api_url"], enrollment.api_key, timeout=60
        )
        datasets = LeaseDatasets.in_state_dir(client, state_dir, enrollment.cache_gb)
        volumes = LeaseVolumes(client, state_dir / "volumes")
        return cls(enrollment.node_ip, state_dir, enrollment.gpu_list, datasets, volumes)

    def stop_leftovers(self) -> None:
        """Stop worker nodes a previous agent left running (it was killed)."""
        path = self.state_dir / SESSIONS_FILE
        if path.exists():
            for session in json.loads(path.read_text()).values():
                if session_pids(session):
                    log.warning("stopping a worker node left by a previous agent (%d)", session)
                    stop_session(session, grace_s=5)
            path.unlink()
        if self.volumes is not None:  # their nodes are stopped: commit what they wrote
            self.volumes.recover()

    def reconcile(self, assignments: list[dict]) -> None:
        wanted = {a["lease_id"]: a for a in assignments}
        with self._lock:
            for lease_id in [k for k in (*self.nodes, *self.preparing) if k not in wanted]:
                self._stop(lease_id)
            for lease_id, assignment in wanted.items():
                if lease_id not in self.nodes and lease_id not in self.preparing:
                    self._start(assignment)

    def statuses(self) -> dict[str, str]:
        with self._lock:
            out = {
                lease: "failed" if s == "failed" else "starting"
                for lease, s in self.preparing.items()
            }
            nodes = list(self.nodes.items())
        for lease_id, (process, log_path) in nodes:
            if process.poll() is not None:
                out[lease_id] = "failed"
            elif log_path.exists() and READY_MARK in log_path.read_text(errors="replace"):
                out[lease_id] = "running"
            else:
                out[lease_id] = "starting"
        return out

    @property
    def starting(self) -> bool:
        return "starting" in self.statuses().values()

    def stop_all(self) -> None:
        """Stop every node, including those still being stopped: none outlives the agent."""
        with self._lock:
            for lease_id in [*self.nodes, *self.preparing]:
                self._stop(lease_id, wait=True)
        for session, stopper in self._stoppers:
            stopper.join(10)
            if session_pids(session):
                stop_session(session, grace_s=1)
        self._stoppers.clear()

    def _start(self, a: dict) -> None:
        """Start the lease's node; first, off the agent's loop, fetch its datasets and
        volumes."""
        wants_data = a.get("datasets") and self.datasets is not None
        if not wants_data and not (a.get("volumes") and self.volumes is not None):
            self._launch(a, {}, [])
            return
        self.preparing[a["lease_id"]] = "fetching"
        threading.Thread(target=self._fetch_then_launch, args=(a,), daemon=True).start()

    def _fetch_then_launch(self, a: dict) -> None:
        lease_id = a["lease_id"]
        with self._lock:
            in_use = {p.name for views in self.views.values() for p in views.values()}
        try:
            views = self.datasets.fetch(lease_id, in_use) if a.get("datasets") else {}
            mounts = []
            if a.get("volumes") and self.volumes is not None:
                uid = int(a.get("uid") or sandbox.lease_uid(a["port_base"]))
                mounts = self.volumes.fetch(lease_id, uid if sandbox.check().ok else None)
        except Exception as e:  # reported as a failed node: the market replaces this seller
            log.error("lease %s: cannot fetch its datasets or volumes: %s", lease_id, e)
            with self._lock:
                if lease_id in self.preparing:
                    self.preparing[lease_id] = "failed"
            return
        with self._lock:
            if self.preparing.pop(lease_id, None) is None:  # withdrawn while fetching
                if self.volumes is not None:
                    self.volumes.discard(lease_id)
                return
            self._launch(a, views, mounts)

    def _launch(self, a: dict, views: dict[str, Path], mounts: list[Mounted]) -> None:
        lease_dir = self.state_dir / "leases" / a["lease_id"]
        lease_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        scratch = _temp_dir(a["lease_id"], a["port_base"])  # this start's own
        files = a.get("files") or {}
        uid = int(a.get("uid") or sandbox.lease_uid(a["port_base"]))
        box = sandbox.Sandbox(
            uid,
            scratch,
            read_only=(*files.get("read", ()), *(str(p) for p in views.values())),
            # Only folders that exist here: on a real seller the coordinator's are elsewhere.
            read_write=tuple(p for p in files.get("write", ()) if Path(p).is_dir()),
            mounts=tuple((str(m.folder), m.mount, m.readonly) for m in mounts),
        )
        boxed = sandbox.check().ok
        if boxed:
            box.prepare()
        token = sandbox.write_token(
            scratch if boxed else lease_dir, a["token"], uid if boxed else None
        )
        model = self.gpus[0].model if self.gpus else "none"
        vram = min((g.vram_gb for g in self.gpus), default=0)
        argv = worker_argv(
            head=a["head"],
            ip=self.ip,
            ports=PortBlock(a["port_base"]),
            temp_dir=Path(sandbox.HOME) / "ray" if boxed else scratch,
            cpus=a["cpus"],
            gpus=a["gpus"],
            memory_bytes=a["memory_bytes"],
            object_store_bytes=min(a["memory_bytes"] // 4, 256 * 2**20),
            resources={"cs_driver": 1} if a["driver"] else {},
            # Pipeline stages are sized by VRAM: the smallest leased GPU's bounds a stage.
            labels={**a["labels"], "cs-gpu": model, "cs-vram-gb": str(vram)},
        )
        # Where this node's datasets are: Ray's workers and the driver inherit it.
        dataset_env = {contract.DATASETS: json.dumps({r: str(p) for r, p in views.items()})}
        if mounts:  # sandboxed, each volume is at its mount path; else, in its folder
            places = {m.mount: m.mount if boxed else str(m.folder) for m in mounts}
            control = sandbox.HOME if boxed else str(scratch)
            dataset_env |= {contract.VOLUMES: json.dumps(places), contract.CONTROL_DIR: control}
        log_path = lease_dir / "worker.log"
        if log_path.exists():  # a node that failed: its log kept for the operator
            log_path.replace(lease_dir / "worker.log.1")
        if boxed:
            env = box.env(
                {
                    **node_env(Path(sandbox.HOME) / token.name),
                    **seller_node_env(self.ip),
                    **dataset_env,
                }
            )
            argv = box.argv(argv)
        else:
            log.warning("lease %s: NOT sandboxed (%s)", a["lease_id"], sandbox.check().reason)
            env = {**node_env(token), **seller_node_env(self.ip), **dataset_env}
        if mounts and not boxed:
            scratch.mkdir(parents=True, exist_ok=True)
        process = start_node(argv, env, log_path)
        if mounts and self.volumes is not None:
            self.volumes.watch(a["lease_id"], scratch)
        self.nodes[a["lease_id"]] = (process, log_path)
        self.views[a["lease_id"]] = views
        self._temp_dirs[a["lease_id"]] = scratch
        self._save()
        log.info(
            "lease %s: worker node starting (%d GPU%s, head %s)",
            a["lease_id"],
            a["gpus"],
            "" if a["gpus"] == 1 else "s",
            a["head"],
        )

    def _stop(self, lease_id: str, wait: bool = False) -> None:
        self.views.pop(lease_id, None)
        if self.preparing.pop(lease_id, None) is not None:
            return  # no node yet (its fetch, if still running, will not start one)
        process, _ = self.nodes.pop(lease_id)
        temp_dir = self._temp_dirs.pop(lease_id, None)  # (the sandbox's scratch: its token too)
        self._save()
        (self.state_dir / "leases" / lease_id / "token").unlink(missing_ok=True)
        log.info("lease %s: stopping the worker node", lease_id)
        # Once the node is stopped, its volumes are committed a last time.
        then = (lambda: self.volumes.finish(lease_id)) if self.volumes else None
        if wait:
            _stop_node(process.pid, temp_dir, then)
        else:
            stopper = threading.Thread(
                target=_stop_node, args=(process.pid, temp_dir, then), daemon=True
            )
            stopper.start()
            self._stoppers.append((process.pid, stopper))

    def _save(self) -> None:
        sessions = {lease: process.pid for lease, (process, _) in self.nodes.items()}
        (self.state_dir / SESSIONS_FILE).write_text(json.dumps(sessions))


def _temp_dir(lease_id: str, port_base: int) -> Path:
    """A fresh scratch per node start. A node that failed is restarted at once, while its
    stopper still runs: had both the same folder, the stopper's rmtree would delete the new
    node's token, and the mount points bwrap made in it, which detaches those binds in the
    running sandbox (its venv vanished: "can't open file .venv/bin/ray", seen in CI)."""
    return Path(f"/tmp/cs-ray/{lease_id}-{port_base}-{secrets.token_hex(3)}")


def _stop_node(session: int, temp_dir: Path | None, then=None) -> None:
    """Stop a lease node's whole session, run `then`, then remove its Ray temp dir."""
    stop_session(session, grace_s=5)
    if then is not None:
        then()
    if temp_dir is not None:
        shutil.rmtree(temp_dir, ignore_errors=True)
