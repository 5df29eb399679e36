"""Where the CLI finds the coordinator and its API key: flag, then environment, then the
profile `computeswarm up --local` writes (~/.computeswarm/profile.json)."""

from __future__ import annotations

import json
import os
from pathlib import Path

DEFAULT_COORDINATOR = "http://127.0.0.1:8443"


def profile_path() -> Path:
    return Path(os.environ.get("COMPUTESWARM_HOME", Path.home() / ".computeswarm")) / "profile.json"


def load_profile() -> dict:
    path = profile_path()
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        return {}


def save_profile(profile: dict) -> Path:
    path = profile_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(profile, f, indent=2)
    return path


def resolve(
    coordinator: str | None, api_key: str | None, *, role: str = "buyer"
) -> tuple[str, str | None]:
    """The coordinator URL and the key for `role` (buyer or admin) from the profile."""
    profile = load_profile()
    url = coordinator or profile.get("coordinator") or DEFAULT_COORDINATOR
    key = api_key or profile.get(f"{role}_key")
    return url, key
