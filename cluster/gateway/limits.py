"""The gateway's token-aware rate limits: a request bucket and a token bucket per API key
and serve job, charged up front and settled with what the request really used."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

from computeswarm.cluster.gateway.core import ServeTarget


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
