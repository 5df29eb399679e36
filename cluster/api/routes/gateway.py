"""The inference gateway's HTTP layer: `/v1/serve/{job_id}/v1/...` proxied to the serve app.

A buyer's OpenAI client points `base_url` at `http://<coordinator>/v1/serve/<job_id>/v1`
with its ComputeSwarm API key as the bearer token. The key never travels upstream.
Errors are JSON `{"error": code, "detail": message}`; retryable ones (429, 503) also
carry `"retryable": true` and `Retry-After`. The serve app's own 4xx answers are relayed as
they are; its 5xx (a replica died under the request, none is up yet) become the retryable
503, as does an unreachable app.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import httpx
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from computeswarm.cluster.accounts.roles import Caller
from computeswarm.cluster.errors import ApiError, NotFound, RateLimited
from computeswarm.cluster.gateway.core import (
    MAX_BODY_BYTES,
    MODELS_PATH,
    ROUTES,
    GatewayBackend,
    InferenceRequest,
    PayloadTooLarge,
    RequestUsage,
    ServeTarget,
    UpstreamUnavailable,
    parse_serve_request,
)
from computeswarm.cluster.gateway.limits import Admitted, ServeLimiter, retry_after_header
from computeswarm.cluster.gateway.usage import SseUsageReader, TokenUsage, sse_error_event, usage_of

log = logging.getLogger("computeswarm.gateway")

UPSTREAM_TIMEOUT = httpx.Timeout(connect=5.0, read=60.0, write=30.0, pool=5.0)
# Per serve job: each has its own pool, so one buyer's long streams cannot take the
# connections another buyer's requests need (M6).
UPSTREAM_LIMITS = httpx.Limits(max_connections=256, max_keepalive_connections=16)
CLIENT_GONE = 499  # the status metered when the buyer hung up mid-stream (nginx's convention)


def gateway_router(
    backend: GatewayBackend,
    caller: Callable[..., object],
    clock: Callable[[], float] = time.monotonic,
    *,
    timeout: httpx.Timeout = UPSTREAM_TIMEOUT,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> APIRouter:
    """The gateway's routes; `caller` is the app's authentication dependency."""
    gateway = _Proxy(backend, ServeLimiter(clock), clock, timeout, max_body_bytes)

    @asynccontextmanager
    async def lifespan(_app) -> AsyncIterator[None]:
        yield
        await gateway.close()

    router = APIRouter(prefix="/v1/serve/{job_id}/v1", tags=["serve"], lifespan=lifespan)

    @router.get("/models")
    async def models(job_id: str, who: Caller = Depends(caller)) -> Response:
        """The serve app's models (OpenAI `GET /v1/models`)."""
        return await gateway.models(job_id, who)

    @router.post("/completions")
    async def completions(job_id: str, request: Request, who: Caller = Depends(caller)) -> Response:
        """OpenAI `POST /v1/completions`, checked, rate limited and metered."""
        return await gateway.infer("completions", job_id, request, who)

    @router.post("/chat/completions")
    async def chat_completions(
        job_id: str, request: Request, who: Caller = Depends(caller)
    ) -> Response:
        """OpenAI `POST /v1/chat/completions`, checked, rate limited and metered."""
        return await gateway.infer("chat.completions", job_id, request, who)

    return router


class _Proxy:
    """The proxy behind the routes: one upstream HTTP client per app, made on first use."""

    def __init__(
        self,
        backend: GatewayBackend,
        limiter: ServeLimiter,
        clock: Callable[[], float],
        timeout: httpx.Timeout,
        max_body_bytes: int,
    ):
        self.backend = backend
        self.limiter = limiter
        self.clock = clock
        self.timeout = timeout
        self.max_body_bytes = max_body_bytes
        self._clients: dict[str, httpx.AsyncClient] = {}  # serve job -> its own pool
        self._loop: asyncio.AbstractEventLoop | None = None

    async def models(self, job_id: str, who: Caller) -> Response:
        try:
            target = await self._target(job_id, who)
            self._admit(job_id, who, target, 0)
            response = await self._http(job_id).get(target.url.rstrip("/") + MODELS_PATH)
        except ApiError as e:
            return _error(e)
        except httpx.TransportError as e:
            return _error(_unavailable(e))
        if failed := _server_failure(response.status_code, response.content):
            return _error(failed)
        return _relayed(response.content, response)

    async def infer(self, route: str, job_id: str, request: Request, who: Caller) -> Response:
        started = self.clock()
        try:
            target = await self._target(job_id, who)
            raw = await _read_body(request, self.max_body_bytes)
            serve = parse_serve_request(route, raw, target)
            charged = self._admit(job_id, who, target, serve.cost)
        except ApiError as e:
            return _error(e)
        call = _Call(self, job_id, who, target, serve, charged, started)
        url = target.url.rstrip("/") + ROUTES[route]
        client = self._http(job_id)
        try:
            upstream = await client.send(
                client.build_request("POST", url, json=serve.body, headers=_accept(serve)),
                stream=True,
            )
        except httpx.TransportError as e:
            call.refund()
            return _error(_unavailable(e), background=call.record_task(503, None))
        if serve.stream and upstream.status_code == 200 and _is_sse(upstream):
            return StreamingResponse(
                call.relay(upstream),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            content = await upstream.aread()
        except httpx.TransportError as e:
            call.settle(None)
            return _error(_unavailable(e), background=call.record_task(503, None))
        finally:
            await upstream.aclose()
        if failed := _server_failure(upstream.status_code, content):
            # Serve answers 5xx when the replica died under the request (its seller was
            # lost) or none is up yet: nothing was generated, so nothing is charged.
            call.refund()
            return _error(failed, background=call.record_task(failed.status, None))
        usage = _json_usage(content)
        call.settle(usage)
        return _relayed(content, upstream, background=call.record_task(upstream.status_code, usage))

    async def close(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.aclose()

    async def _target(self, job_id: str, who: Caller) -> ServeTarget:
        # The backend may read the store: keep that off the event loop.
        target = await run_in_threadpool(self.backend.target, job_id, who.account_id)
        if target is None:
            raise NotFound(f"no running serve job {job_id!r}")
        return target

    def _admit(self, job_id: str, who: Caller, target: ServeTarget, cost: int) -> int:
        decision = self.limiter.admit(job_id, who.key_id, target, cost)
        if not isinstance(decision, Admitted):
            raise RateLimited(decision.retry_after_s)
        return decision.charged

    def _http(self, job_id: str) -> httpx.AsyncClient:
        # One client per serve job and event loop (normally one loop per app; test clients
        # start their own loops, and a client must not outlive the loop it was made on).
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._clients, self._loop = {}, loop
        client = self._clients.get(job_id)
        if client is None:
            client = self._clients[job_id] = httpx.AsyncClient(
                timeout=self.timeout,
                limits=UPSTREAM_LIMITS,
                trust_env=False,  # the overlay is direct: never through an environment proxy
                follow_redirects=False,
            )
        return client


class _Call:
    """One admitted inference request: settles the up-front charge and meters the outcome."""

    def __init__(
        self,
        gateway: _Proxy,
        job_id: str,
        who: Caller,
        target: ServeTarget,
        serve: InferenceRequest,
        charged: int,
        started: float,
    ):
        self.gateway = gateway
        self.job_id = job_id
        self.who = who
        self.target = target
        self.serve = serve
        self.charged = charged
        self.started = started

    def refund(self) -> None:
        """Nothing reached the serve app: give back the whole charge."""
        self.settle(TokenUsage())

    def settle(self, usage: TokenUsage | None) -> None:
        """Correct the up-front charge by the real usage (kept as is when none came back)."""
        used = usage.total_tokens if usage is not None else None
        self.gateway.limiter.settle(self.job_id, self.who.key_id, self.target, self.charged, used)

    def usage(self, status: int, usage: TokenUsage | None) -> RequestUsage:
        usage = usage or TokenUsage()
        return RequestUsage(
            job_id=self.job_id,
            account_id=self.who.account_id,
            key_id=self.who.key_id,
            model=self.serve.model,
            route=self.serve.route,
            status=status,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            gpu_seconds=usage.gpu_seconds,
            seconds=max(0.0, self.gateway.clock() - self.started),
            stream=self.serve.stream,
        )

    def record_task(self, status: int, usage: TokenUsage | None) -> BackgroundTask:
        """Metering that runs in a thread once the response has been sent."""
        return BackgroundTask(self._record, self.usage(status, usage))

    def _record(self, usage: RequestUsage) -> None:
        try:
            self.gateway.backend.record(usage)
        except Exception:
            log.exception("metering failed for serve job %s", self.job_id)

    async def relay(self, upstream: httpx.Response) -> AsyncIterator[bytes]:
        """The serve app's SSE bytes as they come, watched for the final usage."""
        reader = SseUsageReader()
        status = CLIENT_GONE  # until the loop below finishes one way or another
        try:
            try:
                async for chunk in upstream.aiter_bytes():
                    reader.feed(chunk)
                    yield chunk
            except httpx.TransportError as e:
                log.warning("serve job %s dropped a stream: %r", self.job_id, e)
                status = 503
                yield sse_error_event(f"the serve app dropped the stream ({type(e).__name__})")
                return
            if reader.done:
                status = 200
            else:
                status = 503
                yield sse_error_event("the serve app ended the stream before [DONE]")
        finally:
            # Runs on client disconnect too (cancelled): shield the clean-up and metering.
            usage = reader.usage
            if usage is None and status == CLIENT_GONE:
                usage = self.partial_usage(reader.events)
            with anyio.CancelScope(shield=True):
                await upstream.aclose()
                self.settle(usage)
                await anyio.to_thread.run_sync(self._record, self.usage(status, usage))

    def partial_usage(self, events: int) -> TokenUsage:
        """What a buyer who hung up before the final usage event had generated: a token per
        content event relayed, the prompt at four characters a token, the time it took. It
        was metered at 0 (L6), so hanging up early made streams free."""
        return TokenUsage(
            prompt_tokens=max(1, self.serve.prompt_chars // 4),
            completion_tokens=events,
            gpu_seconds=max(0.0, self.gateway.clock() - self.started),
        )


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body over the {limit}-byte limit")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"request body over the {limit}-byte limit")
    return bytes(body)


def _accept(serve: InferenceRequest) -> dict[str, str]:
    return {"accept": "text/event-stream" if serve.stream else "application/json"}


def _is_sse(response: httpx.Response) -> bool:
    return response.headers.get("content-type", "").startswith("text/event-stream")


def _json_usage(content: bytes) -> TokenUsage | None:
    try:
        return usage_of(json.loads(content))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def _relayed(
    content: bytes, upstream: httpx.Response, background: BackgroundTask | None = None
) -> Response:
    return Response(
        content,
        status_code=upstream.status_code,
        media_type=upstream.headers.get("content-type", "application/json"),
        background=background,
    )


def _server_failure(status: int, content: bytes) -> UpstreamUnavailable | None:
    """A 5xx from upstream as the gateway's retryable 503 (None for any other status)."""
    if status < 500:
        return None
    said = content[:200].decode(errors="replace").strip() or "no detail"
    return UpstreamUnavailable(f"the serve app failed the request (HTTP {status}: {said}); retry")


def _unavailable(e: httpx.TransportError) -> UpstreamUnavailable:
    return UpstreamUnavailable(f"the serve app is unreachable ({type(e).__name__}); retry shortly")


def _error(e: ApiError, background: BackgroundTask | None = None) -> JSONResponse:
    body: dict[str, object] = {"error": e.code, "detail": e.detail}
    headers = {}
    retry_after = getattr(e, "retry_after_s", None)
    if retry_after is not None:
        body["retryable"] = True
        headers["Retry-After"] = str(retry_after_header(retry_after))
    return JSONResponse(body, status_code=e.status, headers=headers, background=background)
