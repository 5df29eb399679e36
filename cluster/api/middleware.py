"""ASGI middleware: request size limits, access logs with request ids, latency metrics."""

from __future__ import annotations

import json
import logging
import secrets
import time

from prometheus_client import Histogram

log = logging.getLogger("computeswarm.access")


class BodyLimit:
    """Refuse bodies over `max_bytes` with 413, whether declared or streamed (chunked)."""

    def __init__(self, app, max_bytes: int, larger: dict[str, int] | None = None):
        self.app = app
        self.default = max_bytes
        # Path -> its own limit (uploads); a key ending in "/" is a prefix (the gateway).
        self.larger = larger or {}

    def limit_for(self, path: str) -> int:
        if path in self.larger:
            return self.larger[path]
        for prefix, limit in self.larger.items():
            if prefix.endswith("/") and path.startswith(prefix):
                return limit
        return self.default

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit_for(scope["path"])
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (
            not (declared.isascii() and declared.isdigit()) or int(declared) > limit
        ):
            return await _too_large(send, limit)
        seen = 0
        refused = False

        async def limited_receive():
            # Frameworks swallow exceptions raised while reading a body, so answer 413 here
            # and tell the app the client went away; whatever it sends after is dropped.
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    refused = True
                    await _too_large(send, limit)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if not refused:
                await send(message)

        await self.app(scope, limited_receive, guarded_send)


class AccessLog:
    """One JSON log line and one latency observation per request; sets X-Request-Id.

    Successes on `quiet` routes (heartbeats: every seller, every few seconds) are observed
    but not logged: a line each would be most of the log, and of the heartbeat's cost."""

    def __init__(self, app, latency: Histogram, quiet: frozenset[str] = frozenset()):
        self.app = app
        self.latency = latency
        self.quiet = quiet

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = secrets.token_hex(8)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", "unmatched")
            self.latency.labels(scope["method"], route, str(status)).observe(elapsed)
            if status >= 400 or route not in self.quiet:
                self._log(scope, request_id, route, status, elapsed)

    def _log(self, scope, request_id: str, route: str, status: int, elapsed: float) -> None:
        log.info(
            json.dumps(
                {
                    "event": "request",
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": scope["path"],
                    "route": route,
                    "status": status,
                    "ms": round(elapsed * 1000, 2),
                    "key": scope.get("state", {}).get("key_id"),
                }
            )
        )


async def _too_large(send, limit: int) -> None:
    body = json.dumps(
        {"error": "payload_too_large", "detail": f"request body over the {limit}-byte limit"}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
