"""Keys: made locally, 0600 on disk, validated, never confused with each other."""

from __future__ import annotations

import base64
import stat

import pytest

from computeswarm.tunnel.errors import InvalidKey
from computeswarm.tunnel.keys import (
    KeyPair,
    KeyStore,
    parse_public_key,
    possession_proof,
    verify_possession,
)


def test_generated_pair_derives_public_from_private():
    pair = KeyPair.generate()
    assert KeyPair.from_private(pair.private) == pair
    assert len(base64.b64decode(pair.public)) == 32
    assert pair.private not in repr(pair)


def test_keystore_writes_private_key_0600_and_is_idempotent(tmp_path):
    store = KeyStore(tmp_path / "node")
    first = store.load_or_create()
    assert stat.S_IMODE(store.private_path.stat().st_mode) == 0o600
    assert (tmp_path / "node" / "public.key").read_text().strip() == first.public
    assert store.load_or_create() == first


def test_keystore_refuses_world_readable_private_key(tmp_path):
    store = KeyStore(tmp_path)
    store.load_or_create()
    store.private_path.chmod(0o644)
    with pytest.raises(InvalidKey, match="chmod 600"):
        store.load()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("not base64 at all!!", "not valid base64"),
        (base64.b64encode(b"x" * 31).decode(), "31 bytes"),
        (base64.b64encode(b"x" * 33).decode(), "33 bytes"),
        ("-----BEGIN PUBLIC KEY-----", "PEM"),
        ("A" * 43 + "=", "low-order"),  # the all-zero point
    ],
)
def test_invalid_public_keys_are_rejected_clearly(text, message):
    with pytest.raises(InvalidKey, match=message):
        parse_public_key(text)


def test_public_key_is_canonicalised():
    pair = KeyPair.generate()
    assert parse_public_key(f"  {pair.public}\n") == pair.public


def test_possession_proof_accepts_the_real_public_key():
    hub, seller = KeyPair.generate(), KeyPair.generate()
    proof = possession_proof(seller, hub.public, "invite-123")
    verify_possession(hub, seller.public, "invite-123", proof)


def test_private_key_sent_as_public_key_is_caught_by_the_proof():
    hub, seller = KeyPair.generate(), KeyPair.generate()
    proof = possession_proof(seller, hub.public, "invite-123")
    with pytest.raises(InvalidKey, match="private key sent"):
        verify_possession(hub, seller.private, "invite-123", proof)


def test_proof_is_bound_to_its_context():
    hub, seller = KeyPair.generate(), KeyPair.generate()
    proof = possession_proof(seller, hub.public, "invite-123")
    with pytest.raises(InvalidKey):
        verify_possession(hub, seller.public, "invite-456", proof)


def test_own_private_key_pasted_as_peer_key_is_refused(tmp_path):
    store = KeyStore(tmp_path)
    pair = store.load_or_create()
    store.check_not_private(KeyPair.generate().public)
    with pytest.raises(InvalidKey, match="private key"):
        store.check_not_private(pair.private)
