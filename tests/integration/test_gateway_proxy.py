"""The inference gateway over real HTTP: a fake OpenAI-style serve app and the gateway router,
each served by uvicorn on a free 127.0.0.1 port, called with httpx."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.testclient import TestClient

from computeswarm.cluster.accounts.roles import Caller, Role
from computeswarm.cluster.api.app import create_app
from computeswarm.cluster.api.routes.gateway import gateway_router
from computeswarm.cluster.errors import ApiError, Unauthorized
from computeswarm.cluster.gateway.core import RequestUsage, ServeTarget
from tests.integration.http_server import ServerThread

USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8, "gpu_seconds": 0.25}
STREAM_EVENTS = [
    {"id": "c1", "choices": [{"index": 0, "delta": {"content": "Hel"}}]},
    {"id": "c1", "choices": [{"index": 0, "delta": {"content": "lo"}}]},
    {"id": "c1", "choices": [], "usage": USAGE},
]
STREAM_BYTES = (
    b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in STREAM_EVENTS)
    + b"data: [DONE]\n\n"
)


# -- the fake serve app --------------------------------------------------------------------


def fake_serve_app(seen: list[dict]) -> FastAPI:
    """Fixed answers with usage; a path prefix picks a misbehaviour (see `_events`)."""
    app = FastAPI()

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": "tiny", "object": "model"}]}

    @app.post("/{mode:path}/v1/completions")
    @app.post("/{mode:path}/v1/chat/completions")
    @app.post("/v1/completions")
    @app.post("/v1/chat/completions")
    async def complete(request: Request, mode: str = "") -> object:
        body = await request.json()
        seen.append({"path": request.url.path, "headers": dict(request.headers), "body": body})
        if body["model"] == "bad":
            return JSONResponse({"error": "no such model"}, status_code=400)
        if body["model"] == "lost":  # what Ray Serve's proxy says when the replica died
            return PlainTextResponse("RayActorError: the actor died unexpectedly", 500)
        if not body.get("stream"):
            return {"id": "c1", "choices": [{"index": 0, "text": "Hello"}], "usage": USAGE}
        return StreamingResponse(_events(mode), media_type="text/event-stream")

    return app


async def _events(mode: str):
    if mode == "trickle":
        for event in STREAM_EVENTS:
            yield b"data: " + json.dumps(event).encode() + b"\n\n"
            await asyncio.sleep(0.3)
        yield b"data: [DONE]\n\n"
        return
    yield b"data: " + json.dumps(STREAM_EVENTS[0]).encode() + b"\n\n"
    if mode == "dying":
        await asyncio.sleep(0.05)
        raise RuntimeError("the replica died")  # uvicorn drops the connection mid-body
    if mode == "stalling":
        await asyncio.sleep(30)
    if mode == "truncated":
        return  # a clean end, but no usage and no [DONE]
    yield STREAM_BYTES[len(b"data: " + json.dumps(STREAM_EVENTS[0]).encode() + b"\n\n") :]


# -- the gateway under test ----------------------------------------------------------------


@dataclass
class FrozenClock:
    """Limits see no time pass, so bursts are exact however slow the machine."""

    now: float = 5000.0

    def __call__(self) -> float:
        return self.now


class StubBackend:
    """Serve jobs by id, each owned by one account; records metering."""

    def __init__(self):
        self.jobs: dict[str, tuple[str, ServeTarget]] = {}
        self.records: list[RequestUsage] = []
        self._changed = threading.Condition()

    def target(self, job_id: str, account_id: str) -> ServeTarget | None:
        owner, target = self.jobs.get(job_id, (None, None))
        return target if owner == account_id else None

    def record(self, usage: RequestUsage) -> None:
        with self._changed:
            self.records.append(usage)
            self._changed.notify_all()

    def flush(self) -> None:
        pass  # records are kept as they come

    def recorded(self, job_id: str, timeout: float = 5.0) -> RequestUsage:
        with self._changed:
            assert self._changed.wait_for(
                lambda: any(r.job_id == job_id for r in self.records), timeout
            ), f"nothing metered for {job_id}"
            return next(r for r in self.records if r.job_id == job_id)


async def stub_caller(request: Request) -> Caller:
    """`Authorization: Bearer <account>:<key>`."""
    header = request.headers.get("authorization", "")
    if not header.startswith("Bearer ") or ":" not in header:
        raise Unauthorized("missing API key")
    account, key = header[7:].split(":", 1)
    return Caller(account, Role.BUYER, key)


def gateway_app(backend: StubBackend) -> FastAPI:
    app = FastAPI()

    @app.exception_handler(ApiError)
    def api_error(_request: Request, e: ApiError) -> JSONResponse:
        return JSONResponse({"error": e.code, "detail": e.detail}, status_code=e.status)

    timeout = httpx.Timeout(connect=2.0, read=1.0, write=2.0, pool=2.0)
    app.include_router(gateway_router(backend, stub_caller, FrozenClock(), timeout=timeout))
    return app


@dataclass
class Swarm:
    backend: StubBackend
    upstream_url: str
    upstream_seen: list[dict]
    http: httpx.Client

    def serve_job(
        self, account: str = "acct-a", path: str = "", url: str | None = None, **limits
    ) -> str:
        job_id = f"job-{secrets.token_hex(4)}"
        values = {"max_tokens": 64, "requests_per_second": 100.0, "tokens_per_second": 10_000.0}
        target = ServeTarget(url=(url or self.upstream_url) + path, **(values | limits))
        self.backend.jobs[job_id] = (account, target)
        return job_id


@pytest.fixture(scope="module")
def swarm() -> Iterator[Swarm]:
    seen: list[dict] = []
    backend = StubBackend()
    with (
        ServerThread(fake_serve_app(seen)) as upstream,
        ServerThread(gateway_app(backend)) as gateway,
        httpx.Client(base_url=gateway.url, timeout=10, trust_env=False) as http,
    ):
        yield Swarm(backend, upstream.url, seen, http)


A = {"Authorization": "Bearer acct-a:key-a1"}
B = {"Authorization": "Bearer acct-b:key-b1"}
COMPLETION = {"model": "tiny", "prompt": "hello"}
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}]}


# -- tests ---------------------------------------------------------------------------------


def test_completion_is_proxied_and_metered(swarm: Swarm):
    job = swarm.serve_job()
    r = swarm.http.post(f"/v1/serve/{job}/v1/completions", json=COMPLETION, headers=A)
    assert r.status_code == 200, r.text
    assert r.json()["usage"] == USAGE
    usage = swarm.backend.recorded(job)
    assert (usage.account_id, usage.key_id, usage.model, usage.route) == (
        "acct-a",
        "key-a1",
        "tiny",
        "completions",
    )
    assert (usage.status, usage.prompt_tokens, usage.completion_tokens) == (200, 5, 3)
    assert usage.gpu_seconds == 0.25
    assert usage.stream is False
    sent = swarm.upstream_seen[-1]
    assert sent["body"]["max_tokens"] == 16  # the default, filled in
    assert "authorization" not in sent["headers"]  # the buyer's key never goes upstream


def test_models_are_listed(swarm: Swarm):
    job = swarm.serve_job()
    r = swarm.http.get(f"/v1/serve/{job}/v1/models", headers=A)
    assert r.status_code == 200, r.text
    assert r.json()["data"][0]["id"] == "tiny"


def test_chat_stream_is_relayed_intact_and_metered(swarm: Swarm):
    job = swarm.serve_job()
    body = CHAT | {"stream": True}
    with swarm.http.stream(
        "POST", f"/v1/serve/{job}/v1/chat/completions", json=body, headers=A
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        relayed = r.read()
    assert relayed == STREAM_BYTES
    usage = swarm.backend.recorded(job)
    assert (usage.route, usage.stream, usage.status) == ("chat.completions", True, 200)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.gpu_seconds) == (5, 3, 0.25)
    assert swarm.upstream_seen[-1]["body"]["stream_options"] == {"include_usage": True}


def test_stream_chunks_arrive_as_they_are_made(swarm: Swarm):
    job = swarm.serve_job(path="/trickle")
    started = time.monotonic()
    arrivals = []
    with swarm.http.stream(
        "POST", f"/v1/serve/{job}/v1/completions", json=COMPLETION | {"stream": True}, headers=A
    ) as r:
        for chunk in r.iter_raw():
            arrivals.append((time.monotonic() - started, chunk))
    assert b"".join(c for _, c in arrivals) == STREAM_BYTES
    assert arrivals[-1][0] - arrivals[0][0] >= 0.5  # the first event did not wait for the last


def test_another_accounts_job_is_not_found(swarm: Swarm):
    job = swarm.serve_job(account="acct-a")
    before = len(swarm.upstream_seen)
    for path in ("v1/completions", "v1/chat/completions", "v1/models"):
        method = "GET" if path.endswith("models") else "POST"
        r = swarm.http.request(method, f"/v1/serve/{job}/{path}", json=COMPLETION, headers=B)
        assert r.status_code == 404
        assert r.json()["error"] == "not_found"
    missing = swarm.http.post("/v1/serve/job-nope/v1/completions", json=COMPLETION, headers=A)
    assert missing.status_code == 404
    assert missing.json() == r.json() | {"detail": "no running serve job 'job-nope'"}
    assert len(swarm.upstream_seen) == before


def test_no_key_is_401(swarm: Swarm):
    job = swarm.serve_job()
    assert swarm.http.post(f"/v1/serve/{job}/v1/completions", json=COMPLETION).status_code == 401


def test_burst_past_requests_per_second_is_429(swarm: Swarm):
    job = swarm.serve_job(requests_per_second=2.0)
    url = f"/v1/serve/{job}/v1/completions"
    assert [swarm.http.post(url, json=COMPLETION, headers=A).status_code for _ in range(2)] == [
        200,
        200,
    ]
    r = swarm.http.post(url, json=COMPLETION, headers=A)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "1"
    assert r.json()["error"] == "rate_limited"
    assert r.json()["retryable"] is True
    # Another key of the same account has its own bucket.
    other_key = {"Authorization": "Bearer acct-a:key-a2"}
    assert swarm.http.post(url, json=COMPLETION, headers=other_key).status_code == 200


def test_tokens_per_second_is_charged_up_front_and_settled(swarm: Swarm):
    job = swarm.serve_job(tokens_per_second=50.0)
    url = f"/v1/serve/{job}/v1/completions"
    # 40 + 5 prompt chars charged; the serve app reports 8 used, so 50 - 8 = 42 are left.
    assert swarm.http.post(url, json=COMPLETION | {"max_tokens": 40}, headers=A).status_code == 200
    r = swarm.http.post(url, json=COMPLETION | {"max_tokens": 40}, headers=A)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "1"
    assert "rate limit" in r.json()["detail"]
    assert swarm.http.post(url, json=COMPLETION | {"max_tokens": 30}, headers=A).status_code == 200


@pytest.mark.parametrize(
    ("send", "status", "code", "words"),
    [
        ({"content": b"not json"}, 400, "bad_request", "not valid JSON"),
        ({"json": {"prompt": "x"}}, 422, "invalid_request", '"model" is required'),
        ({"json": COMPLETION | {"max_tokens": 65}}, 422, "invalid_request", "from 1 to 64"),
        ({"json": COMPLETION | {"stream": "yes"}}, 422, "invalid_request", '"stream"'),
        ({"json": {"model": "tiny"}}, 422, "invalid_request", '"prompt" is required'),
        ({"json": COMPLETION | {"prompt": "x" * 40_000}}, 422, "invalid_request", "at most 32000"),
        ({"content": b" " * 300_000}, 413, "payload_too_large", "262144-byte limit"),
    ],
)
def test_bad_requests_are_refused_before_the_serve_app(swarm: Swarm, send, status, code, words):
    job = swarm.serve_job()
    before = len(swarm.upstream_seen)
    r = swarm.http.post(f"/v1/serve/{job}/v1/completions", headers=A, **send)
    assert r.status_code == status, r.text
    assert r.json()["error"] == code
    assert words in r.json()["detail"]
    assert len(swarm.upstream_seen) == before


def test_chunked_oversized_body_is_413(swarm: Swarm):
    job = swarm.serve_job()

    def chunks():
        for _ in range(40):
            yield b" " * 8192

    r = swarm.http.post(f"/v1/serve/{job}/v1/completions", headers=A, content=chunks())
    assert r.status_code == 413


def test_serve_app_errors_are_forwarded(swarm: Swarm):
    job = swarm.serve_job()
    r = swarm.http.post(
        f"/v1/serve/{job}/v1/completions", json=COMPLETION | {"model": "bad"}, headers=A
    )
    assert r.status_code == 400
    assert r.json() == {"error": "no such model"}
    assert swarm.backend.recorded(job).status == 400


@pytest.mark.parametrize("stream", [False, True])
def test_a_replica_dying_under_a_request_is_a_retryable_503_and_not_charged(
    swarm: Swarm, stream: bool
):
    job = swarm.serve_job()
    r = swarm.http.post(
        f"/v1/serve/{job}/v1/completions",
        json=COMPLETION | {"model": "lost", "stream": stream},
        headers=A,
    )
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "1"
    assert r.json()["error"] == "upstream_unavailable" and r.json()["retryable"] is True
    assert "HTTP 500: RayActorError" in r.json()["detail"]
    usage = swarm.backend.recorded(job)
    assert (usage.status, usage.prompt_tokens, usage.completion_tokens) == (503, 0, 0)


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("stream", [False, True])
def test_unreachable_serve_app_is_a_fast_retryable_503(swarm: Swarm, stream: bool):
    job = swarm.serve_job(url=_closed_port_url())
    started = time.monotonic()
    r = swarm.http.post(
        f"/v1/serve/{job}/v1/completions", json=COMPLETION | {"stream": stream}, headers=A
    )
    assert time.monotonic() - started < 3
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    assert r.json()["error"] == "upstream_unavailable"
    assert r.json()["retryable"] is True
    usage = swarm.backend.recorded(job)
    assert (usage.status, usage.prompt_tokens, usage.completion_tokens) == (503, 0, 0)


def test_unreachable_models_is_503(swarm: Swarm):
    job = swarm.serve_job(url=_closed_port_url())
    r = swarm.http.get(f"/v1/serve/{job}/v1/models", headers=A)
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"


def _last_event(stream: bytes) -> dict:
    events = [e for e in stream.split(b"\n\n") if e.strip()]
    assert events[-1].startswith(b"data: ")
    return json.loads(events[-1][6:])


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/dying", "dropped the stream (RemoteProtocolError)"),
        ("/stalling", "dropped the stream (ReadTimeout)"),
        ("/truncated", "ended the stream before [DONE]"),
    ],
)
def test_a_stream_dropped_midway_ends_with_a_retryable_error_event(
    swarm: Swarm, path: str, why: str
):
    job = swarm.serve_job(path=path)
    started = time.monotonic()
    with swarm.http.stream(
        "POST", f"/v1/serve/{job}/v1/completions", json=COMPLETION | {"stream": True}, headers=A
    ) as r:
        assert r.status_code == 200
        relayed = r.read()
    assert time.monotonic() - started < 5  # the stall is cut by the gateway's read timeout
    assert relayed.startswith(b"data: " + json.dumps(STREAM_EVENTS[0]).encode() + b"\n\n")
    error = _last_event(relayed)["error"]
    assert error["type"] == "upstream_unavailable"
    assert error["retryable"] is True
    assert why in error["message"]
    assert b"data: [DONE]" not in relayed
    usage = swarm.backend.recorded(job)
    assert (usage.status, usage.stream) == (503, True)


def test_a_buyer_hanging_up_mid_stream_is_metered_at_once(swarm: Swarm):
    job = swarm.serve_job(path="/stalling")
    with swarm.http.stream(
        "POST", f"/v1/serve/{job}/v1/completions", json=COMPLETION | {"stream": True}, headers=A
    ) as r:
        assert next(r.iter_raw()).startswith(b"data: ")
    hung_up = time.monotonic()
    usage = swarm.backend.recorded(job, timeout=2.0)  # not after the 1 s read timeout
    assert time.monotonic() - hung_up < 0.9
    assert (usage.status, usage.stream) == (499, True)
    # L6: what was streamed before the hang-up is metered, not 0.
    assert usage.completion_tokens >= 1 and usage.prompt_tokens >= 1


def test_the_coordinator_app_mounts_the_gateway_behind_its_own_keys(swarm: Swarm, sqlite_head):
    """The real app: real API keys; its BodyLimit lets prompts up to the gateway's cap in."""
    sqlite_head.coordinator.gateway = swarm.backend
    http = TestClient(create_app(sqlite_head.coordinator))
    created = http.post(
        "/v1/accounts", headers=sqlite_head.admin, json={"name": "gw-buyer", "role": "buyer"}
    ).json()
    buyer = sqlite_head.auth(created["api_key"])
    job = swarm.serve_job(account=created["account_id"])
    url = f"/v1/serve/{job}/v1/completions"
    r = http.post(url, json=COMPLETION, headers=buyer)
    assert r.status_code == 200, r.text
    assert swarm.backend.recorded(job).account_id == created["account_id"]
    assert http.post(url, json=COMPLETION, headers=sqlite_head.admin).status_code == 404
    assert http.post(url, json=COMPLETION).status_code == 401
    long = http.post(url, json=COMPLETION | {"prompt": "x" * 70_000}, headers=buyer)
    assert long.status_code == 422 and "prompt" in long.json()["detail"]  # past the 64 KiB default
    big = http.post(url, json=COMPLETION | {"prompt": "x" * 300_000}, headers=buyer)
    assert big.status_code == 413
    assert big.json()["error"] == "payload_too_large"


def test_one_jobs_long_streams_do_not_starve_another_jobs_requests(monkeypatch):
    """M6: every serve job shared one upstream pool: one buyer's long streams took the
    connections, and other buyers' requests got 503s."""
    from computeswarm.cluster.api.routes import gateway as gateway_routes

    monkeypatch.setattr(gateway_routes, "UPSTREAM_LIMITS", httpx.Limits(max_connections=2))
    seen: list[dict] = []
    backend = StubBackend()
    app = FastAPI()
    timeout = httpx.Timeout(connect=2.0, read=20.0, write=2.0, pool=1.0)
    app.include_router(gateway_router(backend, stub_caller, FrozenClock(), timeout=timeout))
    with ServerThread(fake_serve_app(seen)) as upstream, ServerThread(app) as gateway:
        swarm = Swarm(backend, upstream.url, seen, httpx.Client())
        hog, other = swarm.serve_job(path="/stalling"), swarm.serve_job(account="acct-b")
        streams = [
            threading.Thread(
                target=_ignore_timeout,
                args=(
                    f"{gateway.url}/v1/serve/{hog}/v1/completions",
                    {**COMPLETION, "stream": True},
                ),
            )
            for _ in range(2)
        ]
        for stream in streams:
            stream.start()
        time.sleep(1.0)  # both streams hold their connections, stalled upstream
        started = time.monotonic()
        r = httpx.post(
            f"{gateway.url}/v1/serve/{other}/v1/completions", json=COMPLETION, headers=B, timeout=10
        )
        assert r.status_code == 200, r.text
        assert time.monotonic() - started < 1.0
        for stream in streams:
            stream.join(10)


def _ignore_timeout(url: str, body: dict) -> None:
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(url, json=body, headers=A, timeout=3)
