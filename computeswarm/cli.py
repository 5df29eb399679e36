"""The `computeswarm` command: one root, one sub-app per package, one-line errors.

Sub-apps import their heavy modules inside commands, so `computeswarm --help` stays fast.
"""

from __future__ import annotations

import sys

import typer

from computeswarm.cluster.cli.commands import (
    accounts_app,
    head_app,
    invite_app,
    sellers_app,
)
from computeswarm.cluster.cli.models import models_app
from computeswarm.cluster.cli.seller import seller_app
from computeswarm.data.cli import cp, datasets_app
from computeswarm.data.volumes_cli import volumes_app
from computeswarm.errors import ComputeSwarmError
from computeswarm.jobs.cli import jobs_app, ledger, market_app, submit, sweeps_app
from computeswarm.jobs.templates_cli import templates_app
from computeswarm.jobs.watch_cli import top
from computeswarm.tunnel.cli import testbed_app, tunnel_app

app = typer.Typer(
    name="computeswarm",
    help="Rent out and rent consumer GPUs for distributed ML, as Ray clusters over WireGuard.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from computeswarm import __version__

        typer.echo(f"computeswarm {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        is_eager=True,
        callback=_print_version,
        help="Print the version and exit.",
    ),
) -> None:
    """Rent out and rent consumer GPUs for distributed ML, as Ray clusters over WireGuard."""


@app.command("up")
def up(
    local: bool = typer.Option(..., "--local", help="A whole swarm on this machine."),
    sellers: int = typer.Option(2, min=1, max=8, help="How many simulated sellers."),
    gpus: str = typer.Option("RTX4090:24GB:1", help="Each seller's (simulated) GPUs."),
    price: str = typer.Option("0.40", help="Each seller's ask per GPU-hour."),
    deposit: str = typer.Option("100", help="Funds for the local buyer."),
    metrics: bool = typer.Option(False, "--metrics", help="Also Prometheus on the head host."),
) -> None:
    """Start a local swarm: coordinator + sellers (real WireGuard when root, else loopback)."""
    from computeswarm.cluster.local.swarm import up as swarm_up

    say = lambda m: typer.echo(m, err=True)  # noqa: E731
    swarm = swarm_up(sellers, gpus, price, deposit, say=say, metrics=metrics)
    typer.echo(
        f"coordinator: {swarm.coordinator}  (API docs: {swarm.coordinator}/docs)\n"
        f"buyer key:   {swarm.buyer_key}\n"
        f"admin key:   {swarm.admin_key}\n"
        "saved to your profile: `computeswarm submit SPEC --follow` works as is"
    )


@app.command("down")
def down(local: bool = typer.Option(..., "--local", help="The local swarm.")) -> None:
    """Stop and remove the local swarm (processes, namespaces, tunnels)."""
    from computeswarm.cluster.local.swarm import down as swarm_down

    swarm_down(say=lambda m: typer.echo(m, err=True))


@app.command("demo")
def demo(sellers: int = typer.Option(2, min=1, max=4, help="Simulated sellers.")) -> None:
    """The main job: a local swarm runs an example job on its sellers, bills it, goes away."""
    from computeswarm.cluster.local.demo import run_demo

    raise typer.Exit(run_demo(sellers, say=typer.echo))


app.command("submit")(submit)
app.add_typer(jobs_app, name="jobs")
app.add_typer(market_app, name="market")
app.add_typer(sweeps_app, name="sweeps")
app.add_typer(models_app, name="models")
app.add_typer(datasets_app, name="datasets")
app.add_typer(volumes_app, name="volumes")
app.command("cp")(cp)
app.add_typer(templates_app, name="templates")
app.command("ledger")(ledger)
app.command("top")(top)
app.add_typer(head_app, name="head")
app.add_typer(invite_app, name="invite")
app.add_typer(accounts_app, name="accounts")
app.add_typer(sellers_app, name="sellers")
app.add_typer(seller_app, name="seller")
app.add_typer(tunnel_app, name="tunnel")
app.add_typer(testbed_app, name="testbed")


def main() -> None:
    """Entry point: user-facing errors print one line; `--debug` shows the traceback."""
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    try:
        app(standalone_mode=False)
    except ComputeSwarmError as e:
        if debug:
            raise
        typer.secho(f"error: {e}", err=True, fg="red")
        sys.exit(1)
    except (typer.Exit, typer.Abort) as e:
        sys.exit(getattr(e, "exit_code", 1))
    except Exception as e:
        if callable(getattr(e, "show", None)):  # typer's usage errors print themselves
            e.show()
            sys.exit(getattr(e, "exit_code", 2))
        if debug:
            raise
        typer.secho(
            f"error: {type(e).__name__}: {e} (run with --debug for the traceback)",
            err=True,
            fg="red",
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
