"""Folders a job reads from the object store (registered model versions), fetched onto the
node that needs them: a serve replica's, a training worker's. Sellers are other machines:
the registry's folders on the coordinator's disk are not there.

A reference is `store:<key prefix>` (`contract.STORED`), read with the lease's key from
the environment. Each node keeps one copy per version in its own temp dir (a lease's
private scratch in the sandbox): versions never change, so a copy is fetched once and
shared by the node's replicas; concurrent fetches race to one atomic rename.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from computeswarm.jobs import contract

CACHE = "computeswarm-models"
MARKER = ".published"  # the coordinator's "whole in the store" marker, not a model file


def is_stored(ref: object) -> bool:
    return isinstance(ref, str) and ref.startswith(contract.STORED)


def local_folder(ref: str, cache: Path | None = None) -> Path:
    """The folder `ref` names on this node: fetched from the store if it is a stored
    reference (once per node), else the path itself."""
    if not is_stored(ref):
        return Path(ref)
    from computeswarm.jobs.run_store import RunStore

    prefix = ref[len(contract.STORED) :].strip("/")
    if not prefix or ".." in prefix.split("/"):
        raise ValueError(f"not a stored folder: {ref!r}")
    root = Path(cache or tempfile.gettempdir()) / CACHE
    target = root / hashlib.sha256(prefix.encode()).hexdigest()[:24]
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir=root))
    try:
        bucket = os.environ[contract.S3_BUCKET]
        RunStore(f"{bucket}/{prefix}", True).download("", staging)
        (staging / MARKER).unlink(missing_ok=True)
        if not any(staging.iterdir()):
            raise FileNotFoundError(f"nothing in the store at {prefix}")
        os.rename(staging, target)  # whole or absent, for every replica of this node
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not target.is_dir():  # not another fetch winning the rename
            raise
    return target
