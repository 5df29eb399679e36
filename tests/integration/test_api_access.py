"""Roles, ownership, limits and observability of the coordinator API."""

from __future__ import annotations

import pytest

from tests.integration.conftest import make_head


def heartbeat(head, seller: dict, key: str | None = None):
    return head.http.post(
        f"/v1/sellers/{seller['seller_id']}/heartbeat",
        headers=head.auth(key or seller["api_key"]),
        json={
            "gpus": [{"model": "RTX4090", "vram_gb": 24, "simulated": True}],
            "simulated": True,
            "rtt_ms": 1.5,
        },
    )


def test_seller_goes_online_with_offer_and_offline_when_silent(head):
    seller = head.enroll()
    url = f"/v1/sellers/{seller['seller_id']}"
    auth = head.auth(seller["api_key"])
    offer = head.http.put(
        f"{url}/offer", headers=auth, json={"price_per_gpu_hour": "0.42", "max_lease_hours": 12}
    )
    assert offer.status_code == 200 and offer.json()["price_per_gpu_hour_micros"] == 420_000
    assert heartbeat(head, seller).json()["state"] == "online"
    view = head.http.get(url, headers=head.admin).json()
    assert view["offer"]["price_per_gpu_hour"] == "0.420000"
    assert view["gpus_simulated"] is True
    head.clock.advance(head.coordinator.config.heartbeat.timeout_s + 1)
    assert head.coordinator.check_heartbeats() == [seller["seller_id"]]
    assert head.http.get(url, headers=head.admin).json()["state"] == "offline"
    assert heartbeat(head, seller).json()["state"] == "online"  # back when it speaks again


def test_a_restarted_coordinator_gives_sellers_a_whole_timeout_to_reach_it_again(head):
    """Marked offline the moment a coordinator came back from an outage, every seller
    stopped its lease nodes, and a job that had run on lost its log (and its lease)."""
    seller = head.enroll()
    assert heartbeat(head, seller).json()["state"] == "online"
    timeout_s = head.coordinator.config.heartbeat.timeout_s
    head.clock.advance(10 * timeout_s)  # the coordinator was down this long
    head.coordinator.started_at = head.clock()  # as start() records it
    assert seller["seller_id"] not in head.coordinator.check_heartbeats()
    head.clock.advance(timeout_s / 2)
    assert heartbeat(head, seller).json()["state"] == "online"
    head.clock.advance(timeout_s + 1)  # silent for a whole timeout after the start: offline
    assert seller["seller_id"] in head.coordinator.check_heartbeats()


def test_wrong_role_keys_are_refused(head):
    buyer = head.account("buyer")
    seller = head.enroll()
    assert head.http.post("/v1/invites", json={}, headers=head.auth(buyer)).status_code == 403
    assert (
        head.http.post("/v1/invites", json={}, headers=head.auth(seller["api_key"])).status_code
        == 403
    )
    assert (
        head.http.post(
            "/v1/accounts", json={"name": "x", "role": "admin"}, headers=head.auth(buyer)
        ).status_code
        == 403
    )
    disable = f"/v1/sellers/{seller['seller_id']}/disable"
    assert head.http.post(disable, headers=head.auth(seller["api_key"])).status_code == 403
    assert heartbeat(head, seller, key=buyer).status_code == 404


def test_sellers_see_only_themselves_and_buyers_only_the_market(head):
    a, b = head.enroll("a"), head.enroll("b")
    heartbeat(head, a)
    own = head.http.get("/v1/sellers", headers=head.auth(a["api_key"])).json()
    assert [s["id"] for s in own] == [a["seller_id"]]
    # Another seller's record does not exist, as far as a seller can tell.
    other = head.http.get(f"/v1/sellers/{b['seller_id']}", headers=head.auth(a["api_key"]))
    assert other.status_code == 404
    assert heartbeat(head, b, key=a["api_key"]).status_code == 404
    buyer = head.auth(head.account("buyer"))
    market = head.http.get("/v1/sellers", headers=buyer).json()
    assert [s["id"] for s in market] == [a["seller_id"]]  # b is not online
    assert "address" not in market[0] or market[0]["address"] is None
    assert market[0]["public_key"] is None
    assert head.http.get(f"/v1/sellers/{b['seller_id']}", headers=buyer).status_code == 404


def test_missing_and_forged_keys_are_401(head):
    assert head.http.get("/v1/sellers").status_code == 401
    forged = "csk_0123456789ab_" + "x" * 32
    assert head.http.get("/v1/sellers", headers=head.auth(forged)).status_code == 401
    assert head.http.get("/v1/sellers", headers=head.auth("garbage")).status_code == 401


@pytest.mark.parametrize("price", ["0", "-1", "0.0000001", "abc", "5000"])
def test_bad_offers_are_refused(head, price):
    seller = head.enroll()
    response = head.http.put(
        f"/v1/sellers/{seller['seller_id']}/offer",
        headers=head.auth(seller["api_key"]),
        json={"price_per_gpu_hour": price},
    )
    assert response.status_code == 422, response.text


def test_oversized_bodies_are_413(sqlite_head):
    big = {"note": "x" * 100_000}
    response = sqlite_head.http.post("/v1/invites", json=big, headers=sqlite_head.admin)
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"

    def chunks():  # no Content-Length: the limit applies while streaming
        for _ in range(100):
            yield b"x" * 1024

    response = sqlite_head.http.post(
        "/v1/enroll", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413


def test_rate_limit_gives_429_with_retry_after(tmp_path):
    head = make_head(tmp_path, **{"limits.requests_per_second": 1, "limits.burst": 3})
    try:
        statuses = [head.http.get("/v1/sellers", headers=head.admin).status_code for _ in range(5)]
        assert statuses[:3] == [200, 200, 200] and 429 in statuses[3:]
        limited = head.http.get("/v1/sellers", headers=head.admin)
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        # per key: another key is not limited
        assert (
            head.http.get("/v1/sellers", headers=head.auth(head_account(head))).status_code == 200
        )
    finally:
        head.coordinator.stop()


def head_account(head) -> str:
    from computeswarm.cluster.accounts.roles import Role, create_account

    with head.coordinator.store.transaction() as db:
        return create_account(db, "other", Role.BUYER, head.clock())[1]


def test_health_readiness_and_metrics(sqlite_head):
    head = sqlite_head
    seller = head.enroll()
    heartbeat(head, seller)
    assert head.http.get("/healthz").json() == {"status": "ok"}
    ready = head.http.get("/readyz").json()
    assert ready == {"ready": True, "checks": {"store": "ok", "hub": "ok", "objects": "ok"}}
    # M4: the metrics name every seller and its public key: admins only.
    assert head.http.get("/metrics").status_code == 401
    buyer = head.account("buyer")
    assert head.http.get("/metrics", headers=head.auth(buyer)).status_code in (403, 404)
    assert head.http.get("/metrics", headers=head.auth(seller["api_key"])).status_code in (403, 404)
    # Bytes each account keeps in the object store (the real one, on the head).
    head.coordinator.objects.store.put_bytes("acctX/jobs/j1/out.bin", b"x" * 321)
    text = head.http.get("/metrics", headers=head.admin).text
    assert 'computeswarm_sellers{state="online"} 1.0' in text
    assert 'computeswarm_gpus_online{model="RTX4090",simulated="true"} 1.0' in text
    assert "computeswarm_heartbeat_lag_seconds" in text
    assert 'computeswarm_storage_bytes{account="acctX"} 321.0' in text
    assert (
        'computeswarm_api_request_seconds_count{method="POST",route="/v1/enroll",'
        'status="200"}' in text
    )
    assert "computeswarm_tunnel_peers" in text


def test_openapi_describes_the_api(sqlite_head):
    spec = sqlite_head.http.get("/openapi.json").json()
    assert {"/v1/enroll", "/v1/invites", "/v1/sellers", "/healthz"} <= set(spec["paths"])
    enroll = spec["components"]["schemas"]["EnrollRequest"]["properties"]
    assert "proof of possession" in enroll["proof"]["description"] or enroll["proof"]
