"""The heartbeat fast path answers exactly as the FastAPI route it shadows: the same status,
body and headers for a good heartbeat and for every way one can be wrong (no key, a wrong
or forged key, another seller's id, a bad body, a seller that left, past the rate limit)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from computeswarm.cluster.api import deps
from computeswarm.cluster.api.app import api_app
from computeswarm.cluster.api.fastpath import HeartbeatFastPath
from tests.integration.conftest import make_head

GOOD = {"gpus": [{"model": "RTX4090", "vram_gb": 24}], "simulated": True, "rtt_ms": 3.0}


def both(head):
    """The real app (fast path in front) and the bare routes over the same coordinator."""
    routes = TestClient(api_app(deps.ApiServices.of(head.coordinator)))
    return head.http, routes


def same_answer(head, path: str, **request) -> dict:
    fast, routes = both(head)
    a, b = fast.post(path, **request), routes.post(path, **request)
    assert (a.status_code, a.content) == (b.status_code, b.content), (a.text, b.text)
    assert a.headers.get("retry-after") == b.headers.get("retry-after")
    assert a.headers["content-type"] == b.headers["content-type"] == "application/json"
    return {"status": a.status_code, **a.json()}


def test_the_fast_path_answers_every_heartbeat_as_the_route_does(sqlite_head):
    head = sqlite_head
    seller, other = head.enroll("a"), head.enroll("b")
    key = head.auth(seller["api_key"])
    beat = f"/v1/sellers/{seller['seller_id']}/heartbeat"
    assert same_answer(head, beat, json=GOOD, headers=key) == {
        "status": 200,
        "state": "online",
        "assignments": [],
    }
    wrong_secret = seller["api_key"][:-4] + (
        "aaaa" if not seller["api_key"].endswith("aaaa") else "bbbb"
    )
    for headers, status in [
        ({}, 401),
        ({"Authorization": "Bearer nonsense"}, 401),
        (head.auth(wrong_secret), 401),
        ({"Authorization": f"Basic {seller['api_key']}"}, 401),
    ]:
        assert same_answer(head, beat, json=GOOD, headers=headers)["status"] == status
    # Another seller's heartbeat with this seller's key: not found, as if it did not exist.
    theirs = f"/v1/sellers/{other['seller_id']}/heartbeat"
    assert same_answer(head, theirs, json=GOOD, headers=key)["status"] == 404
    assert (
        same_answer(head, "/v1/sellers/s-nope/heartbeat", json=GOOD, headers=key)["status"] == 404
    )
    for body in [
        {**GOOD, "bogus": 1},
        {**GOOD, "rtt_ms": -1},
        {**GOOD, "gpus": "many"},
        {**GOOD, "workers": {f"l-{i}": "running" for i in range(17)}},
        [],
    ]:
        answer = same_answer(head, beat, json=body, headers=key)
        assert answer["status"] == 422 and answer["error"] == "invalid_request", answer
    # Over the body limit (64 KiB): refused before the fast path reads it.
    huge = head.http.post(beat, json={**GOOD, "pad": "x" * 70_000}, headers=key)
    assert huge.status_code == 413 and huge.json()["error"] == "payload_too_large", huge.text
    for raw in [b"", b"{", b"\xff\xfe", b"null"]:
        headers = {**key, "Content-Type": "application/json"}
        answer = same_answer(head, beat, content=raw, headers=headers)
        assert answer["status"] == 422, answer
    assert same_answer(head, beat, json=GOOD, headers=key)["state"] == "online"
    head.http.post(f"/v1/sellers/{seller['seller_id']}/leave", headers=key).raise_for_status()
    gone = same_answer(head, beat, json=GOOD, headers=key)
    assert gone["status"] in (401, 404), gone  # its key is revoked with it


@pytest.fixture
def strict_head(tmp_path):
    head = make_head(tmp_path, **{"limits.requests_per_second": 0.01, "limits.burst": 4})
    yield head
    head.coordinator.stop()


def test_the_fast_path_refuses_past_the_rate_limit_as_the_route_does(strict_head):
    head = strict_head
    seller = head.enroll("a")
    beat = f"/v1/sellers/{seller['seller_id']}/heartbeat"
    key = head.auth(seller["api_key"])
    for _ in range(2):  # the burst of 4, two requests each
        assert same_answer(head, beat, json=GOOD, headers=key)["status"] == 200
    fast, routes = both(head)
    # The limiter's clock runs between the two: the wait they name may differ by a tick.
    a, b = fast.post(beat, json=GOOD, headers=key), routes.post(beat, json=GOOD, headers=key)
    assert a.status_code == b.status_code == 429, (a.text, b.text)
    assert a.json()["error"] == b.json()["error"] == "rate_limited"
    assert abs(int(a.headers["retry-after"]) - int(b.headers["retry-after"])) <= 1


def test_the_fast_path_answers_good_heartbeats_itself_and_hands_on_the_rest(sqlite_head):
    head = sqlite_head
    seller = head.enroll("a")
    key = head.auth(seller["api_key"])
    beat = f"/v1/sellers/{seller['seller_id']}/heartbeat"
    handed = []

    async def behind(scope, receive, send):  # stands in for FastAPI: records what reaches it
        message = await receive()
        handed.append((scope["path"], message["body"]))
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    fast = TestClient(HeartbeatFastPath(behind, deps.ApiServices.of(head.coordinator)))
    assert fast.post(beat, json=GOOD, headers=key).json()["state"] == "online"
    assert fast.post(beat, json=GOOD, headers={}).json()["error"] == "unauthorized"
    assert (
        fast.post(
            beat, content=b"{", headers={**key, "Content-Type": "application/json"}
        ).status_code
        == 299
    )
    assert fast.get("/healthz").status_code == 299
    assert [path for path, _ in handed] == [beat, "/healthz"]
    assert handed[0][1] == b"{", "the body it read is replayed to the app"
