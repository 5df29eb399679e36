"""`computeswarm tunnel ...` and `computeswarm testbed ...` commands."""

from __future__ import annotations

import json
from pathlib import Path

import typer

tunnel_app = typer.Typer(
    help="The WireGuard overlay: backends, keys, the demo.", no_args_is_help=True
)
testbed_app = typer.Typer(help="The multi-host netns testbed.", no_args_is_help=True)

JSON = typer.Option(False, "--json", help="Print JSON for scripts instead of a table.")


@tunnel_app.command()
def doctor(as_json: bool = JSON) -> None:
    """Say which tunnel backends work on this machine, and why not the others."""
    from computeswarm.tunnel.backends import doctor as run_doctor

    report = run_doctor()
    if as_json:
        typer.echo(json.dumps({n: {"ok": c.ok, "reason": c.reason} for n, c in report.items()}))
        return
    chosen = next((name for name, c in report.items() if c.ok), None)
    for name, capability in report.items():
        mark = "ok  " if capability.ok else "no  "
        typer.echo(f"{mark}{name:<10} {capability.reason}")
    typer.echo(f"-> the swarm will use the {chosen!r} backend")


@tunnel_app.command()
def keys(
    directory: Path = typer.Argument(..., help="State directory to hold private.key (0600)."),
) -> None:
    """Make this node's key pair if it has none; print its public key (never the private)."""
    from computeswarm.tunnel.keys import KeyStore

    typer.echo(KeyStore(directory).load_or_create().public)


@tunnel_app.command()
def demo(
    backend: str = typer.Option("auto", help="kernel, userspace, none, or auto (best available)."),
) -> None:
    """Hub + two sellers (one behind NAT) over real WireGuard, a round trip, then teardown."""
    from computeswarm.tunnel.demo import run_demo

    raise typer.Exit(run_demo(backend))


@testbed_app.command()
def clean(
    all_runs: bool = typer.Option(False, "--all", help="Also remove runs whose owner is alive."),
) -> None:
    """Remove namespaces, processes and sockets left behind by crashed testbed runs."""
    from computeswarm.tunnel.testbed import clean as clean_runs

    removed = clean_runs(include_live=all_runs)
    typer.echo(
        f"removed {len(removed)} run(s): {' '.join(removed)}" if removed else "nothing to clean"
    )
