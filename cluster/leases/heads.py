"""Lease heads: the Ray head process of each lease on the coordinator's host, its port
block, and its Ray temp dir (removed with the head).

A head has no CPUs and no GPUs: buyer tasks pinned to it would run on the coordinator's
host, so it starts in a sandbox as the lease's uid when this host can make one.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from computeswarm.cluster.leases.rules import free_port_base
from computeswarm.cluster.nodes import sandbox
from computeswarm.cluster.nodes.ray_nodes import (
    PortBlock,
    head_argv,
    node_env,
    session_pids,
    start_node,
    stop_session,
)

log = logging.getLogger("computeswarm.heads")
HEAD_PORT_START = 20000
HEAD_SLOTS = 50
HEAD_OBJECT_STORE_BYTES = 80 * 1024 * 1024
# A released head's job is over: no reason to let Ray drain for its default 30 s.
HEAD_STOP_GRACE_S = 3.0
RAY_TEMP_ROOT = Path("/tmp/cs-ray")


def ray_temp_dir(lease_id: str) -> Path:
    """The head's scratch: Ray's temp dir, the lease token (its sandbox's /tmp)."""
    return RAY_TEMP_ROOT / lease_id


class Heads:
    """The heads this coordinator runs, by lease id."""

    def __init__(
        self,
        state_dir: Path,
        head_ip: Callable[[], str],
        ray_system_config: dict | None = None,
    ):
        self.state_dir = state_dir
        self.head_ip = head_ip
        self.ray_system_config = ray_system_config
        self.processes: dict[str, subprocess.Popen] = {}
        self._stoppers: list[tuple[int, threading.Thread]] = []

    def lease_dir(self, lease_id: str) -> Path:
        """The coordinator's own files of a lease (the head's log)."""
        return self.state_dir / "leases" / lease_id

    def free_block(self, used: Iterable[int]) -> int | None:
        """A port block no active lease uses and no other program holds; None if all are."""
        return free_port_base(
            used, HEAD_PORT_START, PortBlock.SIZE, HEAD_SLOTS, is_free=self._block_free
        )

    def _block_free(self, base: int) -> bool:
        """Can a head bind its GCS and dashboard ports here? (Another coordinator, or any
        program, may hold them on this host.)"""
        for port in (base, base + 1):
            with socket.socket() as probe:
                try:
                    probe.bind((self.head_ip(), port))
                except OSError:
                    return False
        return True

    def start(self, lease_id: str, port: int, token: str) -> subprocess.Popen:
        lease_dir = self.lease_dir(lease_id)
        lease_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        box = sandbox.Sandbox(sandbox.lease_uid(port), ray_temp_dir(lease_id))
        boxed = sandbox.check().ok
        if boxed:
            box.prepare()
        scratch = box.scratch if boxed else lease_dir
        token_path = sandbox.write_token(scratch, token, box.uid if boxed else None)
        argv = head_argv(
            ip=self.head_ip(),
            ports=PortBlock(port),
            temp_dir=Path(sandbox.HOME) / "ray" if boxed else ray_temp_dir(lease_id),
            object_store_bytes=HEAD_OBJECT_STORE_BYTES,
            system_config=self.ray_system_config,
        )
        if boxed:
            inside_token = Path(sandbox.HOME) / token_path.name
            argv, env = box.argv(argv), box.env(node_env(inside_token))
        else:
            env = node_env(token_path)
        process = start_node(argv, env, lease_dir / "head.log")
        self.processes[lease_id] = process
        log.info(
            "lease %s: head starting on %s:%d (%s)",
            lease_id,
            self.head_ip(),
            port,
            f"sandboxed as uid {box.uid}" if boxed else "NOT sandboxed: " + sandbox.check().reason,
        )
        return process

    def stop_later(self, lease_id: str, session: int | None) -> None:
        """Stop a released lease's head off the scheduler's thread (Ray ignores SIGTERM a
        while); `stop_all` waits for these, so a coordinator stop never orphans one."""
        self.processes.pop(lease_id, None)
        if not session:  # it never started: only its scratch may be there
            shutil.rmtree(ray_temp_dir(lease_id), ignore_errors=True)
            return
        stopper = threading.Thread(target=stop_head, args=(session, lease_id), daemon=True)
        stopper.start()
        self._stoppers.append((session, stopper))

    def stop_all(self) -> None:
        """Stop every head (on shutdown): none is left behind, nor its temp dir."""
        for lease_id, process in list(self.processes.items()):
            stop_head(process.pid, lease_id)
        self.processes.clear()
        for session, stopper in self._stoppers:
            stopper.join(15)
            if session_pids(session):
                stop_session(session, grace_s=1)
        self._stoppers.clear()


def stop_head(session: int, lease_id: str, grace_s: float = HEAD_STOP_GRACE_S) -> None:
    """Stop a lease's head, then remove its scratch (Ray's temp dir, its token)."""
    stop_session(session, grace_s)
    shutil.rmtree(ray_temp_dir(lease_id), ignore_errors=True)
