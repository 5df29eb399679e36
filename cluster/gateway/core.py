"""The inference gateway's pure core: serve targets, request checks, token-aware limits, usage.

The gateway is the only public way into a buyer's Ray Serve app. The HTTP layer
(`cluster/api/gateway_routes.py`) authenticates, asks a `GatewayBackend` where the app runs,
and acts on the values this module returns; nothing here does I/O.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from computeswarm.cluster.errors import ApiError

MAX_BODY_BYTES = 256 * 1024
DEFAULT_MAX_TOKENS = 16
MAX_CHOICES = 8
ROUTES = {"completions": "/v1/completions", "chat.completions": "/v1/chat/completions"}
MODELS_PATH = "/v1/models"


@dataclass(frozen=True)
class ServeTarget:
    """Where a running serve job answers, and the limits its spec sets."""

    url: str  # upstream base, e.g. "http://10.90.0.1:20012" (routes appended: /v1/completions)
    max_tokens: int  # per-request cap from the spec
    requests_per_second: float  # per API key
    tokens_per_second: float  # per API key (prompt + completion tokens)
    max_prompt_chars: int = 32_000


@dataclass(frozen=True)
class RequestUsage:
    """One proxied inference request, for metering."""

    job_id: str
    account_id: str
    key_id: str
    model: str
    route: str  # "completions" | "chat.completions"
    status: int  # HTTP status sent; 503 when the upstream dropped mid-stream, 499 client gone
    prompt_tokens: int
    completion_tokens: int
    gpu_seconds: float
    seconds: float  # gateway wall time
    stream: bool


class GatewayBackend(Protocol):
    """What the gateway needs from the coordinator."""

    def target(self, job_id: str, account_id: str) -> ServeTarget | None:
        """The job's target; None when it is not this account's serve job or not running."""
        ...

    def record(self, usage: RequestUsage) -> None:
        """Meter one request (may block briefly: called from a thread, after the response)."""
        ...

    def flush(self) -> None:
        """Store what `record` queued (the coordinator calls this as it stops)."""
        ...


# -- errors ------------------------------------------------------------------------------
# Gateway-specific API errors; rendered by the gateway routes as {"error", "detail"}.


class InvalidServeRequest(ApiError):
    """A well-formed JSON body whose fields the gateway refuses."""

    status, code = 422, "invalid_request"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class UpstreamUnavailable(ApiError):
    """The serve app could not be reached or dropped the connection; retrying may work."""

    status, code = 503, "upstream_unavailable"
    retry_after_s = 1.0


# -- request checks ----------------------------------------------------------------------


@dataclass(frozen=True)
class InferenceRequest:
    """A checked inference request and the body to send upstream."""

    route: str
    model: str
    max_tokens: int
    choices: int
    prompt_chars: int
    stream: bool
    body: dict = field(hash=False, compare=False)

    @property
    def cost(self) -> int:
        """Tokens charged up front: every completion at its cap, plus the prompt's characters
        (a generous estimate of its tokens; the real count is settled afterwards)."""
        return self.choices * self.max_tokens + self.prompt_chars


def parse_serve_request(route: str, raw: bytes, target: ServeTarget) -> InferenceRequest:
    """Check an OpenAI-style request body against the serve job's limits.

    Raises `ApiError` (400) for a body that is not a JSON object, `InvalidServeRequest` (422)
    for fields the gateway refuses. Fields it does not know are passed on untouched: the
    serve app validates them.
    """
    if route not in ROUTES:
        raise ValueError(f"unknown gateway route {route!r}")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidServeRequest('"model" is required: the model name, a string')
    max_tokens = _max_tokens(body, target.max_tokens)
    choices = _choices(body)
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise InvalidServeRequest('"stream" must be true or false')
    prompt_chars = _prompt_chars(body) if route == "completions" else _messages_chars(body)
    if prompt_chars > target.max_prompt_chars:
        raise InvalidServeRequest(
            f"the prompt is {prompt_chars} characters; this serve job accepts at most "
            f"{target.max_prompt_chars}"
        )
    upstream = {k: v for k, v in body.items() if k != "max_completion_tokens"}
    upstream["max_tokens"] = max_tokens
    upstream["stream"] = stream
    if stream:
        # The gateway meters from the final chunk's usage, so it always asks for it.
        options = body.get("stream_options")
        upstream["stream_options"] = {
            **(options if isinstance(options, dict) else {}),
            "include_usage": True,
        }
    return InferenceRequest(route, model, max_tokens, choices, prompt_chars, stream, upstream)


def _max_tokens(body: dict, cap: int) -> int:
    value = body.get("max_tokens")
    alias = body.get("max_completion_tokens")
    if value is not None and alias is not None and value != alias:
        raise InvalidServeRequest('send "max_tokens" or "max_completion_tokens", not both')
    if value is None:
        value = alias
    if value is None:
        return min(DEFAULT_MAX_TOKENS, cap)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= cap:
        raise InvalidServeRequest(
            f'"max_tokens" must be an integer from 1 to {cap} for this serve job; got {value!r}'
        )
    return value


def _choices(body: dict) -> int:
    n = body.get("n")
    if n is None:
        return 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CHOICES:
        raise InvalidServeRequest(f'"n" must be an integer from 1 to {MAX_CHOICES}; got {n!r}')
    return n


def _prompt_chars(body: dict) -> int:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return len(prompt)
    if isinstance(prompt, list) and prompt and all(_is_prompt_part(p) for p in prompt):
        # Token ids count one each; lists of ids are one prompt each.
        return sum(len(p) if isinstance(p, str | list) else 1 for p in prompt)
    raise InvalidServeRequest(
        '"prompt" is required: a string, a list of strings, or a list of token ids'
    )


def _is_prompt_part(part: object) -> bool:
    if isinstance(part, str):
        return True
    if isinstance(part, int) and not isinstance(part, bool):
        return True
    return isinstance(part, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in part
    )


def _messages_chars(body: dict) -> int:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidServeRequest(
            '"messages" is required: a non-empty list of {"role": ..., "content": ...}'
        )
    chars = 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidServeRequest(f'messages[{i}] must be an object with a "role" string')
        content = message.get("content")
        if content is None or isinstance(content, str):
            chars += len(content or "")
        elif isinstance(content, list) and all(isinstance(p, dict) for p in content):
            chars += sum(_part_chars(p) for p in content)
        else:
            raise InvalidServeRequest(
                f"messages[{i}].content must be a string or a list of content parts"
            )
    return chars


def _part_chars(part: dict) -> int:
    text = part.get("text")
    if part.get("type") == "text" and isinstance(text, str):
        return len(text)
    return len(json.dumps(part))


# -- token-aware rate limits -------------------------------------------------------------


@dataclass(frozen=True)
class Admitted:
    """The request may go ahead; `charged` tokens were taken from the key's token bucket."""

    charged: int


@dataclass(frozen=True)
class Throttled:
    """The request must wait; nothing was charged."""

    retry_after_s: float
    limit: str  # "requests" | "tokens"

    @property
    def retry_after_header(self) -> str:
        return str(retry_after_header(self.retry_after_s))


def retry_after_header(seconds: float) -> int:
    """Whole seconds for `Retry-After`: rounded up, never below 1."""
    return max(1, math.ceil(seconds - 1e-9))


@dataclass
class _Bucket:
    level: float
    updated: float

    def refill(self, now: float, rate: float, capacity: float) -> None:
        self.level = min(capacity, self.level + max(0.0, now - self.updated) * rate)
        self.updated = now


@dataclass
class _KeyBuckets:
    requests: _Bucket
    tokens: _Bucket


class ServeLimiter:
    """Requests/s and tokens/s buckets per (serve job, API key). Pure; the clock is injected.

    Each bucket holds `burst_s` seconds of its rate (at least one request, one token).
    A request charges its whole up-front estimate to the token bucket, which may go into
    debt: a request larger than the bucket waits for a full bucket rather than forever.
    `settle` later refunds (or charges) the difference to the real usage.
    """

    def __init__(self, clock: Callable[[], float], burst_s: float = 1.0, max_keys: int = 100_000):
        self.clock = clock
        self.burst_s = burst_s
        self.max_keys = max_keys
        self._keys: dict[tuple[str, str], _KeyBuckets] = {}
        self._lock = threading.Lock()

    def admit(
        self, job_id: str, key_id: str, target: ServeTarget, cost: int
    ) -> Admitted | Throttled:
        """Charge one request and `cost` tokens, or say how long to wait (charging nothing)."""
        now = self.clock()
        rps, rcap = target.requests_per_second, self._capacity(target.requests_per_second)
        tps, tcap = target.tokens_per_second, self._capacity(target.tokens_per_second)
        with self._lock:
            buckets = self._buckets(job_id, key_id, target, now)
            buckets.requests.refill(now, rps, rcap)
            buckets.tokens.refill(now, tps, tcap)
            waits = []
            if buckets.requests.level < 1:
                waits.append(((1 - buckets.requests.level) / rps, "requests"))
            need = min(float(cost), tcap)
            if cost > 0 and buckets.tokens.level < need:
                waits.append(((need - buckets.tokens.level) / tps, "tokens"))
            if waits:
                wait, limit = max(waits)
                return Throttled(wait, limit)
            buckets.requests.level -= 1
            buckets.tokens.level -= cost
            return Admitted(cost)

    def settle(
        self, job_id: str, key_id: str, target: ServeTarget, charged: int, used: int | None
    ) -> None:
        """Correct an up-front charge by the real usage; `used=None` keeps the charge."""
        if used is None or used == charged:
            return
        now = self.clock()
        with self._lock:
            buckets = self._keys.get((job_id, key_id))
            if buckets is None:
                return
            buckets.tokens.refill(
                now, target.tokens_per_second, self._capacity(target.tokens_per_second)
            )
            buckets.tokens.level = min(
                self._capacity(target.tokens_per_second), buckets.tokens.level + charged - used
            )

    def _capacity(self, rate: float) -> float:
        return max(1.0, rate * self.burst_s)

    def _buckets(self, job_id: str, key_id: str, target: ServeTarget, now: float) -> _KeyBuckets:
        key = (job_id, key_id)
        buckets = self._keys.get(key)
        if buckets is None:
            if len(self._keys) >= self.max_keys:
                self._forget_full(now, target)
            buckets = self._keys[key] = _KeyBuckets(
                _Bucket(self._capacity(target.requests_per_second), now),
                _Bucket(self._capacity(target.tokens_per_second), now),
            )
        return buckets

    def _forget_full(self, now: float, target: ServeTarget) -> None:
        # A bucket pair that has refilled is the same as none: drop those to bound memory.
        # (Rates differ per job; the current target's rates are a close enough test.)
        def full(b: _KeyBuckets) -> bool:
            r = b.requests.level + (now - b.requests.updated) * target.requests_per_second
            t = b.tokens.level + (now - b.tokens.updated) * target.tokens_per_second
            return r >= self._capacity(target.requests_per_second) and t >= self._capacity(
                target.tokens_per_second
            )

        for key in [k for k, b in self._keys.items() if full(b)]:
            del self._keys[key]


# -- usage -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """Token counts and GPU time a serve app reported for one request."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    gpu_seconds: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def usage_of(response: object) -> Usage | None:
    """The `usage` of a response body, read leniently (bad fields count 0); None if absent."""
    if not isinstance(response, dict) or not isinstance(response.get("usage"), dict):
        return None
    usage = response["usage"]
    return Usage(
        _count(usage.get("prompt_tokens")),
        _count(usage.get("completion_tokens")),
        _seconds(usage.get("gpu_seconds")),
    )


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        return 0
    return int(min(value, 2**31))


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        return 0.0
    return float(min(value, 1e9))


class SseUsageReader:
    """Follows a server-sent-events byte stream as it is relayed, chunk by chunk.

    Remembers the last `usage` any data event carried and whether `data: [DONE]` came.
    Chunks may split events, lines or `\\r\\n` anywhere. Lines are split on `\\n` (a lone
    `\\r` line ending is not recognised); an event over `max_event_bytes` is skipped.
    """

    def __init__(self, max_event_bytes: int = 1024 * 1024):
        self.max_event_bytes = max_event_bytes
        self.usage: Usage | None = None
        self.done = False
        self.events = 0
        self._line = bytearray()
        self._data: list[bytes] = []
        self._size = 0
        self._oversized = False

    def feed(self, chunk: bytes) -> None:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                self._append(chunk[start:])
                return
            self._append(chunk[start:end])
            self._end_line()
            start = end + 1

    def _append(self, part: bytes) -> None:
        if self._size + len(self._line) + len(part) > self.max_event_bytes:
            self._oversized = True
            self._line.clear()
            return
        self._line += part

    def _end_line(self) -> None:
        line = bytes(self._line).removesuffix(b"\r")
        self._line.clear()
        if not line:
            self._dispatch()
        elif line.startswith(b"data:"):
            value = line[5:].removeprefix(b" ")
            self._data.append(value)
            self._size += len(value) + 1

    def _dispatch(self) -> None:
        data, oversized = b"\n".join(self._data), self._oversized
        self._data, self._size, self._oversized = [], 0, False
        if oversized or not data:
            return
        self.events += 1
        if data.strip() == b"[DONE]":
            self.done = True
            return
        try:
            event = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return
        usage = usage_of(event)
        if usage is not None:
            self.usage = usage


def sse_error_event(message: str) -> bytes:
    """The event a relayed stream ends with when the serve app drops it: retry the request."""
    error = {"message": message, "type": UpstreamUnavailable.code, "retryable": True}
    return b"data: " + json.dumps({"error": error}).encode() + b"\n\n"
