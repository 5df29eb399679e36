"""WireGuard (Curve25519) keys: made on the node, private keys never leave it.

Only public keys are ever sent anywhere. A node proves it holds the private key of the
public key it sends (`possession_proof`), which also catches the classic mistake of
pasting a private key where a public one is expected: both are 32 base64 bytes, so the
format alone cannot tell them apart.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from computeswarm.tunnel.errors import InvalidKey

KEY_BYTES = 32
PRIVATE_KEY_FILE = "private.key"
PUBLIC_KEY_FILE = "public.key"

# Points of small order on Curve25519 (and their non-canonical encodings): a peer using
# one of them would make every shared secret predictable. Compared with bit 255 cleared.
_LOW_ORDER_POINTS = frozenset(
    bytes.fromhex(h)
    for h in (
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    )
)


def parse_public_key(text: str, *, field: str = "public key") -> str:
    """Validate a base64 WireGuard public key and return it in canonical form."""
    raw = _decode_key(text, field)
    if (raw[:31] + bytes([raw[31] & 0x7F])) in _LOW_ORDER_POINTS:
        raise InvalidKey(f"{field} is a low-order curve point and can never be a real peer's key")
    return _encode(raw)


def parse_private_key(text: str, *, field: str = "private key") -> str:
    """Validate a base64 WireGuard private key and return it in canonical form."""
    return _encode(_decode_key(text, field))


@dataclass(frozen=True)
class KeyPair:
    """A node's own key pair. `repr` never shows the private key."""

    private: str
    public: str

    def __repr__(self) -> str:
        return f"KeyPair(public={self.public!r})"

    @classmethod
    def generate(cls) -> KeyPair:
        return cls.from_private(_encode(X25519PrivateKey.generate().private_bytes_raw()))

    @classmethod
    def from_private(cls, private: str) -> KeyPair:
        raw = _decode_key(private, "private key")
        public = X25519PrivateKey.from_private_bytes(raw).public_key()
        return cls(private=_encode(raw), public=_encode(public.public_bytes_raw()))

    def shared_secret(self, peer_public: str) -> bytes:
        peer = X25519PublicKey.from_public_bytes(_decode_key(peer_public, "peer public key"))
        own = X25519PrivateKey.from_private_bytes(_decode_key(self.private, "private key"))
        return own.exchange(peer)


def possession_proof(own: KeyPair, peer_public: str, context: str) -> str:
    """Prove to `peer_public`'s owner that we hold `own.private`, bound to `context`.

    HMAC over the X25519 shared secret: only the holders of either private key can
    compute it, and the context (e.g. an invite token) stops replays elsewhere.
    """
    mac = hmac.new(own.shared_secret(peer_public), context.encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def verify_possession(own: KeyPair, claimed_public: str, context: str, proof: str) -> None:
    """Raise InvalidKey unless `proof` shows the sender holds `claimed_public`'s private key."""
    claimed_public = parse_public_key(claimed_public)
    expected = possession_proof(own, claimed_public, context)
    if not hmac.compare_digest(expected.encode(), proof.encode()):
        raise InvalidKey(
            "the public key does not match the proof of possession: was a private key sent "
            "in place of the public key, or the key pair changed? Send the contents of "
            f"{PUBLIC_KEY_FILE}, never {PRIVATE_KEY_FILE}"
        )


class KeyStore:
    """A node's key files in its state directory: private.key (0600) and public.key."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    @property
    def private_path(self) -> Path:
        return self.directory / PRIVATE_KEY_FILE

    def load_or_create(self) -> KeyPair:
        """Return the node's key pair, generating it on first use (idempotent)."""
        if self.private_path.exists():
            return self.load()
        return self.replace(KeyPair.generate())

    def load(self) -> KeyPair:
        mode = self.private_path.stat().st_mode & 0o777
        if mode & 0o077:
            raise InvalidKey(
                f"{self.private_path} is readable by others (mode {mode:o}); "
                f"run: chmod 600 {self.private_path}"
            )
        return KeyPair.from_private(self.private_path.read_text().strip())

    def replace(self, pair: KeyPair) -> KeyPair:
        """Write `pair` as the node's keys (used on first start and when re-keying)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(self.private_path, pair.private)
        (self.directory / PUBLIC_KEY_FILE).write_text(pair.public + "\n")
        return pair

    def check_not_private(self, text: str) -> None:
        """Refuse our own private key pasted where a peer's public key is expected."""
        if self.private_path.exists() and text.strip() == self.load().private:
            raise InvalidKey(
                f"that is this node's private key ({self.private_path}); "
                f"use the public key in {self.directory / PUBLIC_KEY_FILE}"
            )


def _write_private(path: Path, private: str) -> None:
    # Write a temp file created 0600 and rename it over, so the key is never world-readable
    # and a crash never leaves a half-written key behind.
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(private + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _decode_key(text: str, field: str) -> bytes:
    if not isinstance(text, str) or not text.strip():
        raise InvalidKey(f"{field} is empty; expected 44 base64 characters (32 bytes)")
    text = text.strip()
    if text.startswith("-----BEGIN"):
        raise InvalidKey(f"{field} is PEM; WireGuard keys are bare base64 (as `wg genkey` prints)")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidKey(f"{field} is not valid base64: {text[:12]}...") from None
    if len(raw) != KEY_BYTES:
        raise InvalidKey(f"{field} decodes to {len(raw)} bytes; WireGuard keys are {KEY_BYTES}")
    return raw


def _encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode()
