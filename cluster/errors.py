"""Errors of the coordinator and the seller side; each API error carries its HTTP status."""

from __future__ import annotations

from computeswarm.errors import ComputeSwarmError, UserError


class ApiError(UserError):
    """An error the coordinator API reports to its caller as `{"error": ..., "detail": ...}`."""

    status = 400
    code = "bad_request"

    def __init__(self, detail: str, **fields: object):
        self.detail = detail
        self.fields = fields
        super().__init__(detail)


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class NotFound(ApiError):
    """Also what callers get for objects they may not know exist."""

    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class InvalidInvite(ApiError):
    status, code = 403, "invalid_invite"


class InvalidTransition(Conflict):
    code = "invalid_transition"


class Busy(ApiError):
    """A transient conflict; the same request may succeed when retried."""

    status, code = 503, "busy"


class RateLimited(ApiError):
    status, code = 429, "rate_limited"

    def __init__(self, retry_after_s: float):
        self.retry_after_s = retry_after_s
        super().__init__(f"rate limit exceeded; retry after {retry_after_s:.1f} s")


class ConfigError(UserError):
    """A configuration file or variable is invalid; the message names the fix."""


class CoordinatorUnreachable(ComputeSwarmError):
    """The seller side or the CLI cannot reach the coordinator."""
