"""Enrollment through the real API and store (SQLite and PostgreSQL): the happy path, and
every kind of bad invite or key refused clearly with nothing half-written."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from computeswarm.cluster.store.models import Account, ApiKey, Invite, Seller
from computeswarm.tunnel.keys import KeyPair


def counts(head) -> dict:
    with head.coordinator.store.transaction() as db:
        return {
            "sellers": db.scalar(select(func.count()).select_from(Seller)),
            "accounts": db.scalar(select(func.count()).select_from(Account)),
            "keys": db.scalar(select(func.count()).select_from(ApiKey)),
            "redeemed": db.scalar(
                select(func.count()).select_from(Invite).where(Invite.redeemed_at.is_not(None))
            ),
        }


def test_enroll_gives_an_address_a_key_and_the_hub(head):
    body = head.enroll("rig-1")
    assert body["address"] == "10.90.0.2"
    assert body["api_key"].startswith("csk_")
    assert body["hub"]["public_key"] == head.coordinator.hub_keys.public
    assert body["hub"]["overlay_cidr"] == "10.90.0.0/16"
    second = head.enroll("rig-2")
    assert second["address"] == "10.90.0.3"
    # the hub got both as peers
    peers = {p.public_key for p in head.coordinator.hub.tunnel.peers()}
    assert peers == {k.public for k in head.keys.values()}


def test_same_node_redeeming_again_gets_the_same_seller_and_a_fresh_key(head):
    invite, keys = head.invite(), KeyPair.generate()
    first = head.http.post("/v1/enroll", json=head.enroll_request(invite, keys)).json()
    again = head.http.post("/v1/enroll", json=head.enroll_request(invite, keys)).json()
    assert again["rejoined"] is True
    assert (again["seller_id"], again["address"]) == (first["seller_id"], first["address"])
    assert again["api_key"] != first["api_key"]
    # the old key is revoked, the new one works
    url = f"/v1/sellers/{first['seller_id']}"
    assert head.http.get(url, headers=head.auth(first["api_key"])).status_code == 401
    assert head.http.get(url, headers=head.auth(again["api_key"])).status_code == 200
    assert counts(head)["sellers"] == 1


def _refused(head, request: dict, status: int, message: str) -> None:
    before = counts(head)
    response = head.http.post("/v1/enroll", json=request)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"], response.json()
    assert counts(head) == before, "a refused enrollment wrote to the store"


def test_reused_invite_is_refused(head):
    invite = head.invite()
    assert head.http.post("/v1/enroll", json=head.enroll_request(invite)).status_code == 200
    _refused(head, head.enroll_request(invite), 403, "already used by another node")


def test_expired_invite_is_refused(head):
    invite = head.invite(ttl_s=60)
    head.clock.advance(61)
    _refused(head, head.enroll_request(invite), 403, "expired")


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda t: t[:-4] + "AAAA", "not recognised"),  # forged secret
        (lambda t: "csi_000000000000_" + t.split("_", 2)[2], "not recognised"),  # unknown id
        (lambda t: "hello", "malformed invite"),
        (lambda t: t.replace("csi_", "csk_"), "malformed invite"),  # an API key is no invite
    ],
)
def test_forged_or_malformed_invites_are_refused(head, mangle, message):
    _refused(head, head.enroll_request(mangle(head.invite())), 403, message)


@pytest.mark.parametrize(
    ("public_key", "message"),
    [
        ("not-a-key", "not valid base64"),
        ("AAAA", "decodes to 3 bytes"),
        ("A" * 43 + "=", "low-order"),
    ],
)
def test_bad_public_keys_are_refused(head, public_key, message):
    request = head.enroll_request(head.invite())
    request["public_key"] = public_key
    _refused(head, request, 400, message)


def test_private_key_sent_as_public_key_is_refused(head):
    invite, keys = head.invite(), KeyPair.generate()
    request = head.enroll_request(invite, keys)
    request["public_key"] = keys.private
    _refused(head, request, 400, "private key sent in place of the public key")


def test_proof_for_another_invite_is_refused(head):
    keys = KeyPair.generate()
    request = head.enroll_request(head.invite(), keys)
    request["proof"] = head.enroll_request(head.invite(), keys)["proof"]
    _refused(head, request, 400, "does not match the proof")


def test_a_key_enrolls_only_once(head):
    keys = KeyPair.generate()
    assert (
        head.http.post("/v1/enroll", json=head.enroll_request(head.invite(), keys)).status_code
        == 200
    )
    _refused(head, head.enroll_request(head.invite(), keys), 409, "already enrolled")


def test_unknown_and_missing_fields_are_named(head):
    request = head.enroll_request(head.invite()) | {"publc_key": "x"}
    _refused(head, request, 422, "unknown field 'publc_key'")
    request = head.enroll_request(head.invite())
    del request["proof"]
    _refused(head, request, 422, "proof: Field required")


def test_left_addresses_are_never_reused(head):
    first = head.enroll("a")
    key = first["api_key"]
    response = head.http.post(f"/v1/sellers/{first['seller_id']}/leave", headers=head.auth(key))
    assert response.status_code == 200 and response.json()["state"] == "offline"
    assert head.keys[first["seller_id"]].public not in {
        p.public_key for p in head.coordinator.hub.tunnel.peers()
    }
    assert head.enroll("b")["address"] == "10.90.0.3"
    assert (
        head.http.get(f"/v1/sellers/{first['seller_id']}", headers=head.auth(key)).status_code
        == 401
    )  # key revoked


def test_a_used_invite_and_a_public_key_without_the_private_key_cannot_take_a_seller(head):
    """H1: the invite and the seller's public key (public on /metrics once) re-issued the
    seller's API key and revoked the real one. A rejoin needs the same proof."""
    invite, keys = head.invite(), KeyPair.generate()
    first = head.http.post("/v1/enroll", json=head.enroll_request(invite, keys)).json()
    forged = head.enroll_request(invite, keys)
    forged["proof"] = head.enroll_request(invite, KeyPair.generate())["proof"]  # not its key
    response = head.http.post("/v1/enroll", json=forged)
    assert response.status_code in (400, 401, 403), response.text
    url = f"/v1/sellers/{first['seller_id']}"
    assert head.http.get(url, headers=head.auth(first["api_key"])).status_code == 200


def test_a_rejoin_after_the_invite_expired_is_refused(head):
    invite, keys = head.invite(ttl_s=60), KeyPair.generate()
    first = head.http.post("/v1/enroll", json=head.enroll_request(invite, keys)).json()
    head.clock.advance(3600)
    _refused(head, head.enroll_request(invite, keys), 403, "expired")
    url = f"/v1/sellers/{first['seller_id']}"
    assert head.http.get(url, headers=head.auth(first["api_key"])).status_code == 200


@pytest.mark.parametrize(
    "endpoint", ["not an endpoint", "host:0", "a b:51820", "[zz]:1", "x" * 90 + ":1", "h;rm:1"]
)
def test_a_malformed_endpoint_is_refused_before_anything_is_stored(head, endpoint):
    """H6: a bad endpoint was committed, and every later coordinator start failed."""
    _refused(head, head.enroll_request(head.invite(), endpoint=endpoint), 422, "ndpoint")
