"""The seller's local dashboard server against a fake coordinator: it answers only with
the token, on its own Host, and its one write (the price) reaches the coordinator and the
enrollment. (In real Chromium against a real swarm: tests/integration.)"""

import json
import socket
from pathlib import Path

import httpx
import pytest

from computeswarm.cluster.errors import ApiError
from computeswarm.cluster.seller.dashboard.server import (
    FALLBACK_PORTS,
    Dashboard,
    listen,
    login_url,
    token,
)
from computeswarm.cluster.seller.dashboard.state import Box
from computeswarm.cluster.seller.join import Enrollment


class FakeCoordinator:
    def __init__(self):
        self.offer = {"price_per_gpu_hour": "0.40", "max_lease_hours": 12, "available_until": None}
        self.put = []

    def seller(self, seller_id):
        return {"id": seller_id, "state": "online", "last_heartbeat": 1.0, "offer": self.offer}

    def seller_earnings(self, seller_id):
        return {"released_micros": 1234, "daily": [], "current": []}

    def put_offer(self, seller_id, *, price_per_gpu_hour, max_lease_hours, available_until):
        if price_per_gpu_hour == "99":
            raise ApiError("price above the market's cap")
        self.put.append((price_per_gpu_hour, max_lease_hours))
        self.offer = self.offer | {"price_per_gpu_hour": price_per_gpu_hour}
        return self.offer


def enroll(state_dir: Path) -> None:
    Enrollment(
        seller_id="s-1",
        address="10.90.0.2",
        api_key="k",
        hub={},
        coordinator="http://x",
        name="box",
        interface="cs0",
        workload_netns=None,
        backend="none",
        listen_port=51820,
        endpoint=None,
        behind_nat=False,
        gpus=[{"model": "RTX4090", "vram_gb": 24, "simulated": True}],
        price_per_gpu_hour="0.40",
        max_lease_hours=12,
    ).save(state_dir)


@pytest.fixture
def served(tmp_path):
    enroll(tmp_path)
    coordinator = FakeCoordinator()
    dashboard = Dashboard(Box(tmp_path, coordinator), listen(0)).start()
    yield dashboard, coordinator
    dashboard.stop()


def test_without_the_token_nothing_is_served(served):
    dashboard, _ = served
    for path in ("/", "/app.js", "/api/state"):
        assert httpx.get(dashboard.url + path.lstrip("/")).status_code == 401, path
    wrong = httpx.get(dashboard.url + "login?token=guess")
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    forged = httpx.get(dashboard.url + "api/state", cookies={"cs_seller": "guess"})
    assert forged.status_code == 401


def test_the_link_trades_the_token_for_a_strict_cookie(served, tmp_path):
    dashboard, _ = served
    link = login_url(tmp_path)
    assert link == f"{dashboard.url}login?token={token(tmp_path)}"
    assert (tmp_path / "dashboard-token").stat().st_mode & 0o077 == 0
    with httpx.Client() as browser:
        landed = browser.get(link, follow_redirects=True)
        assert landed.status_code == 200 and "ComputeSwarm seller" in landed.text
        cookie = landed.history[0].headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        state = browser.get(dashboard.url + "api/state").json()
    assert state["box"]["seller_id"] == "s-1" and state["earnings"]["released_micros"] == 1234
    assert len(state["uptime"]) == 30 and state["coordinator_error"] is None
    assert "default-src 'none'" in landed.headers["content-security-policy"]


def test_another_host_name_or_origin_is_refused(served, tmp_path):
    dashboard, coordinator = served
    port = dashboard.url.rsplit(":", 1)[1].strip("/")
    auth = {"Authorization": f"Bearer {token(tmp_path)}"}
    rebound = httpx.get(dashboard.url + "api/state", headers=auth | {"Host": f"evil.test:{port}"})
    assert rebound.status_code == 403  # DNS rebinding: a page of evil.test on our address
    cross = httpx.post(
        dashboard.url + "api/price",
        headers=auth | {"Origin": "http://evil.test"},
        json={"price": "0.01"},
    )
    assert cross.status_code == 403 and coordinator.put == []


def test_a_price_change_reaches_the_coordinator_and_the_enrollment(served, tmp_path):
    dashboard, coordinator = served
    auth = {"Authorization": f"Bearer {token(tmp_path)}"}
    for bad in ("-1", "abc", "0.1234567", "NaN", None):
        answer = httpx.post(dashboard.url + "api/price", headers=auth, json={"price": bad})
        assert answer.status_code == 400, (bad, answer.text)
    refused = httpx.post(dashboard.url + "api/price", headers=auth, json={"price": "99"})
    assert refused.status_code == 502 and "cap" in refused.json()["error"]
    assert Enrollment.load(tmp_path).price_per_gpu_hour == "0.40"  # nothing changed
    not_json = httpx.post(dashboard.url + "api/price", headers=auth, content=b"price=1")
    assert not_json.status_code == 400
    done = httpx.post(dashboard.url + "api/price", headers=auth, json={"price": "0.37"})
    assert done.status_code == 200, done.text
    assert coordinator.put == [("0.37", 12)]  # the offer's other terms kept
    assert Enrollment.load(tmp_path).price_per_gpu_hour == "0.37"


def test_a_taken_port_falls_back_to_a_free_one():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        sock = listen(taken.getsockname()[1])
        assert sock.getsockname()[1] in FALLBACK_PORTS  # never the kernel's (Ray's) range
        assert sock.getsockname()[0] == "127.0.0.1"
        sock.close()
    finally:
        taken.close()


def test_no_link_when_no_dashboard_runs(tmp_path):
    assert login_url(tmp_path) is None
    (tmp_path / "dashboard.json").write_text(json.dumps({"url": "http://127.0.0.1:1/"}))
    assert login_url(tmp_path).startswith("http://127.0.0.1:1/login?token=")
