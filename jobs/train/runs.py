"""A training run's identity: the hashes that name its folder and its model version.

The same spec on the same data hashes the same, so a resubmitted job lands in the same run
folder and resumes from its latest complete checkpoint instead of starting over.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

# What changes the trained weights; pricing, resources and names do not.
TRAINING_FIELDS = (
    "kind",
    "model",
    "dataset",
    "training",
    "lora",
    "deepspeed",
    "low_bandwidth",
    "init_adapter",
    "workers",
    "pipeline",
)


def spec_hash(spec: dict) -> str:
    picked = {key: spec.get(key) for key in TRAINING_FIELDS if key in spec}
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_name(job_name: str, spec_digest: str, data_digest: str) -> str:
    both = hashlib.sha256(f"{spec_digest}:{data_digest}".encode()).hexdigest()
    return f"{job_name}-{both[:12]}"


def ring_allreduce_bytes(payload_bytes: int, world: int) -> float:
    """Bytes each worker sends to all-reduce `payload_bytes` with a ring: 2(n-1)/n of it."""
    return 0.0 if world <= 1 else 2 * (world - 1) / world * payload_bytes
