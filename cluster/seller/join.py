"""The seller's side of joining: keys, enrollment, the tunnel, and starting the agent.

`join` is idempotent: a box that is already enrolled (its enrollment.json exists)
reconnects instead of enrolling again. The private key never leaves the state directory;
the coordinator gets the public key and a proof of possession bound to the invite.

The WireGuard interface is moved into the workload namespace, so the agent and (later)
the Ray worker run there and reach the overlay only; the UDP socket stays on the host.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from computeswarm.cluster.client import CoordinatorClient
from computeswarm.cluster.errors import ConfigError
from computeswarm.cluster.seller.agent import OfferTerms
from computeswarm.cluster.sellers.gpus import Gpu, detect_gpus, parse_gpu_shorthand
from computeswarm.tunnel import netns, wg
from computeswarm.tunnel.backends import TunnelBackend, best_backend, get_backend
from computeswarm.tunnel.backends.none import NoneBackend, loopback_address
from computeswarm.tunnel.config import DEFAULT_LISTEN_PORT, PeerConfig
from computeswarm.tunnel.keys import KeyStore, possession_proof
from computeswarm.tunnel.overlay import NodePlacement, SpokeNode
from computeswarm.tunnel.topology import Node, spoke_peer_for_hub

ENROLLMENT_FILE = "enrollment.json"


@dataclass
class JoinOptions:
    """What `computeswarm seller join` was told."""

    coordinator: str
    state_dir: Path
    name: str = field(default_factory=socket.gethostname)
    interface: str = "cs0"
    workload_netns: str | None = "cs-work"
    backend: str = "auto"
    listen_port: int = DEFAULT_LISTEN_PORT
    endpoint: str | None = None
    behind_nat: bool | None = None  # None: detect
    simulate_gpus: str | None = None
    price_per_gpu_hour: str = "0.50"
    max_lease_hours: int = 24
    available_hours: float | None = None
    cache_gb: float = 50.0


@dataclass
class Enrollment:
    """What the box keeps after enrolling (enrollment.json, 0600: it holds the API key)."""

    seller_id: str
    address: str
    api_key: str
    hub: dict
    coordinator: str
    name: str
    interface: str
    workload_netns: str | None
    backend: str
    listen_port: int
    endpoint: str | None
    behind_nat: bool
    gpus: list[dict]
    price_per_gpu_hour: str
    max_lease_hours: int
    available_hours: float | None = None
    cache_gb: float = 50.0  # the dataset cache's limit (datasets/ in the state dir)

    @classmethod
    def load(cls, state_dir: Path) -> Enrollment | None:
        path = state_dir / ENROLLMENT_FILE
        return cls(**json.loads(path.read_text())) if path.exists() else None

    def save(self, state_dir: Path) -> None:
        tmp = state_dir / (ENROLLMENT_FILE + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(state_dir / ENROLLMENT_FILE)

    @property
    def gpu_list(self) -> list[Gpu]:
        return [Gpu(**g) for g in self.gpus]

    @property
    def node_ip(self) -> str:
        """The address this box's Ray nodes use: the overlay's, or its loopback stand-in."""
        return loopback_address(self.address) if self.backend == "none" else self.address

    @property
    def offer_terms(self) -> OfferTerms:
        return OfferTerms(self.price_per_gpu_hour, self.max_lease_hours, self.available_hours)

    def client(self, *, overlay: bool) -> CoordinatorClient:
        return CoordinatorClient(
            self.hub["overlay_api_url"] if overlay else self.coordinator, self.api_key
        )


def join(options: JoinOptions, invite: str | None) -> tuple[Enrollment, bool]:
    """Enroll this box (or find it enrolled). Returns (enrollment, newly_enrolled)."""
    options.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    existing = Enrollment.load(options.state_dir)
    if existing is not None:
        return existing, False
    if not invite:
        raise ConfigError(
            f"this box is not enrolled yet ({options.state_dir / ENROLLMENT_FILE} "
            "is missing): pass --invite TOKEN from `computeswarm invite create`"
        )
    gpus = _inventory(options.simulate_gpus)
    keys = KeyStore(options.state_dir).load_or_create()
    backend = _backend(options.backend)
    client = CoordinatorClient(options.coordinator)
    hub = client.hub()
    behind_nat, endpoint = _reachability(options, hub, backend)
    result = client.enroll(
        invite=invite,
        public_key=keys.public,
        proof=possession_proof(keys, hub["public_key"], invite.strip()),
        name=options.name,
        endpoint=endpoint,
        behind_nat=behind_nat,
    )
    enrollment = Enrollment(
        seller_id=result["seller_id"],
        address=result["address"],
        api_key=result["api_key"],
        hub=result["hub"],
        coordinator=options.coordinator,
        name=options.name,
        interface=options.interface,
        workload_netns=_workload_netns(options, backend),
        backend=backend.name,
        listen_port=options.listen_port,
        endpoint=endpoint,
        behind_nat=behind_nat,
        gpus=[g.to_dict() for g in gpus],
        price_per_gpu_hour=options.price_per_gpu_hour,
        max_lease_hours=options.max_lease_hours,
        available_hours=options.available_hours,
        cache_gb=options.cache_gb,
    )
    enrollment.save(options.state_dir)
    return enrollment, True


def ensure_tunnel(enrollment: Enrollment, state_dir: Path) -> str:
    """Bring the tunnel up, or refresh it if it is already up. Returns what was done."""
    backend = get_backend(enrollment.backend)
    if isinstance(backend, NoneBackend):
        return "none backend: no tunnel (loopback addresses)"
    hub = Node(
        "hub",
        enrollment.hub["public_key"],
        enrollment.hub["address"],
        endpoint=enrollment.hub["endpoint"],
    )
    cidr = enrollment.hub["overlay_cidr"]
    if tunnel_is_up(enrollment):
        # Re-admitted by a restarted hub, the old session is dead: handshake afresh.
        peer = spoke_peer_for_hub(hub, cidr, behind_nat=enrollment.behind_nat)
        _refresh_peer(enrollment, peer)
        return f"tunnel {enrollment.interface} already up; reconnected to the hub"
    if enrollment.workload_netns and not netns.exists(enrollment.workload_netns):
        netns.create(enrollment.workload_netns)
    keys = KeyStore(state_dir).load()
    node = Node(
        enrollment.name,
        keys.public,
        enrollment.address,
        endpoint=enrollment.endpoint,
        behind_nat=enrollment.behind_nat,
    )
    placement = NodePlacement(
        enrollment.interface, state_dir / "tunnel", workload_netns=enrollment.workload_netns
    )
    SpokeNode.start(backend, node, keys, hub, cidr, enrollment.listen_port, placement)
    return f"tunnel {enrollment.interface} up at {enrollment.address}"


def tunnel_is_up(enrollment: Enrollment) -> bool:
    ns = enrollment.workload_netns
    if ns and not netns.exists(ns):
        return False
    done = netns.run(["wg", "show", enrollment.interface], netns=ns, check=False)
    return done.returncode == 0


def tunnel_down(enrollment: Enrollment) -> None:
    """Delete the interface (wireguard-go exits with it) and the workload namespace."""
    ns = enrollment.workload_netns
    if ns and netns.exists(ns):
        netns.run(["ip", "link", "del", enrollment.interface], netns=ns, check=False)
        netns.delete(ns)
    elif not ns:
        netns.run(["ip", "link", "del", enrollment.interface], check=False)


def agent_argv(state_dir: Path) -> list[str]:
    """The agent, run inside the workload namespace (where the overlay is)."""
    argv = [
        sys.executable,
        "-m",
        "computeswarm.cli",
        "seller",
        "agent",
        "--state-dir",
        str(state_dir),
    ]
    enrollment = Enrollment.load(state_dir)
    return netns.ns_argv(argv, enrollment.workload_netns if enrollment else None)


def _refresh_peer(enrollment: Enrollment, peer: PeerConfig) -> None:
    ns = enrollment.workload_netns
    wg.remove_peer(enrollment.interface, peer.public_key, namespace=ns)
    wg.set_peer(enrollment.interface, peer, namespace=ns)


def _inventory(simulate: str | None) -> list[Gpu]:
    if simulate:
        return parse_gpu_shorthand(simulate, simulated=True)
    gpus = detect_gpus()
    if not gpus:
        raise ConfigError(
            "no GPU found (nvidia-smi); for a demo, declare simulated ones: "
            "--simulate-gpus RTX4090:24GB:2"
        )
    return gpus


def _backend(name: str) -> TunnelBackend:
    return best_backend()[0] if name == "auto" else get_backend(name)


def _workload_netns(options: JoinOptions, backend: TunnelBackend) -> str | None:
    return None if isinstance(backend, NoneBackend) else options.workload_netns


def _reachability(
    options: JoinOptions, hub: dict, backend: TunnelBackend
) -> tuple[bool, str | None]:
    """(behind_nat, endpoint): declared, or inferred from how the coordinator sees us."""
    if options.endpoint:
        return False, options.endpoint
    local = _local_address_towards(options.coordinator)
    behind_nat = options.behind_nat
    if behind_nat is None:
        behind_nat = hub.get("observed_client_host") not in (None, local)
    if behind_nat or isinstance(backend, NoneBackend):
        return bool(behind_nat), None
    return False, f"{local}:{options.listen_port}"


def _local_address_towards(url: str) -> str | None:
    """The source address this box uses to reach `url` (no packet is sent)."""
    parsed = urlparse(url)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((parsed.hostname, parsed.port or 80))
            return s.getsockname()[0]
    except OSError:
        return None
