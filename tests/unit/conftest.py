"""Unit tests are pure: starting Ray or running a command here is a bug in the test."""

from __future__ import annotations

import subprocess

import pytest

try:  # imported before the guard below, since Ray subclasses subprocess.Popen at import
    import ray
except ImportError:  # pragma: no cover
    ray = None


@pytest.fixture(autouse=True)
def _no_ray_no_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("unit tests must not start Ray or run commands; use a fake")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    if ray is not None:
        monkeypatch.setattr(ray, "init", refuse)
