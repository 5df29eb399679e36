"""The dataset versions a lease reads, fetched into this seller's cache before its node
starts: manifests and chunks come from the coordinator (which checks that this seller is
in the lease and the chunk is in its versions), over the overlay."""

from __future__ import annotations

import logging
from pathlib import Path

from computeswarm.cluster.client import CoordinatorClient
from computeswarm.data.cache import DatasetCache
from computeswarm.data.manifest import Manifest

log = logging.getLogger("computeswarm.agent")


class LeaseDatasets:
    def __init__(self, client: CoordinatorClient, cache: DatasetCache):
        self.client, self.cache = client, cache
        self.bytes_fetched = 0  # over this agent's life (the status file shows it)

    @classmethod
    def in_state_dir(cls, client: CoordinatorClient, state_dir: Path, cache_gb: float):
        return cls(client, DatasetCache(state_dir / "datasets", int(cache_gb * 2**30)))

    def fetch(self, lease_id: str, in_use: set[str] = frozenset()) -> dict[str, Path]:
        """{`[OWNER/]NAME@N`: its read-only folder here} for every version the lease reads."""
        views = {}
        for item in self.client.lease_datasets(lease_id):
            manifest = Manifest.model_validate(item["manifest"])
            if manifest.id != item["id"]:
                raise ValueError(f"lease {lease_id}: the manifest of {item['ref']} is not its id")
            folder, fetched = self.cache.view(
                manifest, lambda sha: self.client.lease_chunk(lease_id, sha), in_use
            )
            self.bytes_fetched += fetched.bytes_fetched
            log.info(
                "lease %s: dataset %s ready (%d bytes fetched, %d from the cache)",
                lease_id,
                item["ref"],
                fetched.bytes_fetched,
                fetched.bytes_kept,
            )
            views[item["ref"]] = folder
        return views
