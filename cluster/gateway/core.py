"""The inference gateway's pure core: serve targets, its errors, and request checks.

The gateway is the only public way into a buyer's Ray Serve app. The HTTP layer
(`cluster/api/routes/gateway.py`) authenticates, asks a `GatewayBackend` where the app runs,
and acts on the values this module, `limits.py` and `usage.py` return; nothing here does I/O.
"""

from __future__ import annotations

import json
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
