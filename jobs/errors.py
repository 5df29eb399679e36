"""Errors of job specs and jobs."""

from __future__ import annotations

from computeswarm.errors import UserError


class SpecError(UserError):
    """A job spec is invalid; the message lists every problem with its fix."""
