"""This box as a seller: join with one command, run, status, the local dashboard, leave."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import typer

from computeswarm.cluster.cli.commands import ago_text, gpus_label, num_text
from computeswarm.cluster.cli.options import JSON, YES

seller_app = typer.Typer(
    help="This box as a seller: join, status, dashboard, leave.", no_args_is_help=True
)

DASHBOARD_PORT = typer.Option(
    7878, help="The local dashboard's port on 127.0.0.1 (0: any free one; -1: none)."
)
DEFAULT_SELLER_STATE = Path("/var/lib/computeswarm/seller")

SELLER_STATE = typer.Option(
    DEFAULT_SELLER_STATE,
    "--state-dir",
    envvar="COMPUTESWARM_SELLER_DIR",
    help="Where this box keeps its keys and enrollment.",
)


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
    dashboard_port: int = DASHBOARD_PORT,
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
        _start_agent(state_dir, detach, dashboard_port)


@seller_app.command("run")
def seller_run(
    state_dir: Path = SELLER_STATE,
    detach: bool = typer.Option(False, help="Run the agent in the background."),
    dashboard_port: int = DASHBOARD_PORT,
) -> None:
    """Reconnect an enrolled box: tunnel up, agent on (what the systemd unit runs)."""
    from computeswarm.cluster.seller.join import ensure_tunnel

    typer.echo(ensure_tunnel(_enrollment(state_dir), state_dir), err=True)
    _start_agent(state_dir, detach, dashboard_port)


@seller_app.command("agent", hidden=True)
def seller_agent(
    state_dir: Path = SELLER_STATE,
    dashboard_fd: int | None = typer.Option(None, help="The dashboard's bound socket."),
) -> None:
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
    dashboard = None
    if dashboard_fd is not None:
        import logging
        import socket

        from computeswarm.cluster.seller.dashboard.server import Dashboard
        from computeswarm.cluster.seller.dashboard.state import Box

        try:
            sock = socket.socket(fileno=dashboard_fd)
            dashboard = Dashboard(Box(state_dir, enrollment.client(overlay=True)), sock).start()
        except OSError as e:  # the box is offered all the same: the page is a convenience
            logging.getLogger("computeswarm.dashboard").warning("no dashboard: %s", e)
    try:
        raise typer.Exit(agent.run(stop))
    finally:
        if dashboard:
            dashboard.stop()


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
        f"  gpus: {gpus_label(remote)}\n"
        f"  offer: {offer.price_per_gpu_hour + ' per GPU-hour' if offer else 'none'}\n"
        f"  last heartbeat: {ago_text(remote.last_heartbeat)}; rtt "
        f"{num_text(remote.rtt_ms)} ms, {num_text(remote.bandwidth_mbps)} Mbit/s\n"
        f"  agent: pid {local.get('pid', '-')}, error: {local.get('error') or 'none'}\n"
        f"  tunnel: {'up' if info['tunnel_up'] else 'down'} ({enrollment.interface})"
    )


@seller_app.command("dashboard")
def seller_dashboard(
    state_dir: Path = SELLER_STATE,
    open_browser: bool = typer.Option(False, "--open", help="Open it in the browser."),
    port: int = typer.Option(7878, help="Where to serve it when the agent is not running."),
) -> None:
    """Print (--open: open) this box's local dashboard: earnings, uptime, lease, price.

    The agent serves it; with no agent running, this command serves it until Ctrl-C."""
    import webbrowser

    from computeswarm.cluster.seller.dashboard.server import Dashboard, listen, login_url
    from computeswarm.cluster.seller.dashboard.state import Box

    enrollment = _enrollment(state_dir)
    link = login_url(state_dir) if _agent_running(state_dir) else None
    dashboard = None
    if link is None:
        box = Box(state_dir, enrollment.client(overlay=False))
        dashboard = Dashboard(box, listen(port)).start()
        link = login_url(state_dir)
    typer.echo(link)
    if open_browser:
        webbrowser.open(link)
    if dashboard:
        stops = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stops)  # sigwait takes them, not a handler
        try:
            signal.sigwait(stops)
        finally:
            dashboard.stop()


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


# -- helpers ----------------------------------------------------------------------------------


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


def _start_agent(state_dir: Path, detach: bool, dashboard_port: int) -> None:
    """The agent, in the workload namespace; its dashboard's socket is bound here first,
    on this box's own 127.0.0.1 (the workload namespace's is not the seller's browser's),
    and inherited."""
    from computeswarm.cluster.seller.join import agent_argv

    argv = agent_argv(state_dir)
    fds: tuple[int, ...] = ()
    if dashboard_port >= 0:
        from computeswarm.cluster.seller.dashboard.server import listen

        sock = listen(dashboard_port)
        os.set_inheritable(sock.fileno(), True)
        fds = (sock.fileno(),)
        argv = [*argv, "--dashboard-fd", str(sock.fileno())]
        typer.echo(
            f"dashboard on http://127.0.0.1:{sock.getsockname()[1]}/ "
            "(computeswarm seller dashboard --open)",
            err=True,
        )
    if detach:
        import subprocess

        with open(state_dir / "agent.log", "ab") as log:
            process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                pass_fds=fds,
            )
        typer.echo(f"agent running in the background, pid {process.pid}", err=True)
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(argv[0], argv)  # the agent takes this process's place (and PID)


def _agent_running(state_dir: Path) -> bool:
    from computeswarm.cluster.seller.agent import PID_FILE

    try:
        os.kill(int((state_dir / PID_FILE).read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


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
