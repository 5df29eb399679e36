"""The dashboard proxy over real HTTP and websockets, against a stand-in for a lease head's
Ray dashboard that insists on the lease's token: a ticket becomes a cookie for one lease's
path; the token is added upstream and never comes back; another buyer, a forged cookie or
a lease that is over get 404; the proxy is read-only."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, StreamingResponse

from computeswarm.cluster.accounts.roles import Caller, Role
from computeswarm.cluster.api.routes.dashboards import COOKIE, dashboard_router
from computeswarm.cluster.dashboards.service import Upstream
from computeswarm.cluster.dashboards.sessions import DashboardSessions
from tests.integration.http_server import ServerThread

TOKEN = "lease-token-never-shown"


def fake_ray_dashboard() -> FastAPI:
    app = FastAPI()

    def allowed(headers) -> bool:
        return headers.get("authorization") == f"Bearer {TOKEN}"

    @app.get("/{path:path}")
    async def anything(path: str, request: Request):
        if not allowed(request.headers):
            return JSONResponse({"error": "unauthenticated"}, status_code=401)
        if path == "stream":

            async def lines():
                for i in range(3):
                    yield f"line {i}\n".encode()
                    await asyncio.sleep(0.05)

            return StreamingResponse(lines(), media_type="text/plain")
        seen = {
            "path": path,
            "query": dict(request.query_params),
            "cookie": request.headers.get("cookie"),
        }
        answer = JSONResponse(seen)
        answer.set_cookie("ray-session", TOKEN)  # the proxy must not hand this on
        return answer

    @app.websocket("/api/jobs/{job}/logs/tail")
    async def tail(websocket: WebSocket, job: str):
        if not allowed(websocket.headers):
            await websocket.close(code=4401)
            return
        await websocket.accept()
        for i in range(3):
            await websocket.send_text(f"{job} log {i}\n")
        await websocket.close()

    return app


class FakeService:
    """The routing rules of `DashboardService` over a dict of running leases."""

    def __init__(self, upstream_url: str):
        self.sessions = DashboardSessions()
        self.running = {"l-a": ("buyerA", upstream_url)}

    def open(self, caller: Caller, job_id: str) -> dict:
        ticket = self.sessions.ticket("l-a", caller.account_id)
        return {"lease_id": "l-a", "path": f"/dashboards/l-a/?ticket={ticket}"}

    def upstream(self, lease_id: str, account_id: str):
        owner, url = self.running.get(lease_id, (None, None))
        return Upstream(url, TOKEN) if owner == account_id else None


@pytest.fixture(scope="module")
def proxied():
    with ServerThread(fake_ray_dashboard()) as ray_dashboard:
        service = FakeService(ray_dashboard.url)
        callers = {
            "keyA": Caller("buyerA", Role.BUYER, "kA"),
            "keyB": Caller("buyerB", Role.BUYER, "kB"),
        }

        async def caller(request: Request) -> Caller:
            return callers[request.headers["authorization"].removeprefix("Bearer ")]

        app = FastAPI()
        app.include_router(dashboard_router(service, caller))
        with ServerThread(app) as coordinator:
            yield service, coordinator.url


def signed_in(url: str, key: str = "keyA") -> httpx.Client:
    browser = httpx.Client(base_url=url, timeout=10)
    path = browser.post(
        "/v1/jobs/j-1/dashboard", headers={"Authorization": f"Bearer {key}"}
    ).json()["path"]
    landed = browser.get(path, follow_redirects=True)
    assert landed.status_code == 200, landed.text
    assert str(landed.url).endswith("/dashboards/l-a/"), "the ticket stays in the address bar"
    return browser


def test_a_ticket_becomes_a_cookie_and_the_token_is_added_upstream_only(proxied):
    _, url = proxied
    browser = signed_in(url)
    answer = browser.get("/dashboards/l-a/api/v0/nodes", params={"limit": "5"})
    assert answer.status_code == 200
    assert answer.json() == {"path": "api/v0/nodes", "query": {"limit": "5"}, "cookie": None}
    assert TOKEN not in answer.text and TOKEN not in str(answer.headers)
    assert "ray-session" not in answer.headers.get("set-cookie", "")
    cookie = browser.cookies.jar
    assert [c.path for c in cookie if c.name == COOKIE] == ["/dashboards/l-a/"]
    assert [c.has_nonstandard_attr("HttpOnly") for c in cookie if c.name == COOKIE] == [True]
    streamed = browser.get("/dashboards/l-a/stream")
    assert streamed.text == "line 0\nline 1\nline 2\n"


def test_without_a_live_session_of_its_owner_a_dashboard_is_not_found(proxied):
    service, url = proxied
    with httpx.Client(base_url=url, timeout=10) as stranger:
        assert stranger.get("/dashboards/l-a/").status_code == 404
        stranger.cookies.set(COOKIE, "forged", path="/dashboards/l-a/")
        assert stranger.get("/dashboards/l-a/").status_code == 404
        assert stranger.get("/dashboards/l-a/?ticket=forged").status_code == 404
    # B's ticket is B's: on A's lease, B's session reaches nothing.
    browser = httpx.Client(base_url=url, timeout=10)
    path = browser.post("/v1/jobs/j-1/dashboard", headers={"Authorization": "Bearer keyB"}).json()[
        "path"
    ]
    assert browser.get(path, follow_redirects=True).status_code == 404
    # A ticket is spent on first use: a link that leaked is worth nothing.
    owner = httpx.Client(base_url=url, timeout=10)
    path = owner.post("/v1/jobs/j-1/dashboard", headers={"Authorization": "Bearer keyA"}).json()[
        "path"
    ]
    assert owner.get(path, follow_redirects=True).status_code == 200
    assert httpx.get(url + path, timeout=10).status_code == 404
    # The lease ends: its sessions reach nothing.
    kept = service.running.pop("l-a")
    try:
        assert owner.get("/dashboards/l-a/").status_code == 404
    finally:
        service.running["l-a"] = kept
    assert owner.get("/dashboards/l-a/").status_code == 200


def test_the_proxy_is_read_only(proxied):
    _, url = proxied
    browser = signed_in(url)
    refused = browser.post("/dashboards/l-a/api/jobs/", json={"entrypoint": "sh"})
    assert refused.status_code == 405 and refused.json()["error"] == "read_only"


def test_a_websocket_is_relayed_with_the_token(proxied):
    from websockets.sync.client import connect

    _, url = proxied
    browser = signed_in(url)
    session = browser.cookies.get(COOKIE)
    ws_url = url.replace("http", "ws", 1) + "/dashboards/l-a/api/jobs/j-1/logs/tail"
    with connect(ws_url, additional_headers={"Cookie": f"{COOKIE}={session}"}) as socket:
        got = [socket.recv(timeout=5) for _ in range(3)]
    assert got == [f"j-1 log {i}\n" for i in range(3)]
    with pytest.raises(Exception), connect(ws_url) as socket:  # noqa: B017 (any refusal)
        socket.recv(timeout=5)
