"""Unit tests are pure: starting Ray or running a command here is a bug in the test."""

from __future__ import annotations

import subprocess

import pytest


@pytest.fixture(autouse=True)
def _no_ray_no_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("unit tests must not start Ray or run commands; use a fake")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    try:
        import ray
    except ImportError:
        return
    monkeypatch.setattr(ray, "init", refuse)
