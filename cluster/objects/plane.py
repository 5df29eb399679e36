"""The coordinator's object store: the embedded server or an external S3 endpoint, the
root client, and the lease keys, started with the coordinator and supervised by it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from computeswarm.cluster.config import StorageConfig
from computeswarm.cluster.objects.access import LeaseKeys
from computeswarm.cluster.objects.client import REGION, ObjectStore
from computeswarm.cluster.objects.layout import Grant
from computeswarm.cluster.objects.server import Credentials, EmbeddedObjectStore, free_port
from computeswarm.jobs import contract

log = logging.getLogger("computeswarm.objects")
KEY_SWEEP_S = 30.0


class ObjectPlane:
    def __init__(self, config: StorageConfig, root: Path):
        self.config = config
        self.embedded = None if config.endpoint else EmbeddedObjectStore(root)
        # The port is fixed before the hub's fence is drawn (it opens it on the overlay).
        self.port = config.port or (free_port("0.0.0.0") if self.embedded else 0)
        self.endpoint: str | None = config.endpoint
        self.store: ObjectStore | None = None
        self.keys: LeaseKeys | None = None
        self._last_sweep = time.monotonic()

    @property
    def bucket(self) -> str:
        return self.config.bucket

    @property
    def overlay_ports(self) -> tuple[int, ...]:
        """Hub ports every spoke reaches for the store (its keys do the rest): the
        embedded store's; an external store is not on the hub."""
        return (self.port,) if self.embedded else ()

    @property
    def quota(self) -> int:
        """Per buyer: bytes in the store before its submissions stop."""
        return self.config.quota_bytes_per_account

    def bytes_of(self, account_id: str) -> int:
        return self.store.bytes_of(account_id)

    def bytes_by_account(self) -> dict[str, int]:
        return self.store.bytes_by_account()

    def start(self, host: str) -> None:
        """`host`: the hub's overlay address, the only one the embedded store listens on."""
        self.host = host
        if self.embedded:
            self.endpoint = self.embedded.start(host, self.port)
        root = self._root()
        self.store = ObjectStore(self.endpoint, root, self.bucket)
        self.store.ensure_bucket()
        self.keys = LeaseKeys(self.endpoint, root, self.bucket)

    def stop(self) -> None:
        if self.embedded:
            self.embedded.stop()

    def supervise(self) -> bool:
        """Restart the embedded store if it died (its volume keeps every object and key);
        True when it had to."""
        if not self.embedded or self.embedded.alive() or self.endpoint is None:
            return False
        log.warning("the object store exited; restarting it")
        self.embedded.start(self.host, self.port)
        return True

    def ping(self) -> None:
        if self.store is None:
            raise RuntimeError("object store not started")
        self.store.ping()

    def issue(self, lease_id: str, grant: Grant) -> dict[str, str]:
        """A key for this lease, as the environment its driver and workers get."""
        return lease_env(self.endpoint, self.bucket, self.keys.issue(lease_id, grant), grant)

    def revoke(self, lease_id: str) -> None:
        self.keys.revoke(lease_id)

    def tend(self, active_leases: Callable[[], set[str]]) -> None:
        """Each round of the coordinator's health loop: restart the store if it died; now
        and then, revoke keys of leases that are over (a revocation that failed at
        release, or one a crash skipped)."""
        self.supervise()
        if time.monotonic() - self._last_sweep >= KEY_SWEEP_S:
            self._last_sweep = time.monotonic()
            self.revoke_all_but(active_leases())

    def revoke_all_but(self, active: set[str]) -> list[str]:
        """Revoke the key of every lease not in `active`; returns their ids."""
        stale = [lease_id for lease_id in self.keys.issued() if lease_id not in active]
        for lease_id in stale:
            self.revoke(lease_id)
            log.warning("revoked the store key of lease %s (the lease is over)", lease_id)
        return stale

    def _root(self) -> Credentials:
        if self.embedded:
            return self.embedded.root_credentials()
        return Credentials(self.config.access_key, self.config.secret_key)


def lease_env(endpoint: str, bucket: str, key: Credentials, grant: Grant) -> dict[str, str]:
    """The store as a lease sees it: the standard AWS variables (boto3, pyarrow and the
    buyer's own code find them), the bucket, and the prefix it writes to."""
    out = {
        "AWS_ACCESS_KEY_ID": key.access_key,
        "AWS_SECRET_ACCESS_KEY": key.secret_key,
        "AWS_REGION": REGION,
        "AWS_ENDPOINT_URL": endpoint,
        # Servers of the MinIO family refuse the SDKs' streaming checksums (411).
        "AWS_REQUEST_CHECKSUM_CALCULATION": "WHEN_REQUIRED",
        "AWS_RESPONSE_CHECKSUM_VALIDATION": "WHEN_REQUIRED",
        contract.S3_ENDPOINT: endpoint,
        contract.S3_BUCKET: bucket,
    }
    if grant.write:
        out[contract.S3_PREFIX] = grant.write[0]
    return out
