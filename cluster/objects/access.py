"""Per-lease access keys: the coordinator keeps the root key; each lease gets an access key
whose policy allows only its own prefixes (layout.Grant), revoked when the lease ends.

Through MinIO's admin API, which the embedded store (JuiceFS's gateway) and MinIO speak;
another S3 service needs its own way to mint scoped keys (AWS STS, R2 tokens).
"""

from __future__ import annotations

import json
import logging
import secrets
import tempfile

from computeswarm.cluster.objects.layout import Grant, lease_policy, segment
from computeswarm.cluster.objects.server import Credentials

log = logging.getLogger("computeswarm.objects")
KEY_PREFIX = "lease-"


def lease_access_key(lease_id: str) -> str:
    return f"{KEY_PREFIX}{segment(lease_id)}"


class LeaseKeys:
    """Issue and revoke lease keys on one S3 server, as its root user."""

    def __init__(self, endpoint: str, root: Credentials, bucket: str):
        from minio import MinioAdmin
        from minio.credentials import StaticProvider

        host = endpoint.split("://", 1)[-1]
        self.bucket = bucket
        self.admin = MinioAdmin(
            endpoint=host,
            credentials=StaticProvider(root.access_key, root.secret_key),
            secure=endpoint.startswith("https://"),
        )

    def issue(self, lease_id: str, grant: Grant) -> Credentials:
        """A fresh key for this lease (a second call replaces the first: a restarted
        coordinator issues again rather than reading secrets back)."""
        access = lease_access_key(lease_id)
        secret = secrets.token_urlsafe(30)
        with tempfile.NamedTemporaryFile("w", suffix=".json") as policy:
            json.dump(lease_policy(self.bucket, grant), policy)
            policy.flush()
            self.admin.policy_add(access, policy.name)
        self.admin.user_add(access, secret)
        self.admin.policy_set(access, user=access)
        return Credentials(access, secret)

    def revoke(self, lease_id: str) -> None:
        """The key stops working at once; revoking twice is fine."""
        access = lease_access_key(lease_id)
        for remove in (self.admin.user_remove, self.admin.policy_remove):
            try:
                remove(access)
            except Exception as e:  # already gone: the end state is the one wanted
                if "not found" not in str(e).lower() and "does not exist" not in str(e).lower():
                    raise

    def issued(self) -> list[str]:
        """Lease ids that hold a key now (to revoke leftovers after a crash)."""
        users = json.loads(self.admin.user_list() or "{}")
        return [u[len(KEY_PREFIX) :] for u in users if u.startswith(KEY_PREFIX)]
