"""`computeswarm up --local`: a whole swarm on this machine, and `down --local` to remove it.

With root and wireguard-go it is real: testbed hosts (network namespaces) for the head and
each seller, joined by WireGuard with the one join command, sellers' workloads fenced in
their namespaces, and this machine plugged into the underlay like a buyer's laptop. Without
them it falls back to loopback addresses (the `none` backend) and says so. The sellers'
GPUs are simulated (declared), the work they do is real.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from computeswarm.cluster.client import CoordinatorClient
from computeswarm.cluster.errors import ConfigError
from computeswarm.cluster.nodes.ray_nodes import session_pids, stop_session
from computeswarm.profile import profile_path, save_profile

CS = [sys.executable, "-m", "computeswarm.cli"]
PORT = 8443
LOCAL_ENV = {  # quick failure detection for a demo on one machine
    "COMPUTESWARM_HEAD__HEARTBEAT__INTERVAL_S": "1",
    "COMPUTESWARM_HEAD__HEARTBEAT__TIMEOUT_S": "4",
}


@dataclass
class LocalSwarm:
    mode: str  # "wireguard" or "loopback"
    state_dir: str
    coordinator: str
    admin_key: str = ""
    buyer_key: str = ""
    run_id: str | None = None
    sessions: list[int] = field(default_factory=list)  # loopback mode: our processes
    sellers: list[str] = field(default_factory=list)
    head: dict = field(default_factory=dict)  # the coordinator: pid, argv, env, netns
    prometheus: dict = field(default_factory=dict)  # with --metrics: its session and URL

    @staticmethod
    def record_path() -> Path:
        return profile_path().parent / "local-swarm.json"

    def save(self) -> None:
        """Written 0600 from the start: the record holds the admin and buyer keys."""
        path = self.record_path()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f, indent=2)
        path.chmod(0o600)  # an older record may have been made with the default umask

    @classmethod
    def load(cls) -> LocalSwarm | None:
        path = cls.record_path()
        return cls(**json.loads(path.read_text())) if path.exists() else None


def up(
    sellers: int, gpus: str, price: str, deposit: str, say=print, metrics: bool = False
) -> LocalSwarm:
    """Start a coordinator and `sellers` simulated sellers (and, with `metrics`,
    Prometheus on the head host); return how to reach them."""
    if LocalSwarm.load() is not None:
        raise ConfigError("a local swarm is already up: `computeswarm down --local` first")
    from computeswarm.tunnel.backends import BACKENDS

    state = Path(os.environ.get("COMPUTESWARM_LOCAL_DIR", "/tmp/computeswarm-local"))
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    capability = BACKENDS["userspace"]().check()
    names = [f"s{i + 1}" for i in range(sellers)]
    if not capability.ok:
        say(
            f"no real tunnel here ({capability.reason}): falling back to loopback addresses "
            "(the `none` backend); no encryption, no fencing"
        )
    swarm = LocalSwarm("wireguard" if capability.ok else "loopback", str(state), "", sellers=names)
    try:
        # Each step records what it started in the saved record, so `down` removes it
        # whatever fails next.
        if capability.ok:
            _up_wireguard(swarm, state, names, gpus, price, say)
        else:
            _up_loopback(swarm, state, names, gpus, price)
        _wait_ready(swarm, names, say)
        if metrics:
            _start_prometheus(swarm, state, say)
        admin = CoordinatorClient(swarm.coordinator, swarm.admin_key)
        buyer = admin.create_account("buyer", "buyer")
        admin.deposit(buyer["account_id"], deposit)
        swarm.buyer_key = buyer["api_key"]
        swarm.save()
        save_profile(
            {
                "coordinator": swarm.coordinator,
                "buyer_key": swarm.buyer_key,
                "admin_key": swarm.admin_key,
            }
        )
    except BaseException:
        down(say=lambda *_: None)
        raise
    return swarm


def down(say=print) -> bool:
    swarm = LocalSwarm.load()
    if swarm is None:
        say("no local swarm is up")
        return False
    if swarm.mode == "wireguard" and swarm.run_id:
        from computeswarm.tunnel.testbed import clean

        clean(include_live=True, run_id=swarm.run_id)
    else:
        for session in swarm.sessions:  # SIGTERM first: agents and head stop their Ray nodes
            for pid in session_pids(session):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(session_pids(s) for s in swarm.sessions):
            time.sleep(0.2)
        for session in swarm.sessions:
            stop_session(session, grace_s=2)
    if swarm.prometheus:
        stop_session(swarm.prometheus["pid"], grace_s=5)
    LocalSwarm.record_path().unlink(missing_ok=True)
    profile_path().unlink(missing_ok=True)
    say(f"local swarm removed ({swarm.mode})")
    return True


def _up_wireguard(
    swarm: LocalSwarm, state: Path, names: list[str], gpus: str, price: str, say
) -> None:
    from computeswarm.tunnel.testbed import Testbed

    bed = Testbed.create(["hub", *names], attach_host=True, seller_lan=True)
    bed.detach()
    hub = bed.host("hub")
    swarm.coordinator, swarm.run_id = f"http://{hub.ip}:{PORT}", bed.run_id
    swarm.save()
    say(
        f"testbed {bed.run_id}: head at {hub.ip}, sellers "
        + ", ".join(f"{n} {bed.host(n).ip}" for n in names)
        + " (real WireGuard)"
    )
    env = {
        **LOCAL_ENV,
        "COMPUTESWARM_HEAD__OVERLAY__INTERFACE": bed.iface_name("hub"),
        "COMPUTESWARM_HEAD__PUBLIC_HOST": hub.ip,
    }
    argv = [*CS, "head", "up", "--state-dir", str(state / "head"), "--port", str(PORT)]
    hosts = ["head", *names]  # each its own machine: its own /tmp, /var/tmp and state dir
    _start_head(swarm, state, hub.netns, _in_view(argv, state, "head", hosts), env)
    swarm.admin_key = _admin_key(state, swarm.coordinator)
    for name in names:
        invite = _invite(swarm, name)
        join = [
            *_join_argv(swarm, state, name, invite, gpus, price),
            "--interface",
            bed.iface_name(name),
            "--workload-netns",
            bed.workload_namespace(name),
        ]
        _spawn(bed.host(name).netns, _in_view(join, state, name, hosts), state / f"{name}.log", {})


def _start_prometheus(swarm: LocalSwarm, state: Path, say) -> None:
    """On the head host, where the leases' metrics ports are reachable; served on the
    coordinator's host at port 9090."""
    from computeswarm.cluster.local import metrics

    host_port = swarm.coordinator.split("//", 1)[1]
    listen = f"{host_port.rsplit(':', 1)[0]}:9090"
    process = metrics.start(
        state / "prometheus",
        host_port,
        swarm.admin_key,
        state / "head",
        listen,
        netns=swarm.head.get("netns"),
    )
    swarm.prometheus = {"pid": process.pid, "url": f"http://{listen}"}
    swarm.save()
    say(f"prometheus: http://{listen} (leases' Ray metrics, labelled lease/job/seller)")


def _in_view(argv: list[str], state: Path, name: str, hosts: list[str]) -> list[str]:
    """`argv` in the testbed host `name`'s own file system view (`host_view.py`)."""
    from computeswarm.cluster.local.host_view import view_argv

    for host in hosts:
        (state / host).mkdir(parents=True, exist_ok=True)
    others = [state / h for h in hosts if h != name]
    return view_argv(argv, backing=state / "hosts" / name, own=state / name, others=others)


def _up_loopback(swarm: LocalSwarm, state: Path, names: list[str], gpus: str, price: str) -> None:
    swarm.coordinator = f"http://127.0.0.1:{PORT}"
    head = _start_head(
        swarm,
        state,
        None,
        [
            *CS,
            "head",
            "up",
            "--state-dir",
            str(state / "head"),
            "--port",
            str(PORT),
            "--host",
            "0.0.0.0",
            "--backend",
            "none",
        ],
        {**LOCAL_ENV, "COMPUTESWARM_HEAD__OVERLAY__INTERFACE": "cslocal"},
    )
    swarm.sessions.append(head.pid)
    swarm.save()
    swarm.admin_key = _admin_key(state, swarm.coordinator)
    for name in names:
        argv = [
            *_join_argv(swarm, state, name, _invite(swarm, name), gpus, price),
            "--backend",
            "none",
        ]
        swarm.sessions.append(_spawn(None, argv, state / f"{name}.log", {}).pid)
        swarm.save()


def _start_head(
    swarm: LocalSwarm, state: Path, netns: str | None, argv: list[str], env: dict
) -> subprocess.Popen:
    process = _spawn(netns, argv, state / "head.log", env)
    swarm.head = {"pid": process.pid, "argv": argv, "env": env, "netns": netns}
    swarm.save()
    return process


def crash_and_restart_head(swarm: LocalSwarm, down_for_s: float = 0.0) -> None:
    """Kill the coordinator without warning (SIGKILL, as a crash would) and start it again
    on the same state, `down_for_s` later: the drill for "the coordinator died mid-job".
    Lease heads run in sessions of their own and outlive it; the restarted coordinator
    deals with them."""
    state = Path(swarm.state_dir)
    old = swarm.head["pid"]
    for pid in session_pids(old):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while session_pids(old) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(down_for_s)
    process = _start_head(swarm, state, swarm.head["netns"], swarm.head["argv"], swarm.head["env"])
    if swarm.mode == "loopback":
        swarm.sessions = [process.pid if s == old else s for s in swarm.sessions]
        swarm.save()
    _admin_key(state, swarm.coordinator)


def _invite(swarm: LocalSwarm, name: str) -> str:
    return CoordinatorClient(swarm.coordinator, swarm.admin_key).create_invite(note=name)["invite"]


def _join_argv(
    swarm: LocalSwarm, state: Path, name: str, invite: str, gpus: str, price: str
) -> list[str]:
    return [
        *CS,
        "seller",
        "join",
        "--coordinator",
        swarm.coordinator,
        "--invite",
        invite,
        "--state-dir",
        str(state / name),
        "--name",
        name,
        "--simulate-gpus",
        gpus,
        "--price",
        price,
    ]


def _spawn(netns: str | None, argv: list[str], log: Path, env: dict) -> subprocess.Popen:
    from computeswarm.tunnel.netns import ns_argv

    with open(log, "ab") as out:
        return subprocess.Popen(
            ns_argv(argv, netns),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **env},
        )


def _admin_key(state: Path, url: str, timeout: float = 60.0) -> str:
    """The admin key, once the coordinator answers /readyz."""
    path = state / "head" / "admin.key"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip() and readiness_probe(url):
            return path.read_text().strip()
        time.sleep(0.2)
    raise ConfigError(f"the coordinator did not start; see {state / 'head.log'}")


def _wait_ready(swarm: LocalSwarm, names: list[str], say, timeout: float = 120.0) -> None:
    admin = CoordinatorClient(swarm.coordinator, swarm.admin_key)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            online = [s for s in admin.sellers() if s["state"] == "online" and s["offer"]]
        except Exception:
            online = []
        if len(online) >= len(names):
            say(
                f"{len(online)} sellers online: "
                + ", ".join(
                    f"{s['name']} {s['address']} ({len(s['gpus'])}x {s['gpus'][0]['model']}, "
                    f"{s['offer']['price_per_gpu_hour']}/GPU-h)"
                    for s in online
                )
            )
            return
        time.sleep(0.5)
    raise ConfigError(
        f"sellers did not come online in {timeout:.0f} s; see the logs in {swarm.state_dir}"
    )


def readiness_probe(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False
