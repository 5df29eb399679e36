"""`computeswarm head | invite | accounts | sellers` commands: thin, over the client and core."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer

from computeswarm.cluster.cli.options import ADMIN_KEY, COORDINATOR, JSON, operator_client

head_app = typer.Typer(help="Run the coordinator (the head host).", no_args_is_help=True)
invite_app = typer.Typer(help="Invites for new sellers.", no_args_is_help=True)
sellers_app = typer.Typer(help="The sellers the coordinator knows.", no_args_is_help=True)
accounts_app = typer.Typer(help="Accounts and their funds (admin).", no_args_is_help=True)


# -- head -----------------------------------------------------------------------------------


@head_app.command("up")
def head_up(
    config: Path | None = typer.Option(None, "--config", help="Coordinator YAML config."),
    state_dir: Path | None = typer.Option(None, help="Overrides state_dir."),
    port: int | None = typer.Option(None, help="Overrides listen_port."),
    host: str | None = typer.Option(None, help="Overrides listen_host."),
    backend: str | None = typer.Option(None, help="Overrides overlay.backend."),
    database_url: str | None = typer.Option(None, help="Overrides database_url."),
) -> None:
    """Start the coordinator: API, store and WireGuard hub. Stops cleanly on SIGTERM/Ctrl-C."""
    import uvicorn

    from computeswarm.cluster.api.app import create_app
    from computeswarm.cluster.config import load_config
    from computeswarm.cluster.coordinator import Coordinator
    from computeswarm.cluster.logs import configure_logging

    configure_logging()
    cfg = load_config(
        config,
        overrides={
            "state_dir": str(state_dir) if state_dir else None,
            "listen_port": port,
            "listen_host": host,
            "overlay.backend": backend,
            "database_url": database_url,
        },
    )
    coordinator = Coordinator(cfg)
    coordinator.start()
    typer.echo(
        json.dumps(
            {
                "event": "coordinator_up",
                "api": f"http://{cfg.listen_host}:{cfg.listen_port}",
                "overlay_api": coordinator.overlay_api_url(),
                "backend": coordinator.backend_name,
                "admin_key_file": str(coordinator.admin_key_path),
            }
        ),
        err=True,
    )
    try:
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(coordinator),
                host=cfg.listen_host,
                port=cfg.listen_port,
                log_config=None,
                access_log=False,
            )
        )
        server.run()
    finally:
        coordinator.stop()


# -- invites --------------------------------------------------------------------------------


@invite_app.command("create")
def invite_create(
    ttl: float | None = typer.Option(None, help="Lifetime in seconds (default: config's)."),
    note: str = typer.Option("", help="Who it is for."),
    coordinator: str | None = COORDINATOR,
    api_key: str | None = ADMIN_KEY,
    as_json: bool = JSON,
) -> None:
    """Make a single-use, expiring invite for one seller box."""
    from computeswarm.cluster.api.schemas import InviteCreated

    client = operator_client(coordinator, api_key)
    answer = client.create_invite(ttl, note)
    if as_json:
        typer.echo(json.dumps(answer))
        return
    invite = InviteCreated.model_validate(answer)
    expires = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(invite.expires_at))
    typer.echo(
        f"{invite.invite}\n(single use, expires {expires})\n"
        f"on the seller box: computeswarm seller join --coordinator {client.url} "
        f"--invite {invite.invite}"
    )


# -- accounts -------------------------------------------------------------------------------


@accounts_app.command("create")
def accounts_create(
    name: str,
    role: str = typer.Option("buyer", help="buyer, seller or admin."),
    coordinator: str | None = COORDINATOR,
    api_key: str | None = ADMIN_KEY,
    as_json: bool = JSON,
) -> None:
    """Create an account; prints its API key (shown once)."""
    from computeswarm.cluster.api.schemas import AccountCreated

    answer = operator_client(coordinator, api_key).create_account(name, role)
    if as_json:
        typer.echo(json.dumps(answer))
        return
    account = AccountCreated.model_validate(answer)
    typer.echo(f"{account.account_id} ({account.role}): {account.api_key}")


@accounts_app.command("deposit")
def accounts_deposit(
    account_id: str,
    amount: str = typer.Argument(..., help="e.g. 25.00"),
    coordinator: str | None = COORDINATOR,
    api_key: str | None = ADMIN_KEY,
) -> None:
    """Credit a buyer's account (from outside the swarm)."""
    from computeswarm.cluster.api.views import Deposited

    answer = operator_client(coordinator, api_key).deposit(account_id, amount)
    done = Deposited.model_validate(answer)
    typer.echo(f"{done.account}: balance {done.balance}")


# -- sellers --------------------------------------------------------------------------------


@sellers_app.command("list")
def sellers_list(
    include_left: bool = typer.Option(False, "--all", help="Include sellers that left."),
    coordinator: str | None = COORDINATOR,
    api_key: str | None = ADMIN_KEY,
    as_json: bool = JSON,
) -> None:
    """Sellers with their state, GPUs and offers (buyers see online ones only)."""
    from computeswarm.cluster.api.schemas import SellerView

    answer = operator_client(coordinator, api_key).sellers(include_left)
    if as_json:
        typer.echo(json.dumps(answer))
        return
    from rich.console import Console
    from rich.table import Table

    sellers = [SellerView.model_validate(s) for s in answer]
    table = Table(
        "id", "name", "state", "address", "gpus", "price/GPU-h", "rtt ms", "Mbit/s", "heartbeat"
    )
    for s in sellers:
        table.add_row(
            s.id,
            s.name,
            s.state,
            s.address or "-",
            gpus_label(s),
            s.offer.price_per_gpu_hour if s.offer else "-",
            num_text(s.rtt_ms),
            num_text(s.bandwidth_mbps),
            ago_text(s.last_heartbeat),
        )
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def gpus_label(seller) -> str:
    if not seller.gpus:
        return "-"
    first = seller.gpus[0]
    label = f"{len(seller.gpus)}x {first.model} {first.vram_gb}GB"
    return label + (" (simulated)" if seller.gpus_simulated else "")


def num_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def ago_text(ts: float | None) -> str:
    return "never" if ts is None else f"{max(0.0, time.time() - ts):.0f}s ago"
