"""The coordinator's S3 client: the root key, one bucket. Reads what drivers wrote, stores
model versions, measures each account's bytes. Any S3 service works (`storage.endpoint`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError

from computeswarm.cluster.objects.layout import account_of
from computeswarm.cluster.objects.server import Credentials

REGION = "us-east-1"
OWNED = ("BucketAlreadyOwnedByYou", "BucketAlreadyExists")  # create_bucket twice: fine
# What a store that is down, slow or refusing raises: a reader waits for the next tick.
UNAVAILABLE = (BotoCoreError, ClientError)


class ObjectMissing(KeyError):
    """No object at that key."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int


def s3_client(endpoint: str, credentials: Credentials, *, timeout_s: float = 10.0):
    """A boto3 client fit for S3-compatible servers: path-style addressing, checksums only
    when the API requires them (MinIO-era servers refuse the streaming ones), few retries
    so a store that is down shows as down."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=credentials.access_key,
        aws_secret_access_key=credentials.secret_key,
        region_name=REGION,
        config=Config(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            connect_timeout=timeout_s,
            read_timeout=max(timeout_s, 60.0),
            retries={"max_attempts": 2, "mode": "standard"},
        ),
    )


class ObjectStore:
    """One bucket, through the root key."""

    def __init__(self, endpoint: str, credentials: Credentials, bucket: str):
        self.endpoint, self.credentials, self.bucket = endpoint, credentials, bucket
        self.s3 = s3_client(endpoint, credentials)

    def ensure_bucket(self) -> None:
        try:
            self.s3.create_bucket(Bucket=self.bucket)
        except ClientError as e:
            if e.response["Error"]["Code"] not in OWNED:
                raise

    def ping(self) -> None:
        self.s3.head_bucket(Bucket=self.bucket)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as e:
            if e.response["Error"]["Code"] in ("NoSuchKey", "404"):
                raise ObjectMissing(key) from None
            raise

    def list(self, prefix: str) -> Iterator[StoredObject]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        for page in pages:
            for item in page.get("Contents", []):
                yield StoredObject(item["Key"], item["Size"])

    def delete_prefix(self, prefix: str) -> int:
        # One by one: DeleteObjects needs Content-MD5 on MinIO-era servers, which new SDKs
        # no longer send (they send CRC32).
        keys = [o.key for o in self.list(prefix)]
        for key in keys:
            self.s3.delete_object(Bucket=self.bucket, Key=key)
        return len(keys)

    def bytes_by_account(self) -> dict[str, int]:
        """Bytes stored per account: what `/metrics` and the ledger show (storage is a cost
        the buyer sees). One listing of the bucket."""
        sizes: Counter[str] = Counter()
        for item in self.list(""):
            sizes[account_of(item.key)] += item.size
        return dict(sizes)

    def bytes_of(self, account_id: str) -> int:
        return sum(o.size for o in self.list(f"{account_id}/"))
