"""API keys and invite tokens: `<kind>_<id>_<secret>`, stored as id + SHA-256 of the secret.

The secrets are 192 random bits, so a fast hash is the right tool (no password stretching
needed), and the id finds the row without scanning. Plaintext is shown exactly once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

API_KEY_KIND = "csk"
INVITE_KIND = "csi"


@dataclass(frozen=True)
class Token:
    kind: str
    id: str
    secret: str

    def __str__(self) -> str:
        return f"{self.kind}_{self.id}_{self.secret}"

    @property
    def secret_hash(self) -> str:
        return hash_secret(self.secret)


def new_token(kind: str) -> Token:
    return Token(kind, secrets.token_hex(6), secrets.token_urlsafe(24))


def parse_token(text: str, kind: str) -> Token | None:
    """The token's parts, or None if `text` is not a well-formed token of `kind`."""
    parts = (text or "").strip().split("_", 2)
    if len(parts) != 3 or parts[0] != kind or len(parts[1]) != 12 or len(parts[2]) < 16:
        return None
    if not all(c in "0123456789abcdef" for c in parts[1]):
        return None
    return Token(*parts)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
