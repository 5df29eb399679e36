"""The API's error bodies, `{"error": code, "detail": message}`, for the exception
handlers and for the heartbeat fast path alike (the same bytes either way)."""

from __future__ import annotations

import json
import math

from computeswarm.cluster.errors import ApiError, RateLimited


def error_json(code: str, detail: str) -> bytes:
    """As Starlette's `JSONResponse` renders it."""
    body = {"error": code, "detail": detail}
    return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def api_error_body(e: ApiError) -> tuple[int, bytes, dict[str, str]]:
    """Status, body and headers for an `ApiError` (429s say when to come back)."""
    headers = {}
    if isinstance(e, RateLimited):
        headers["Retry-After"] = str(max(1, math.ceil(e.retry_after_s)))
    return e.status, error_json(e.code, e.detail), headers


def validation_problems(errors: list[dict]) -> str:
    """pydantic's errors as one line a person can act on."""
    problems = []
    for err in errors:
        where = ".".join(str(p) for p in err["loc"] if p != "body") or "body"
        problems.append(
            f"unknown field {where!r}"
            if err["type"] == "extra_forbidden"
            else f"{where}: {err['msg']}"
        )
    return "; ".join(problems)
