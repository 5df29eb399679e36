"""Heartbeats past the framework: the coordinator's hottest request, answered in a few
lines of ASGI.

Every seller heartbeats every few seconds. Through FastAPI a heartbeat cost about three
times a bare `/healthz` on one core, most of it routing (a scan of every route),
dependency solving and response re-validation, not the heartbeat's own work. This
middleware sits inside the access log and the body limit and answers a well-formed
`POST /v1/sellers/{seller_id}/heartbeat` itself, with the steps of the
route it shadows (`routes/sellers.py`, which stays, for the schema and for every refusal):
the key and its rate limit, the body as `HeartbeatRequest`, `SellersService.heartbeat` in
the thread pool, and the same error bodies (`errors.py`).
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from starlette.requests import Request

from computeswarm.cluster.api import deps
from computeswarm.cluster.api.errors import api_error_body, error_json
from computeswarm.cluster.api.schemas import HeartbeatReply, HeartbeatRequest
from computeswarm.cluster.errors import ApiError
from computeswarm.errors import UserError

PATH = re.compile(r"/v1/sellers/([^/]+)/heartbeat")
ROUTE = SimpleNamespace(path="/v1/sellers/{seller_id}/heartbeat")  # for the access log


class HeartbeatFastPath:
    """Answers well-formed heartbeats; hands every other request, and any heartbeat whose
    body the route would refuse, to the app behind it (body replayed), so those refusals
    are FastAPI's own answers, byte for byte."""

    def __init__(self, app, services: deps.ApiServices):
        self.app = app
        self.services = services

    async def __call__(self, scope, receive, send):
        found = (
            scope["type"] == "http" and scope["method"] == "POST" and PATH.fullmatch(scope["path"])
        )
        if not found:
            return await self.app(scope, receive, send)
        raw = await _body(receive)
        if raw is None:
            return  # the client went away (or the body limit answered)
        request = Request(scope)
        beat = _heartbeat(request, raw)
        if beat is None:
            return await self.app(scope, _replay(raw, receive), send)  # the route refuses it
        scope["route"] = ROUTE
        try:
            # One hop to the thread pool for both: a key not cached needs the store.
            reply = await run_in_threadpool(self._serve, request, found[1], beat)
            status, body, headers = 200, reply.model_dump_json().encode(), {}
        except ApiError as e:
            status, body, headers = api_error_body(e)
        except UserError as e:
            status, body, headers = 400, error_json("bad_request", str(e)), {}
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *((k.lower().encode(), v.encode()) for k, v in headers.items()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _serve(self, request: Request, seller_id: str, beat: HeartbeatRequest) -> HeartbeatReply:
        who = self.services.gate.authenticate(request)
        return self.services.sellers.heartbeat(who, seller_id, beat)


def _heartbeat(request: Request, raw: bytes) -> HeartbeatRequest | None:
    """The body as the route would read it, or None if the route would refuse it."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return None
    try:
        return HeartbeatRequest.model_validate(json.loads(raw))
    except (ValueError, ValidationError):  # not JSON, or not a heartbeat
        return None


async def _body(receive) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(raw: bytes, receive):
    sent = False

    async def replayed():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": raw, "more_body": False}

    return replayed
