"""`computeswarm head | invite | sellers | seller` commands: thin, over the client and core."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import typer

from computeswarm.cluster.cli.options import ADMIN_KEY, COORDINATOR, JSON, YES, operator_client

head_app = typer.Typer(help="Run the coordinator (the head host).", no_args_is_help=True)
invite_app = typer.Typer(help="Invites for new sellers.", no_args_is_help=True)
sellers_app = typer.Typer(help="The sellers the coordinator knows.", no_args_is_help=True)
seller_app = typer.Typer(help="This box as a seller: join, status, leave.", no_args_is_help=True)
accounts_app = typer.Typer(help="Accounts and their funds (admin).", no_args_is_help=True)

DEFAULT_SELLER_STATE = Path("/var/lib/computeswarm/seller")

SELLER_STATE = typer.Option(
    DEFAULT_SELLER_STATE,
    "--state-dir",
    envvar="COMPUTESWARM_SELLER_DIR",
    help="Where this box keeps its keys and enrollment.",
)


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
            _gpus(s),
            s.offer.price_per_gpu_hour if s.offer else "-",
            _num(s.rtt_ms),
            _num(s.bandwidth_mbps),
            _ago(s.last_heartbeat),
        )
    Console(width=None if sys.stdout.isatty() else 200).print(table)


# -- this seller box ------------------------------------------------------------------------


@seller_app.command("join")
def seller_join(
    coordinator: str = typer.Option(
        ..., envvar="COMPUTESWARM_COORDINATOR", help="Coordinator URL reachable from this box."
    ),
    invite: str | None = typer.Option(None, help="Invite token (not needed when enrolled)."),
    state_dir: Path = SELLER_STATE,
    name: str | None = typer.Option(None, help="Name of this box (default: hostname)."),
    simulate_gpus: str | None = typer.Option(
        None, help="Declare simulated GPUs, e.g. RTX4090:24GB:2 (no real GPU needed)."
    ),
    price: str = typer.Option("0.50", help="Ask per GPU-hour."),
    max_lease_hours: int = typer.Option(24, help="Longest lease accepted."),
    cache_gb: float = typer.Option(50.0, min=0.0, help="Disk for cached datasets (GB)."),
    available_hours: float | None = typer.Option(None, help="Offer for N hours (default: open)."),
    interface: str = typer.Option("cs0", help="WireGuard interface (unique on the machine)."),
    workload_netns: str = typer.Option("cs-work", help="Namespace for workloads."),
    backend: str = typer.Option("auto", help="kernel, userspace, none or auto."),
    listen_port: int = typer.Option(51820, help="WireGuard UDP port."),
    endpoint: str | None = typer.Option(None, help="host:port others reach this box at."),
    behind_nat: bool | None = typer.Option(
        None, "--behind-nat/--public", help="Default: detected."
    ),
    detach: bool = typer.Option(False, help="Run the agent in the background."),
    agent: bool = typer.Option(True, help="Start the agent (--no-agent: a service will)."),
) -> None:
    """Join the swarm with one command: keys, enrollment, tunnel, agent. Idempotent."""
    from computeswarm.cluster.seller.join import JoinOptions, ensure_tunnel, join

    options = JoinOptions(
        coordinator=coordinator,
        state_dir=state_dir,
        name=name or JoinOptions.__dataclass_fields__["name"].default_factory(),
        interface=interface,
        workload_netns=workload_netns,
        backend=backend,
        listen_port=listen_port,
        endpoint=endpoint,
        behind_nat=behind_nat,
        simulate_gpus=simulate_gpus,
        price_per_gpu_hour=price,
        max_lease_hours=max_lease_hours,
        available_hours=available_hours,
        cache_gb=cache_gb,
    )
    enrollment, new = join(options, invite)
    typer.echo(
        f"{'enrolled' if new else 'already enrolled'} as {enrollment.seller_id} at "
        f"{enrollment.address}",
        err=True,
    )
    typer.echo(ensure_tunnel(enrollment, state_dir), err=True)
    if agent:
        _start_agent(state_dir, detach)


@seller_app.command("run")
def seller_run(
    state_dir: Path = SELLER_STATE,
    detach: bool = typer.Option(False, help="Run the agent in the background."),
) -> None:
    """Reconnect an enrolled box: tunnel up, agent on (what the systemd unit runs)."""
    from computeswarm.cluster.seller.join import ensure_tunnel

    typer.echo(ensure_tunnel(_enrollment(state_dir), state_dir), err=True)
    _start_agent(state_dir, detach)


@seller_app.command("agent", hidden=True)
def seller_agent(state_dir: Path = SELLER_STATE) -> None:
    """The agent loop itself (started by join/run inside the workload namespace)."""
    import threading

    from computeswarm.cluster.logs import configure_logging
    from computeswarm.cluster.nodes.ray_nodes import become_subreaper
    from computeswarm.cluster.seller.agent import SellerAgent
    from computeswarm.cluster.seller.workers import LeaseWorkers

    configure_logging()
    enrollment = _enrollment(state_dir)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    agent = SellerAgent(
        enrollment.client(overlay=True),
        enrollment.seller_id,
        enrollment.gpu_list,
        enrollment.offer_terms,
        interval_s=enrollment.hub["heartbeat_interval_s"],
        state_dir=state_dir,
        workers=LeaseWorkers.of(enrollment, state_dir),
    )
    become_subreaper()  # Ray's orphaned workers are reaped here, not left as zombies
    raise typer.Exit(agent.run(stop))


@seller_app.command("status")
def seller_status(state_dir: Path = SELLER_STATE, as_json: bool = JSON) -> None:
    """This box as the coordinator sees it, plus the local agent and tunnel."""
    from computeswarm.cluster.api.schemas import SellerView
    from computeswarm.cluster.seller.agent import STATUS_FILE
    from computeswarm.cluster.seller.join import tunnel_is_up

    enrollment = _enrollment(state_dir)
    answer = enrollment.client(overlay=False).seller(enrollment.seller_id)
    status_file = state_dir / STATUS_FILE
    local = json.loads(status_file.read_text()) if status_file.exists() else {}
    info = {
        "seller": answer,
        "agent": local,
        "tunnel_up": tunnel_is_up(enrollment) if enrollment.backend != "none" else None,
    }
    if as_json:
        typer.echo(json.dumps(info))
        return
    remote = SellerView.model_validate(answer)
    offer = remote.offer
    typer.echo(
        f"{remote.id} ({remote.name}): {remote.state} at {remote.address}\n"
        f"  gpus: {_gpus(remote)}\n"
        f"  offer: {offer.price_per_gpu_hour + ' per GPU-hour' if offer else 'none'}\n"
        f"  last heartbeat: {_ago(remote.last_heartbeat)}; rtt "
        f"{_num(remote.rtt_ms)} ms, {_num(remote.bandwidth_mbps)} Mbit/s\n"
        f"  agent: pid {local.get('pid', '-')}, error: {local.get('error') or 'none'}\n"
        f"  tunnel: {'up' if info['tunnel_up'] else 'down'} ({enrollment.interface})"
    )


@seller_app.command("leave")
def seller_leave(state_dir: Path = SELLER_STATE, yes: bool = YES) -> None:
    """Drain and leave the swarm: the coordinator retires this box's address for good."""
    from computeswarm.cluster.seller.join import ENROLLMENT_FILE, tunnel_down

    enrollment = _enrollment(state_dir)
    if not yes:
        typer.confirm(
            f"Leave the swarm as {enrollment.seller_id}? A new invite is needed to come back.",
            abort=True,
        )
    enrollment.client(overlay=False).leave(enrollment.seller_id)
    _stop_agent(state_dir)
    if enrollment.backend != "none":
        tunnel_down(enrollment)
    (state_dir / ENROLLMENT_FILE).unlink()
    typer.echo(
        f"{enrollment.seller_id} left the swarm; its address {enrollment.address} "
        "will not be reused"
    )


# -- helpers --------------------------------------------------------------------------------


def _enrollment(state_dir: Path):
    from computeswarm.cluster.errors import ConfigError
    from computeswarm.cluster.seller.join import Enrollment

    enrollment = Enrollment.load(state_dir)
    if enrollment is None:
        raise ConfigError(
            f"this box is not enrolled (no enrollment in {state_dir}); "
            "run: computeswarm seller join --coordinator URL --invite TOKEN"
        )
    return enrollment


def _start_agent(state_dir: Path, detach: bool) -> None:
    from computeswarm.cluster.seller.join import agent_argv

    argv = agent_argv(state_dir)
    if detach:
        import subprocess

        with open(state_dir / "agent.log", "ab") as log:
            process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        typer.echo(f"agent running in the background, pid {process.pid}", err=True)
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(argv[0], argv)  # the agent takes this process's place (and PID)


def _stop_agent(state_dir: Path) -> None:
    from computeswarm.cluster.seller.agent import PID_FILE

    pid_file = state_dir / PID_FILE
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            os.kill(pid, 0)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pid_file.unlink(missing_ok=True)


def _gpus(seller) -> str:
    if not seller.gpus:
        return "-"
    first = seller.gpus[0]
    label = f"{len(seller.gpus)}x {first.model} {first.vram_gb}GB"
    return label + (" (simulated)" if seller.gpus_simulated else "")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _ago(ts: float | None) -> str:
    return "never" if ts is None else f"{max(0.0, time.time() - ts):.0f}s ago"
