"""The CLI's shared options, and how a command finds its coordinator and API key.

Coordinator: `--coordinator`, then `COMPUTESWARM_COORDINATOR`, then the profile that
`computeswarm up --local` writes, then http://127.0.0.1:8443. Key: `--api-key`, then
`COMPUTESWARM_API_KEY`, then the profile's key for the command's side - the buyer key for
buyer commands, the admin key for operator ones, which fall back last to the head's
`<state_dir>/admin.key`. So every command works as is after `computeswarm up --local`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from computeswarm.cluster.client import CoordinatorClient

DEFAULT_HEAD_STATE = Path("/var/lib/computeswarm/coordinator")
HEAD_STATE_ENV = "COMPUTESWARM_HEAD__STATE_DIR"  # the coordinator's own override of state_dir

COORDINATOR = typer.Option(
    None,
    "--coordinator",
    envvar="COMPUTESWARM_COORDINATOR",
    help="Coordinator API URL (default: your profile's, then http://127.0.0.1:8443).",
)
API_KEY = typer.Option(
    None,
    "--api-key",
    envvar="COMPUTESWARM_API_KEY",
    help="Your API key (default: your profile's buyer key).",
)
ADMIN_KEY = typer.Option(
    None,
    "--api-key",
    envvar="COMPUTESWARM_API_KEY",
    help="An admin API key (default: your profile's admin key, then <head state_dir>/admin.key).",
)
JSON = typer.Option(False, "--json", help="Print JSON for scripts.")
YES = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")


def buyer_client(coordinator: str | None, api_key: str | None) -> CoordinatorClient:
    """A client for buyer commands: the profile's coordinator and buyer key by default."""
    from computeswarm.cluster.client import CoordinatorClient
    from computeswarm.cluster.errors import ConfigError
    from computeswarm.profile import resolve

    url, key = resolve(coordinator, api_key, role="buyer")
    if not key:
        raise ConfigError(
            "no API key: pass --api-key, set COMPUTESWARM_API_KEY, or run "
            "`computeswarm up --local` (it writes a profile)"
        )
    return CoordinatorClient(url, key, timeout=60)


def operator_client(coordinator: str | None, api_key: str | None) -> CoordinatorClient:
    """A client for operator commands: the profile's coordinator and admin key by default,
    else the admin key the head wrote to its state dir."""
    from computeswarm.cluster.client import CoordinatorClient
    from computeswarm.cluster.errors import ConfigError
    from computeswarm.profile import resolve

    url, key = resolve(coordinator, api_key, role="admin")
    if not key:
        key_file = head_admin_key_file()
        if not key_file.exists():
            raise ConfigError(
                "no API key: pass --api-key, set COMPUTESWARM_API_KEY, or run "
                f"`computeswarm up --local` (the admin key is in <state_dir>/admin.key; "
                f"looked in {key_file})"
            )
        key = key_file.read_text().strip()
    return CoordinatorClient(url, key)


def head_admin_key_file() -> Path:
    """Where a coordinator on this host keeps its admin key."""
    state = os.environ.get(HEAD_STATE_ENV)
    return (Path(state) if state else DEFAULT_HEAD_STATE) / "admin.key"
