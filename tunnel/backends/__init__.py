"""Tunnel backends by name, and the choice of the best one this machine supports."""

from __future__ import annotations

from computeswarm.tunnel.backends.base import Capability, Tunnel, TunnelBackend, TunnelSpec
from computeswarm.tunnel.backends.kernel import KernelBackend
from computeswarm.tunnel.backends.none import NoneBackend
from computeswarm.tunnel.backends.userspace import UserspaceBackend
from computeswarm.tunnel.errors import BackendUnavailable

# In order of preference: the fastest first, the fallback last.
BACKENDS: dict[str, type[TunnelBackend]] = {
    "kernel": KernelBackend,
    "userspace": UserspaceBackend,
    "none": NoneBackend,
}

__all__ = [
    "BACKENDS",
    "Capability",
    "Tunnel",
    "TunnelBackend",
    "TunnelSpec",
    "best_backend",
    "doctor",
    "get_backend",
]


def get_backend(name: str) -> TunnelBackend:
    """The backend called `name`, checked: raises BackendUnavailable with the reason."""
    if name not in BACKENDS:
        raise BackendUnavailable(name, f"unknown backend; choose one of {', '.join(BACKENDS)}")
    backend = BACKENDS[name]()
    capability = backend.check()
    if not capability.ok:
        raise BackendUnavailable(name, capability.reason)
    return backend


def doctor() -> dict[str, Capability]:
    """Every backend's capability on this machine, in order of preference."""
    return {name: cls().check() for name, cls in BACKENDS.items()}


def best_backend(*, real_only: bool = False) -> tuple[TunnelBackend, dict[str, Capability]]:
    """The most preferred backend that works here, with the report explaining the choice."""
    report = doctor()
    for name, capability in report.items():
        if capability.ok and not (real_only and name == "none"):
            return BACKENDS[name](), report
    reasons = "; ".join(f"{n}: {c.reason}" for n, c in report.items())
    raise BackendUnavailable("any", reasons)
