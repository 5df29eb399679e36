"""The OpenAI-compatible surface of a serve job: request models, response bodies, SSE framing.

Pure: no torch, no Ray. The deployment in `computeswarm.serve.app` uses these to speak the
subset of the OpenAI HTTP API that clients such as `openai-python` need:

    GET  /v1/models             -> models_list(...)
    POST /v1/completions        CompletionRequest -> completion_body(...) | completion_chunk(...)
    POST /v1/chat/completions   ChatCompletionRequest -> chat_body(...) | chat_chunk(...)

Every `usage` object also carries `gpu_seconds`: the seconds the replica spent generating
(the accelerator time a buyer pays for; queueing for the replica is not counted).

Chat prompt format (models without a chat template, like the swarm's tiny test models):
each message becomes one line `"{role}: {content}\n"`, and the prompt ends with
`"assistant: "`, so `[{"role": "user", "content": "2+2="}]` becomes `"user: 2+2=\nassistant: "`.
A tokenizer with a `chat_template` uses that template instead.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MAX_STOP_STRINGS = 4
SSE_DONE = "data: [DONE]\n\n"
DEFAULT_OWNER = "computeswarm"


class _Lenient(BaseModel):
    # OpenAI clients send fields this server does not use (user, logprobs, stream_options,
    # ...): they are ignored rather than refused, so stock clients work unchanged.
    model_config = ConfigDict(extra="ignore")


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="Who wrote the message."
    )
    content: str = Field(description="The message text.")


class _GenerationRequest(_Lenient):
    model: str = Field(min_length=1, description="A name from GET /v1/models.")
    max_tokens: int | None = Field(
        None, ge=1, description="Most tokens to generate; capped by the job's max_tokens."
    )
    temperature: float = Field(1.0, ge=0, le=2, description="0 means greedy decoding.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    stream: bool = Field(False, description="Send server-sent events, one per token.")
    stop: str | list[str] | None = Field(
        None, description=f"Up to {MAX_STOP_STRINGS} strings that end the completion."
    )
    seed: int | None = Field(None, description="Seed for sampling (temperature > 0).")
    n: int = Field(1, ge=1, le=1, description="Only one choice per request is supported.")

    @model_validator(mode="after")
    def _stops(self) -> _GenerationRequest:
        stops = self.stop_strings
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"stop takes at most {MAX_STOP_STRINGS} strings")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return self

    @property
    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def token_budget(self, cap: int) -> int:
        """The max_tokens to use: the request's, at most `cap`; `cap` when unset."""
        return cap if self.max_tokens is None else min(self.max_tokens, cap)


class CompletionRequest(_GenerationRequest):
    """Body of POST /v1/completions."""

    prompt: str = Field(min_length=1, description="The text to continue.")


class ChatCompletionRequest(_GenerationRequest):
    """Body of POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1, description="The conversation so far.")
    max_completion_tokens: int | None = Field(
        None, ge=1, description="The newer OpenAI name of max_tokens; wins when both are set."
    )

    @model_validator(mode="after")
    def _max_completion_tokens(self) -> ChatCompletionRequest:
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self


def chat_prompt(messages: list[ChatMessage], tokenizer: Any = None) -> str:
    """The prompt text for a conversation (see the module docstring for the format)."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [m.model_dump() for m in messages], tokenize=False, add_generation_prompt=True
        )
    lines = "".join(f"{m.role}: {m.content}\n" for m in messages)
    return lines + "assistant: "


def usage(prompt_tokens: int, completion_tokens: int, gpu_seconds: float) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "gpu_seconds": round(gpu_seconds, 6),
    }


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def completion_body(
    *, id: str, model: str, text: str, finish_reason: str, usage: dict, created: int | None = None
) -> dict:
    """A whole (non-streamed) /v1/completions response."""
    return {
        "id": id,
        "object": "text_completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage,
    }


def completion_chunk(
    *,
    id: str,
    model: str,
    text: str,
    finish_reason: str | None = None,
    usage: dict | None = None,
    created: int | None = None,
) -> dict:
    """One streamed /v1/completions event; the last one has finish_reason and usage."""
    chunk = {
        "id": id,
        "object": "text_completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
    }
    if usage is not None:
        chunk["usage"] = usage
    return chunk


def chat_body(
    *, id: str, model: str, text: str, finish_reason: str, usage: dict, created: int | None = None
) -> dict:
    """A whole (non-streamed) /v1/chat/completions response."""
    return {
        "id": id,
        "object": "chat.completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage,
    }


def chat_chunk(
    *,
    id: str,
    model: str,
    delta: dict,
    finish_reason: str | None = None,
    usage: dict | None = None,
    created: int | None = None,
) -> dict:
    """One streamed /v1/chat/completions event. The first delta is {"role": "assistant"},
    then {"content": piece} per token; the last is {} with finish_reason and usage."""
    chunk = {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created or int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    if usage is not None:
        chunk["usage"] = usage
    return chunk


def models_list(base: str, adapters: list[str], created: int | None = None) -> dict:
    """GET /v1/models: the base model, then each adapter (its `parent` is the base)."""
    created = created or int(time.time())
    entry = {"object": "model", "created": created, "owned_by": DEFAULT_OWNER}
    data = [{"id": base, **entry, "parent": None}]
    data += [{"id": name, **entry, "parent": base} for name in adapters]
    return {"object": "list", "data": data}


def sse(event: dict) -> str:
    """One server-sent event carrying `event` as JSON."""
    return f"data: {json.dumps(event, separators=(',', ':'))}\n\n"


def parse_sse(text: str) -> list[dict | str]:
    """The events of an SSE body: dicts for JSON payloads, "[DONE]" for the end marker."""
    events: list[dict | str] = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        if not block.startswith("data: "):
            raise ValueError(f"not an SSE data event: {block!r}")
        payload = block[len("data: ") :]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def error_body(
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> dict:
    """An OpenAI-style error body."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def model_not_found(name: str, available: list[str]) -> dict:
    """The 404 body for a request naming a model this job does not serve."""
    return error_body(
        f"The model {name!r} does not exist here; this job serves: {', '.join(available)}.",
        code="model_not_found",
        param="model",
    )


def validation_error(errors: list[dict] | ValidationError) -> dict:
    """The 400 body for an invalid request: every problem in one message."""
    if isinstance(errors, ValidationError):
        errors = errors.errors()
    problems = []
    for err in errors:
        loc = [str(part) for part in err.get("loc", ()) if part != "body"]
        where = ".".join(loc) or "body"
        problems.append(f"{where}: {err.get('msg', 'invalid')}")
    first = next((loc for err in errors if (loc := _param(err))), None)
    return error_body("; ".join(problems) or "invalid request", param=first)


def _param(err: dict) -> str | None:
    loc = [part for part in err.get("loc", ()) if part != "body"]
    return str(loc[0]) if loc else None
