"""The Ray Jobs API of each lease, through its head's dashboard: submit the job, ask its
status, stop it, list the lease's nodes, and read the driver's log.

Each lease has its own head, token and dashboard port; a client is made on first use and
forgotten when the lease is released.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from computeswarm.cluster.nodes.ray_nodes import PortBlock

log = logging.getLogger("computeswarm.ray_jobs")
LIVE_LOG_TTL_S = 1.0
LOG_WAIT_S = 15.0  # the driver node's log agent can be slow on a busy host; release waits
# After a coordinator (re)start the hub's tunnels take a while to come back (a seller's
# keepalive re-handshakes; measured up to ~25 s on a loaded CI box): a lease released then,
# whose driver's node is behind one, waits for its log until a minute after the start.
RESTART_LOG_WAIT_S = 60.0
DRIVER_STARTED = "Running entrypoint"  # written by Ray on the driver node, not the head's stub
# Ray's word for a job whose supervisor (on the driver's node) died with the node: the
# job did not fail, its seller did, and Ray can say so before the heartbeats do.
DRIVER_NODE_LOST = ("JOB_SUPERVISOR_ACTOR_DIED", "JOB_SUPERVISOR_ACTOR_UNKNOWN_FAILURE")


@dataclass(frozen=True)
class Head:
    """How to reach a lease's head: its dashboard port block and its token."""

    lease_id: str
    port_base: int
    token: str


@dataclass(frozen=True)
class JobInfo:
    status: str  # PENDING | RUNNING | SUCCEEDED | FAILED | STOPPED
    error: str | None  # Ray's error type once failed
    end_time: float | None  # seconds


def submission_id(job_id: str, lease_id: str) -> str:
    return f"{job_id}-{lease_id}"


class RayJobs:
    """One Jobs API client per lease head, and the drivers' logs."""

    def __init__(self, head_ip: Callable[[], str], logs_dir: Path):
        self.head_ip = head_ip
        self.logs_dir = logs_dir
        self._clients: dict[str, object] = {}
        self._dashboards: dict[str, tuple[str, dict]] = {}
        self._live_logs: dict[str, tuple[float, str]] = {}  # job -> (fetched at, text)
        self._log_locks: dict[str, threading.Lock] = {}
        self._log_locks_guard = threading.Lock()
        self._log_deadlines: dict[str, float] = {}  # job -> when its release stops waiting
        self._started = time.monotonic()

    def client(self, head: Head):
        """The lease's Jobs API client, or None while its head is still starting."""
        if head.lease_id in self._clients:
            return self._clients[head.lease_id]
        from ray.job_submission import JobSubmissionClient

        url = f"http://{self.head_ip()}:{PortBlock(head.port_base).dashboard}"
        headers = {"Authorization": f"Bearer {head.token}"}
        try:
            client = JobSubmissionClient(url, headers=headers)
        except Exception:
            return None
        self._clients[head.lease_id] = client
        self._dashboards[head.lease_id] = (url, headers)
        return client

    def known(self, lease_id: str) -> bool:
        return lease_id in self._clients

    def forget(self, lease_id: str) -> None:
        self._clients.pop(lease_id, None)
        self._dashboards.pop(lease_id, None)

    def submit(self, head: Head, job_id: str, entrypoint: str, runtime_env: dict) -> str:
        return self._clients[head.lease_id].submit_job(
            entrypoint=entrypoint,
            runtime_env=runtime_env,
            entrypoint_resources={"cs_driver": 1},
            submission_id=submission_id(job_id, head.lease_id),
        )

    def info(self, head: Head, job_id: str) -> JobInfo | None:
        """The Ray job's status (None while the head does not answer)."""
        client = self.client(head)
        if client is None:
            return None
        try:
            info = client.get_job_info(submission_id(job_id, head.lease_id))
        except Exception as e:
            log.warning("lease %s: job status unavailable: %s", head.lease_id, e)
            return None
        error = getattr(info, "error_type", None)
        return JobInfo(
            str(info.status.value),
            str(getattr(error, "value", error)) if error else None,
            info.end_time / 1000 if info.end_time else None,
        )

    def stop(self, lease_id: str, job_id: str) -> None:
        """SIGTERM first, so the job is told before the end; then wait a little."""
        client = self._clients.get(lease_id)
        if client is None:
            return
        try:
            submission = submission_id(job_id, lease_id)
            if not client.get_job_status(submission).is_terminal():
                client.stop_job(submission)
                deadline = time.monotonic() + 10
                while (
                    time.monotonic() < deadline
                    and not client.get_job_status(submission).is_terminal()
                ):
                    time.sleep(0.5)
        except Exception as e:
            log.warning("lease %s: could not stop the job cleanly: %s", lease_id, e)

    def nodes_alive(self, head: Head) -> set[tuple[str, str]]:
        """(seller id, overlay address) of every live node in the lease's Ray cluster: the
        node's own cs-seller label and the address it joined from."""
        if self.client(head) is None:
            return set()
        url, headers = self._dashboards[head.lease_id]
        try:
            response = httpx.get(
                f"{url}/api/v0/nodes",
                params={"detail": "true", "limit": 1000, "timeout": 5},
                headers=headers,
                timeout=6,
            )
            rows = response.json()["data"]["result"]["result"]
        except Exception as e:  # the head is still starting, or busy: next tick
            log.debug("lease %s: node list unavailable: %s", head.lease_id, e)
            return set()
        out = set()
        for node in rows if isinstance(rows, list) else []:
            labels = node.get("labels") or {}
            if node.get("state") == "ALIVE" and labels.get("cs-lease") == head.lease_id:
                out.add((str(labels.get("cs-seller")), str(node.get("node_ip"))))
        return out

    # -- the driver's log -------------------------------------------------------------------

    def log_path(self, job_id: str) -> Path:
        return self.logs_dir / job_id / "driver.log"

    def logs(self, job_id: str, head: Head | None) -> str:
        """The driver's output so far: saved after the lease ended, else live from it.

        A live log is fetched from the lease at most once per LIVE_LOG_TTL_S per job, by one
        caller at a time: many buyers' clients following logs (`--follow` polls) cost the
        head and the API's threads one fetch, not one each (M5)."""
        saved = self.log_path(job_id)
        if saved.exists():
            return saved.read_text(errors="replace")
        with self._log_locks_guard:
            lock = self._log_locks.setdefault(job_id, threading.Lock())
        with lock:
            fetched_at, text = self._live_logs.get(job_id, (0.0, ""))
            if time.monotonic() - fetched_at < LIVE_LOG_TTL_S:
                return text
            text = self.fetch_log(job_id, head)
            self._live_logs[job_id] = (time.monotonic(), text)
            return text

    def fetch_log(self, job_id: str, head: Head | None, stub_ok: bool = False) -> str:
        """The driver's log from its node now ("" when the job has no running lease).
        `stub_ok`: else the head's stub (what Ray said before the driver started)."""
        client = self.client(head) if head else None
        if client is None:
            return ""
        submission = submission_id(job_id, head.lease_id)
        try:
            # The driver runs on a seller, and its log lives there: fetch that node's file
            # through the head (the Jobs API's own log call only sees the head's part).
            # The driver's node is tried first, then every node: on one machine (loopback)
            # Ray may record the driver against the head's node.
            # The head keeps a stub file of the same name ("Runtime env is setting up"),
            # so the first answer is not enough: the driver's own file says it ran.
            url, headers = self._dashboards[head.lease_id]
            nodes = [client.get_job_info(submission).driver_node_id]
        except Exception:
            return ""
        with contextlib.suppress(Exception):  # a busy head's node list: the driver's may answer
            nodes += _node_ids(url, headers)
        # Live, only the driver's own file, never the stub: a follower reads this text by
        # offset, and the stub is not a prefix of the real log (a line would be cut).
        stub = ""
        for node in dict.fromkeys(n for n in nodes if n):
            try:  # one node's busy log agent does not hide another's answer
                response = httpx.get(
                    f"{url}/api/v0/logs/file",
                    headers=headers,
                    timeout=10,
                    params={
                        "node_id": node,
                        "lines": 100_000,
                        "filename": f"job-driver-{submission}.log",
                    },
                )
            except httpx.HTTPError:
                continue
            if response.status_code == 200:
                if DRIVER_STARTED in response.text:
                    return response.text
                stub = stub or response.text
        return stub if stub_ok else ""

    def save_log(self, head: Head, job_id: str, path: Path) -> bool:
        """Keep the driver's output before the lease's nodes go away; True once it is kept.

        One try per call, so a release that waits for a log holds up no other lease: the
        driver's node can answer late (its log agent is busy as the job ends, or, after a
        coordinator restart, its seller's tunnel is not back yet). After the wait, what a
        follower last saw beats the head's stub ("setting up", or why the runtime env
        failed), which beats nothing."""
        if path.exists():
            return True
        give_up_at = self._log_deadlines.setdefault(
            job_id, max(time.monotonic() + LOG_WAIT_S, self._started + RESTART_LOG_WAIT_S)
        )
        logs = self.fetch_log(job_id, head)  # fresh, not the followers' cached copy
        if DRIVER_STARTED not in logs and self.known(head.lease_id):
            if time.monotonic() < give_up_at:
                return False
            _, live = self._live_logs.get(job_id, (0.0, ""))
            logs = live if DRIVER_STARTED in live else self.fetch_log(job_id, head, True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(logs)
        self._live_logs.pop(job_id, None)
        self._log_locks.pop(job_id, None)
        self._log_deadlines.pop(job_id, None)
        return True


def _node_ids(url: str, headers: dict) -> list[str]:
    response = httpx.get(f"{url}/api/v0/nodes", headers=headers, timeout=10, params={"limit": 1000})
    return [n["node_id"] for n in response.json()["data"]["result"]["result"]]
