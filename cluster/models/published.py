"""Model versions as leases read them: objects in the store, never the registry's folders.

The registry keeps each version's files on the coordinator's disk (downloads, hashes). A
lease's nodes are other machines, so a version a job uses is published into the store
under `<account>/models/<name>/<N>/` the first time a lease needs it (a version never
changes, so once is enough) and the lease's key may read that prefix and no other
version's. Drivers and replicas fetch it with `jobs/artifacts.py`.
"""

from __future__ import annotations

from pathlib import Path

from computeswarm.cluster.errors import Busy
from computeswarm.cluster.models.registry import adapter_files
from computeswarm.cluster.objects.client import UNAVAILABLE, ObjectStore
from computeswarm.cluster.objects.layout import model_prefix
from computeswarm.cluster.objects.runs import StoredRun
from computeswarm.cluster.store.models import ModelVersion
from computeswarm.errors import SystemError_
from computeswarm.jobs import contract

PUBLISHED = ".published"  # written last: a version with it is whole in the store


def prefix_of(version: ModelVersion) -> str:
    return model_prefix(version.account_id, version.name, version.version)


def publish(store: ObjectStore, version: ModelVersion) -> str:
    """The version's reference for a driver (`store:<prefix>`), its files copied into the
    store first if they are not all there yet (a crash mid-copy is copied again)."""
    prefix = prefix_of(version)
    try:
        if not StoredRun(store, prefix).exists(PUBLISHED):
            folder = Path(version.artifact_path)
            files = adapter_files(folder) if folder.is_dir() else []
            if not files:
                raise SystemError_(
                    f"the files of {version.name}@{version.version} are missing: {folder}"
                )
            for path in files:
                store.put_bytes(prefix + path.relative_to(folder).as_posix(), path.read_bytes())
            store.put_bytes(prefix + PUBLISHED, b"")
    except UNAVAILABLE as e:
        raise Busy(
            f"the object store cannot take model {version.name}@{version.version}: {e}"
        ) from e
    return contract.STORED + prefix
