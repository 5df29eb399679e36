"""Each lease's Ray dashboard through the coordinator: `/dashboards/<lease>/...`.

`POST /v1/jobs/<job>/dashboard` (the owner's API key) returns a one-use link; opening it
swaps the ticket for a session cookie scoped to that lease's path, and every request
after it is proxied to the lease head with the lease's Ray token added. The buyer never
sees that token, nor the head's overlay address. Another buyer, a spent or expired
session, or a lease that is over gets a 404.

Read-only: GET and HEAD (and websockets, which Ray uses to tail logs). Ray's own
endpoints that change things (submitting or stopping jobs) go around the market's
metering and placement; the coordinator's API does those.

Ray's pages are relative to wherever they are served (`./static/...`, `api/...` with the
leading slash stripped), so a path per lease works; ray#37844's links that start with `/`
are hash-router links (`/#/logs/...`) in the build this ships with.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.cookiejar
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import APIRouter, Depends, Request, WebSocket
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from computeswarm.cluster.accounts.roles import Caller
from computeswarm.cluster.dashboards.service import DashboardService, Upstream
from computeswarm.cluster.dashboards.sessions import SESSION_TTL_S

log = logging.getLogger("computeswarm.dashboards")
COOKIE = "cs_dashboard"
READ_ONLY = ("GET", "HEAD")
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}
# Ours, not the lease's: the browser's cookies and keys stay here, the token is added.
NOT_FORWARDED = HOP_BY_HOP | {"host", "cookie", "authorization", "x-ray-authorization"}
NOT_RETURNED = HOP_BY_HOP | {"set-cookie"}
TIMEOUT = httpx.Timeout(connect=5.0, read=60.0, write=30.0, pool=5.0)


def _gone() -> Response:
    return JSONResponse({"error": "not_found", "detail": "no such dashboard"}, status_code=404)


def dashboard_router(service: DashboardService, caller) -> APIRouter:
    # One client for every lease: it must keep no cookies, or what one lease's dashboard
    # set would be sent to the next lease's.
    never = http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    client = httpx.AsyncClient(
        timeout=TIMEOUT,
        limits=httpx.Limits(max_connections=128),
        cookies=never,
        trust_env=False,  # the overlay is direct: never through an environment proxy
    )

    @asynccontextmanager
    async def lifespan(_app) -> AsyncIterator[None]:
        yield
        await client.aclose()

    router = APIRouter(tags=["dashboards"], lifespan=lifespan)

    @router.post("/v1/jobs/{job_id}/dashboard")
    def open_dashboard(job_id: str, who: Caller = Depends(caller)) -> dict:
        """A one-use link (a minute) to the Ray dashboard of the job's running lease."""
        return service.open(who, job_id)

    async def target(lease_id: str, session: str | None) -> Upstream | None:
        grant = service.sessions.check(session, lease_id)
        if grant is None:
            return None
        return await run_in_threadpool(service.upstream, lease_id, grant.account_id)

    @router.get("/dashboards/{lease_id}", include_in_schema=False)
    def without_slash(lease_id: str, request: Request) -> Response:
        query = f"?{request.url.query}" if request.url.query else ""
        return RedirectResponse(f"/dashboards/{lease_id}/{query}", status_code=307)

    @router.api_route(
        "/dashboards/{lease_id}/{path:path}",
        methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
        include_in_schema=False,
    )
    async def proxy(lease_id: str, path: str, request: Request) -> Response:
        if ticket := request.query_params.get("ticket"):
            return _sign_in(service, lease_id, ticket, request)
        upstream = await target(lease_id, request.cookies.get(COOKIE))
        if upstream is None:
            return _gone()
        if request.method not in READ_ONLY:
            return JSONResponse(
                {
                    "error": "read_only",
                    "detail": "the dashboard is read-only through the coordinator; "
                    "use `computeswarm jobs cancel` to stop the job",
                },
                status_code=405,
            )
        headers = {k: v for k, v in request.headers.items() if k.lower() not in NOT_FORWARDED}
        headers["Authorization"] = f"Bearer {upstream.token}"
        outgoing = client.build_request(
            request.method,
            f"{upstream.url}/{path}",
            params=list(request.query_params.multi_items()),
            headers=headers,
        )
        try:
            answer = await client.send(outgoing, stream=True)
        except httpx.HTTPError as e:
            log.warning("lease %s: dashboard unreachable: %s", lease_id, e)
            return JSONResponse(
                {"error": "unavailable", "detail": "the lease's dashboard does not answer yet"},
                status_code=503,
                headers={"Retry-After": "2"},
            )
        returned = {k: v for k, v in answer.headers.items() if k.lower() not in NOT_RETURNED}
        return StreamingResponse(
            answer.aiter_raw(),  # as sent, still compressed: its headers say so
            status_code=answer.status_code,
            headers=returned,
            background=BackgroundTask(answer.aclose),
        )

    @router.websocket("/dashboards/{lease_id}/{path:path}")
    async def socket(websocket: WebSocket, lease_id: str, path: str) -> None:
        upstream = await target(lease_id, websocket.cookies.get(COOKIE))
        if upstream is None:
            await websocket.close(code=4404)
            return
        await _relay(websocket, upstream, path)

    return router


def _sign_in(service: DashboardService, lease_id: str, ticket: str, request: Request) -> Response:
    """A live ticket becomes a session cookie for this lease's path only; the ticket is
    then gone from the address bar (and from the browser's history)."""
    redeemed = service.sessions.redeem(ticket, lease_id)
    if redeemed is None:
        return _gone()
    session, _ = redeemed
    answer = RedirectResponse(f"/dashboards/{lease_id}/", status_code=303)
    answer.set_cookie(
        COOKIE,
        session,
        max_age=int(SESSION_TTL_S),
        path=f"/dashboards/{lease_id}/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return answer


async def _relay(websocket: WebSocket, upstream: Upstream, path: str) -> None:
    """Frames both ways until either side closes."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import WebSocketException

    query = f"?{websocket.url.query}" if websocket.url.query else ""
    url = f"ws{upstream.url.removeprefix('http')}/{path}{query}"
    try:
        lease_side = await connect(
            url, additional_headers={"Authorization": f"Bearer {upstream.token}"}, open_timeout=10
        )
    except (TimeoutError, OSError, WebSocketException):
        await websocket.close(code=1011)
        return
    await websocket.accept()

    async def down() -> None:
        async for frame in lease_side:
            if isinstance(frame, bytes):
                await websocket.send_bytes(frame)
            else:
                await websocket.send_text(frame)

    async def up() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            await lease_side.send(message.get("bytes") or message.get("text") or "")

    tasks = [asyncio.ensure_future(down()), asyncio.ensure_future(up())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await lease_side.close()
        with contextlib.suppress(Exception):
            await websocket.close()
