"""Ray nodes as processes we own: started in their own session, stopped by PID.

A Ray node is a tree of processes (gcs_server, raylet, dashboard, agents, workers) that
rename themselves (`ray::...`) and can ignore SIGTERM for a while. Each node starts in a
new session, and stopping it signals every process of that session, found by PID in
/proc, then reaps what is left. Never `ray stop`: it kills every Ray on the machine.

Every node gets `RAY_AUTH_MODE=token` with its lease's token, its own temp dir and port
block, explicit memory limits, and WAN-fit health checks (DESIGN.md rule 6).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from computeswarm.jobs import contract

PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True)
class PortBlock:
    """Every port one Ray node listens on, from `base` upward (100 ports)."""

    base: int

    SIZE = 100

    @property
    def gcs(self) -> int:
        return self.base

    @property
    def dashboard(self) -> int:
        return self.base + 1

    @property
    def serve(self) -> int:
        """A serve lease's HTTP proxy (on the head): inside the block, so inside the fence."""
        return self.base + 9

    def argv(self, *, head: bool) -> list[str]:
        b = self.base
        ports = [
            f"--node-manager-port={b + 2}",
            f"--object-manager-port={b + 3}",
            f"--runtime-env-agent-port={b + 4}",
            f"--dashboard-agent-grpc-port={b + 5}",
            f"--dashboard-agent-listen-port={b + 6}",
            f"--metrics-export-port={b + 7}",
            f"--min-worker-port={b + 20}",
            f"--max-worker-port={b + self.SIZE - 1}",
        ]
        if head:
            ports += [
                f"--port={self.gcs}",
                f"--dashboard-port={self.dashboard}",
                f"--ray-client-server-port={b + 8}",
            ]
        return ports


def head_argv(
    *, ip: str, ports: PortBlock, temp_dir: Path, object_store_bytes: int, system_config: dict
) -> list[str]:
    """A lease head: no CPUs, no GPUs (buyer code never runs on the head host)."""
    return [
        _ray(),
        "start",
        "--head",
        "--block",
        f"--node-ip-address={ip}",
        f"--dashboard-host={ip}",
        "--include-dashboard=true",
        *ports.argv(head=True),
        "--num-cpus=0",
        "--num-gpus=0",
        f"--temp-dir={temp_dir}",
        f"--object-store-memory={object_store_bytes}",
        "--disable-usage-stats",
        f"--system-config={json.dumps(system_config)}",
    ]


def worker_argv(
    *,
    head: str,
    ip: str,
    ports: PortBlock,
    temp_dir: Path,
    cpus: float,
    gpus: int,
    memory_bytes: int,
    object_store_bytes: int,
    resources: dict[str, float],
    labels: dict[str, str],
) -> list[str]:
    """A seller's node in a lease: only the leased GPUs, a memory cap, its labels."""
    return [
        _ray(),
        "start",
        "--block",
        f"--address={head}",
        f"--node-ip-address={ip}",
        *ports.argv(head=False),
        f"--num-cpus={cpus:g}",
        f"--num-gpus={gpus}",
        f"--memory={memory_bytes}",
        f"--object-store-memory={object_store_bytes}",
        f"--resources={json.dumps(resources)}",
        "--labels=" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]


def node_env(token_path: Path) -> dict[str, str]:
    """Environment for a node and everything it runs: token auth, our venv on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    return {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_path),
        "PATH": f"{bin_dir}:{path}" if bin_dir not in path.split(":") else path,
        "RAY_USAGE_STATS_ENABLED": "0",
    }


def seller_node_env(ip: str) -> dict[str, str]:
    """What a seller's node tells everything it runs about its network.

    gloo/NCCL are pinned to the interface holding the overlay address: left alone they
    advertise whatever the host name resolves to (127.0.0.1 in a namespace). And
    `COMPUTESWARM_NODE_IP` lets a driver attach to its own node: Ray finds "local" raylets
    with `ps`, which on a one-machine testbed also shows the head's, and prefers that one.
    """
    out = {contract.NODE_IP: ip}
    interface = interface_of(ip)
    if interface is not None:
        out |= {"GLOO_SOCKET_IFNAME": interface, "NCCL_SOCKET_IFNAME": interface}
    return out


def interface_of(ip: str) -> str | None:
    """The network interface (in this namespace) that has address `ip`."""
    done = subprocess.run(
        ["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=False
    )
    for line in done.stdout.splitlines():
        fields = line.split()
        # "3: cs0    inet 10.90.0.2/32 scope global cs0 ..."
        if len(fields) > 3 and fields[2] == "inet" and fields[3].split("/")[0] == ip:
            return fields[1].split("@")[0]
    return None


def start_node(
    argv: list[str], env: dict[str, str], log: Path, netns: str | None = None
) -> subprocess.Popen:
    """Start a node in a new session (its session id names the whole process tree)."""
    from computeswarm.tunnel.netns import ns_argv

    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            ns_argv(argv, netns),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def stop_session(session_id: int, grace_s: float = 10.0) -> list[int]:
    """SIGTERM every process of the session, SIGKILL what is left after `grace_s`."""
    pids = session_pids(session_id)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and session_pids(session_id):
        reap()
        time.sleep(0.1)
    for pid in session_pids(session_id):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.1)
    reap()
    return pids


def session_pids(session_id: int) -> list[int]:
    """Live (non-zombie) processes whose session is `session_id`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == session_id:
            found.append(int(entry))
    return found


def process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot), or None if there is none: with
    the PID, it names one process for good (a PID alone is reused)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def become_subreaper() -> None:
    """Adopt orphaned descendants (Ray's workers outlive their parents), so `reap` can
    collect them instead of leaving zombies under an init that does not reap."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def reap() -> None:
    """Collect exited children we adopted; never blocks."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _ray() -> str:
    return str(Path(sys.executable).parent / "ray")
