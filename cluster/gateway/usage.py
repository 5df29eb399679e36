"""What a serve app says a request used (tokens, GPU time), from a JSON answer or read
off an SSE stream as it passes through, and the error event the gateway sends mid-stream."""

from __future__ import annotations

import json
from dataclasses import dataclass

from computeswarm.cluster.gateway.core import UpstreamUnavailable


@dataclass(frozen=True)
class TokenUsage:
    """Token counts and GPU time a serve app reported for one request."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    gpu_seconds: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def usage_of(response: object) -> TokenUsage | None:
    """The `usage` of a response body, read leniently (bad fields count 0); None if absent."""
    if not isinstance(response, dict) or not isinstance(response.get("usage"), dict):
        return None
    usage = response["usage"]
    return TokenUsage(
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
        self.usage: TokenUsage | None = None
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
