"""Object keys and lease policies, pure: where each account's objects live in the bucket,
and the IAM policy that lets one lease read and write only its own prefixes.

Keys are built only from ids the coordinator made (account ids, job ids, run names it
chose), each checked against one pattern: an object key never comes from unchecked user
input.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

# What a key segment may be: the ids and run names the coordinator makes.
SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SHA256 = re.compile(r"[0-9a-f]{64}")
READ_ACTIONS = ("s3:GetObject",)
WRITE_ACTIONS = ("s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload")


def segment(value: str) -> str:
    """One path segment of a key, or ValueError: no '/', no '..', no empty part."""
    if not SEGMENT.fullmatch(value) or ".." in value:
        raise ValueError(f"not a valid object key segment: {value!r}")
    return value


def account_prefix(account_id: str) -> str:
    return f"{segment(account_id)}/"


def job_prefix(account_id: str, job_id: str) -> str:
    """A job's own objects, every kind: what its driver keeps beyond its sellers."""
    return f"{account_prefix(account_id)}jobs/{segment(job_id)}/"


def run_prefix(account_id: str, run: str) -> str:
    """A training run or sweep: checkpoints, steps, trials, result."""
    return f"{account_prefix(account_id)}runs/{segment(run)}/"


def serve_prefix(account_id: str, job_id: str) -> str:
    return f"{account_prefix(account_id)}serve/{segment(job_id)}/"


def model_prefix(account_id: str, name: str, version: int) -> str:
    return f"{account_prefix(account_id)}models/{segment(name)}/{int(version)}/"


def dataset_prefix(account_id: str, name: str) -> str:
    """A dataset, every version: its chunks (by sha256) and manifests (by id). Versions of
    one dataset share chunks; a share or a lease reads this prefix, no other dataset's."""
    return f"{account_prefix(account_id)}datasets/{segment(name)}/"


def chunk_key(account_id: str, name: str, sha256: str) -> str:
    return f"{dataset_prefix(account_id, name)}chunks/{_sha256(sha256)}"


def manifest_key(account_id: str, name: str, manifest_id: str) -> str:
    return f"{dataset_prefix(account_id, name)}manifests/{_sha256(manifest_id)}.json"


def volume_prefix(account_id: str, volume_id: str) -> str:
    """A volume, every commit: its chunks and manifests, by the volume's id (a volume
    removed and made again under the same name starts empty)."""
    return f"{account_prefix(account_id)}volumes/{segment(volume_id)}/"


def volume_chunk_key(account_id: str, volume_id: str, sha256: str) -> str:
    return f"{volume_prefix(account_id, volume_id)}chunks/{_sha256(sha256)}"


def volume_manifest_key(account_id: str, volume_id: str, manifest_id: str) -> str:
    return f"{volume_prefix(account_id, volume_id)}manifests/{_sha256(manifest_id)}.json"


def _sha256(value: str) -> str:
    if not SHA256.fullmatch(value):
        raise ValueError(f"not a sha256: {value!r}")
    return value


def account_of(key: str) -> str:
    """The account a stored key belongs to (its first segment)."""
    return key.split("/", 1)[0]


@dataclass(frozen=True)
class Grant:
    """What one lease may touch: prefixes to read, prefixes to read and write."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for prefix in (*self.read, *self.write):
            if not prefix.endswith("/"):
                raise ValueError(f"not a key prefix (no trailing '/'): {prefix!r}")
            for part in prefix[:-1].split("/"):
                segment(part)


def lease_policy(bucket: str, grant: Grant) -> dict:
    """The IAM policy (AWS's language, which MinIO and JuiceFS's gateway read) of a lease:
    list, read and write under its prefixes, nothing else. Default deny does the rest."""
    bucket = segment(bucket)
    prefixes = sorted({*grant.read, *grant.write})
    statements = [
        {
            "Effect": "Allow",
            "Action": ["s3:GetBucketLocation"],
            "Resource": [f"arn:aws:s3:::{bucket}"],
        }
    ]
    if prefixes:
        statements.append(
            {
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": [f"arn:aws:s3:::{bucket}"],
                "Condition": {"StringLike": {"s3:prefix": [f"{p}*" for p in prefixes]}},
            }
        )
    for actions, group in ((READ_ACTIONS, grant.read), (WRITE_ACTIONS, grant.write)):
        if group:
            statements.append(
                {
                    "Effect": "Allow",
                    "Action": list(actions),
                    "Resource": [f"arn:aws:s3:::{bucket}/{p}*" for p in sorted(group)],
                }
            )
    return {"Version": "2012-10-17", "Statement": statements}


def policy_json(bucket: str, grant: Grant) -> str:
    return json.dumps(lease_policy(bucket, grant), sort_keys=True)
