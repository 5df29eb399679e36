"""Run commands on this host or inside a network namespace; create and delete namespaces.

The one place that shells out to `ip`: everything above it passes argv lists, never
shell strings, and gets `CommandFailed` with the command's stderr when something breaks.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from computeswarm.errors import CommandFailed

NETNS_DIR = Path("/run/netns")


def ns_argv(argv: Sequence[str], netns: str | None) -> list[str]:
    """`argv` wrapped to run inside `netns` (or unchanged for the host namespace)."""
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)


def run(
    argv: Sequence[str],
    *,
    netns: str | None = None,
    check: bool = True,
    timeout: float = 30,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; raise CommandFailed on a non-zero exit when `check`."""
    full = ns_argv(argv, netns)
    try:
        done = subprocess.run(
            full, capture_output=True, text=True, timeout=timeout, input=input, check=False
        )
    except FileNotFoundError:
        raise CommandFailed(full, 127, f"{full[0]}: command not found") from None
    except subprocess.TimeoutExpired:
        raise CommandFailed(full, -1, f"timed out after {timeout:g} s") from None
    if check and done.returncode != 0:
        raise CommandFailed(full, done.returncode, done.stderr or done.stdout)
    return done


def popen(
    argv: Sequence[str],
    *,
    netns: str | None = None,
    log: Path | None = None,
    env: dict | None = None,
) -> subprocess.Popen:
    """Start a long-running process in its own session (so it can be killed as a group)."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
    try:
        return subprocess.Popen(
            ns_argv(argv, netns),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    finally:
        if log:
            out.close()


def create(name: str) -> None:
    run(["ip", "netns", "add", name])
    run(["ip", "link", "set", "lo", "up"], netns=name)


def delete(name: str) -> None:
    """Delete a namespace (its interfaces go with it); absent is fine."""
    if exists(name):
        run(["ip", "netns", "delete", name], check=False)


def exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def list_all() -> list[str]:
    return sorted(p.name for p in NETNS_DIR.iterdir()) if NETNS_DIR.is_dir() else []


def pids_in(name: str) -> list[int]:
    """PIDs of processes running inside namespace `name`."""
    done = run(["ip", "netns", "pids", name], check=False)
    return [int(p) for p in done.stdout.split()] if done.returncode == 0 else []


def is_root() -> bool:
    return os.geteuid() == 0
