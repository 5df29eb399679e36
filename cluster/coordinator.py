"""The coordinator: the store, the WireGuard hub and the seller registry, wired together.

API routes call these methods. Each one commits its transaction first and only then
touches the hub, so a crash between the two leaves a state that `sync_hub()` repairs on
the next start (the store is the truth; the hub is rebuilt from it).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError

from computeswarm.cluster.accounts.roles import Caller, KeyCache, Role, create_account
from computeswarm.cluster.api.ratelimit import RateLimiter
from computeswarm.cluster.config import CoordinatorConfig
from computeswarm.cluster.errors import Busy
from computeswarm.cluster.gateway.backend import StoreBackend
from computeswarm.cluster.leases.context import Leasing
from computeswarm.cluster.leases.heads import Heads
from computeswarm.cluster.leases.ray_jobs import RayJobs
from computeswarm.cluster.leases.scheduler import LeaseScheduler
from computeswarm.cluster.leases.states import ACTIVE_LEASE_STATES, ACTIVE_MEMBER_STATES, values
from computeswarm.cluster.metrics import (
    MarketMeters,
    SellerCollector,
    StorageCollector,
    api_latency,
)
from computeswarm.cluster.nodes import sandbox
from computeswarm.cluster.nodes.ray_nodes import become_subreaper
from computeswarm.cluster.objects.plane import ObjectPlane
from computeswarm.cluster.prometheus import LeaseTargets
from computeswarm.cluster.sellers import registry
from computeswarm.cluster.sellers.states import SellerState
from computeswarm.cluster.services.datasets import DatasetsService
from computeswarm.cluster.services.jobs import JobsService
from computeswarm.cluster.services.volumes import VolumesService
from computeswarm.cluster.store.db import Store
from computeswarm.cluster.store.models import Account, Lease, LeaseMember, Seller
from computeswarm.errors import SystemError_
from computeswarm.tunnel import netns
from computeswarm.tunnel.addresses import AddressPool
from computeswarm.tunnel.backends import TunnelBackend, best_backend, get_backend
from computeswarm.tunnel.backends.none import NoneBackend
from computeswarm.tunnel.keys import KeyPair, KeyStore
from computeswarm.tunnel.metrics import TunnelCollector
from computeswarm.tunnel.overlay import HubNode, NodePlacement
from computeswarm.tunnel.topology import Node

log = logging.getLogger("computeswarm.coordinator")
ADMIN_KEY_FILE = "admin.key"
ENROLL_ATTEMPTS = 8


class Coordinator:
    def __init__(
        self,
        config: CoordinatorConfig,
        *,
        clock: Callable[[], float] = time.time,
        backend: TunnelBackend | None = None,
    ):
        self.config = config
        self.clock = clock
        self.store = Store(config.resolved_database_url)
        self.pool = AddressPool.from_cidr(config.overlay.cidr)
        self.metrics = CollectorRegistry()
        self.latency = api_latency(self.metrics)
        self.metrics.register(SellerCollector(self.store, clock))
        limits = config.limits
        self.limiter = RateLimiter(limits.requests_per_second, limits.burst, time.monotonic)
        # Wrong keys per client address (L5): a burst, then one a second (an agent left
        # with a revoked key heartbeats about that often and locks no one else out).
        self.failed_logins = RateLimiter(1.0, 30, time.monotonic)
        self.keys = KeyCache(self.store, time.monotonic)
        self._enroll_lock = threading.Lock()  # one allocation of "the next address" at a time
        self._backend = backend
        self.hub: HubNode | None = None
        self.backend_name = "none"
        self.hub_keys: KeyPair | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self.started_at: float | None = None  # by self.clock, once start() ran
        self.objects = ObjectPlane(config.storage, config.state_dir / "objects")
        self.metrics.register(StorageCollector(self.objects.bytes_by_account))
        meters = MarketMeters(self.metrics)
        self.scheduler = LeaseScheduler(
            Leasing(
                self.store,
                clock,
                config.market,
                self.models_root,
                self.head_ip,
                Heads(config.state_dir, self.head_ip, config.market.ray_system_config),
                RayJobs(self.head_ip, config.state_dir / "jobs"),
                on_sale=meters.record_sale,
                on_match=meters.record_match,
                objects=self.objects,
            ),
            sync_fence=self.sync_fence,
        )
        quota = config.storage.quota_bytes_per_account
        self.datasets = DatasetsService(self.store, clock, lambda: self.objects.store, quota)
        self.volumes = VolumesService(self.datasets, config.storage)  # and storage's meter
        self.jobs = JobsService(
            self.store,
            clock,
            config.market,
            config.state_dir / "jobs",
            self.scheduler.ctx.where,
            self.scheduler,
            self.wake_scheduler,
            stored=self.objects,
            datasets=self.datasets,
            volumes=self.volumes,
        )
        self.gateway = StoreBackend(self.store, clock, self.scheduler.ctx.where)  # /v1/serve/
        self.metrics_targets = LeaseTargets(self.store, config.state_dir, hub=self)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        become_subreaper()  # lease heads' leftovers are reaped here, not left as zombies
        self.started_at = self.clock()
        self.config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.store.migrate()
        self._bootstrap_admin()
        self.hub_keys = KeyStore(self.config.state_dir / "hub").load_or_create()
        self._start_hub()
        self.sync_hub()
        self.objects.start(self.head_ip())
        self.objects.revoke_all_but(self.active_lease_ids())  # a crash's leftover keys
        for lease_id in self.scheduler.stop_orphaned_heads():
            log.warning("stopping the head of lease %s, left by a previous run", lease_id)
        for target, name in ((self._health_loop, "health"), (self._scheduler_loop, "scheduler")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self.stop_loops()
        self.scheduler.stop_all()
        self.gateway.flush()  # queued metering is written before the store closes
        self.objects.stop()
        if self.hub:
            self.hub.stop()
            self.hub = None
        self.store.close()

    def stop_loops(self) -> None:
        """Stop the health and scheduler loops (the API keeps answering): the first step
        of `stop`, and how a test runs the scheduler one tick at a time."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(15)

    def head_ip(self) -> str:
        """Where lease heads listen, and members reach them: the hub's overlay address."""
        return self.hub.tunnel.address

    @property
    def admin_key_path(self) -> Path:
        return self.config.state_dir / ADMIN_KEY_FILE

    @property
    def models_root(self) -> Path:
        """Where registered model versions keep their files: <account>/<name>/<version>/."""
        return self.config.state_dir / "models"

    def _bootstrap_admin(self) -> None:
        """On first start, make the admin account and write its key to admin.key (0600)."""
        with self.store.transaction() as db:
            if db.scalar(select(Account.id).where(Account.role == Role.ADMIN.value)):
                return
            _, key = create_account(db, "admin", Role.ADMIN, self.clock())
            fd = os.open(self.admin_key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(key + "\n")
        log.info("created the admin account; its API key is in %s", self.admin_key_path)

    def _start_hub(self) -> None:
        overlay = self.config.overlay
        if self._backend is not None:
            backend = self._backend
        elif overlay.backend == "auto":
            backend, _ = best_backend()
        else:
            backend = get_backend(overlay.backend)
        node = Node("hub", self.hub_keys.public, str(self.pool.hub), endpoint=self.hub_endpoint())
        fence = "cs_hub" if overlay.fence and not isinstance(backend, NoneBackend) else None
        placement = NodePlacement(
            overlay.interface,
            self.config.state_dir / "tunnel",
            underlay_ifaces=tuple(overlay.underlay_interfaces),
            fence_table=fence,
        )
        self.hub = HubNode.start(
            backend,
            node,
            self.hub_keys,
            overlay.cidr,
            overlay.listen_port,
            placement,
            public_tcp_ports=(self.config.listen_port,),
            overlay_tcp_ports=(self.config.listen_port, *self.objects.overlay_ports),
            fenced_uids=sandbox.UID_RANGE,
        )
        self.backend_name = backend.name
        self.scheduler.ctx.loopback = backend.name == "none"
        self.metrics.register(TunnelCollector(self._tunnel_snapshot))
        log.info("hub up: backend %s, %s on %s", backend.name, node.address, overlay.interface)

    def sync_hub(self) -> None:
        """Make the hub's peers exactly the enrolled sellers that have not left."""
        with self.store.transaction() as db:
            sellers = db.scalars(
                select(Seller).where(
                    Seller.left_at.is_(None), Seller.state != SellerState.DISABLED.value
                )
            )
            wanted = {s.public_key: _node(s) for s in sellers}
        present = {p.public_key for p in self.hub.tunnel.peers()}
        for key in present - set(wanted):
            self.hub.remove_spoke(key)
        for node in wanted.values():
            self.hub.add_spoke(node)

    # -- what the API calls ---------------------------------------------------------------

    def hub_endpoint(self) -> str:
        overlay = self.config.overlay
        if overlay.public_endpoint:
            return overlay.public_endpoint
        return f"{self.public_host()}:{overlay.listen_port}"

    def public_host(self) -> str:
        if self.config.public_host:
            return self.config.public_host
        if self.config.listen_host not in ("0.0.0.0", "::"):
            return self.config.listen_host
        return _first_ipv4(self.config.overlay.underlay_interfaces) or "127.0.0.1"

    def overlay_api_url(self) -> str:
        address = self.hub.tunnel.address if self.hub else str(self.pool.hub)
        return f"http://{address}:{self.config.listen_port}"

    def hub_info(self) -> dict:
        return {
            "public_key": self.hub_keys.public,
            "endpoint": self.hub_endpoint(),
            "address": str(self.pool.hub),
            "overlay_cidr": self.config.overlay.cidr,
            "backend": self.backend_name,
            "overlay_api_url": self.overlay_api_url(),
            "heartbeat_interval_s": self.config.heartbeat.interval_s,
            "heartbeat_timeout_s": self.config.heartbeat.timeout_s,
        }

    def enroll(self, **request) -> registry.Enrollment:
        """Redeem an invite; retried when two enrollments race for the same next address."""
        for attempt in range(ENROLL_ATTEMPTS):
            try:
                with self._enroll_lock, self.store.transaction() as db:
                    enrollment = registry.enroll(
                        db,
                        hub_keys=self.hub_keys,
                        overlay_cidr=self.config.overlay.cidr,
                        now=self.clock(),
                        **request,
                    )
                break
            except (IntegrityError, OperationalError):
                # Another coordinator process sharing the database took the same address.
                if attempt == ENROLL_ATTEMPTS - 1:
                    raise Busy("the coordinator is busy enrolling others; retry") from None
                time.sleep(0.01 * (attempt + 1))
        self.keys.forget_account(enrollment.seller.account_id)
        self.hub.add_spoke(_node(enrollment.seller))
        log.info(
            "seller %s enrolled at %s%s",
            enrollment.seller.id,
            enrollment.seller.address,
            " (again)" if enrollment.rejoined else "",
        )
        return enrollment

    def leave(self, caller: Caller, seller_id: str) -> Seller:
        with self.store.transaction() as db:
            seller = registry.leave(db, caller, seller_id, self.clock())
        self.keys.forget_account(seller.account_id)
        self.hub.remove_spoke(seller.public_key)
        return seller

    def disable(self, caller: Caller, seller_id: str) -> Seller:
        with self.store.transaction() as db:
            seller = registry.disable(db, caller, seller_id, self.clock())
        self.keys.forget_account(seller.account_id)
        self.hub.remove_spoke(seller.public_key)
        return seller

    def check_heartbeats(self) -> list[str]:
        now, timeout_s = self.clock(), self.config.heartbeat.timeout_s
        if self.started_at is not None and now - self.started_at < timeout_s:
            # Silence while we were down is no seller's fault: each gets a whole timeout
            # (marked offline at once, all stopped their lease nodes and jobs' logs).
            return []
        with self.store.transaction() as db:
            stale = registry.mark_missed_heartbeats(db, now, timeout_s)
            ids = [s.id for s in stale]
        for seller_id in ids:
            log.warning("seller %s missed its heartbeats: offline", seller_id)
        return ids

    def readiness(self) -> dict[str, str]:
        """Each dependency's status: 'ok' or what is wrong."""
        checks = {}
        for name, probe in (
            ("store", self.store.ping),
            ("hub", self._ping_hub),
            ("objects", self.objects.ping),
        ):
            try:
                probe()
                checks[name] = "ok"
            except Exception as e:  # readiness reports, it does not raise
                checks[name] = f"{type(e).__name__}: {e}"
        return checks

    def _ping_hub(self) -> None:
        if self.hub is None:
            raise SystemError_("hub not started")
        self.hub.tunnel.peers()

    def active_lease_ids(self) -> set[str]:
        with self.store.transaction() as db:
            query = select(Lease.id).where(Lease.state.in_(values(ACTIVE_LEASE_STATES)))
            return set(db.scalars(query))

    def _health_loop(self) -> None:
        period = min(1.0, self.config.heartbeat.interval_s / 2)
        while not self._stop.wait(period):
            try:
                self.check_heartbeats()
                self.objects.tend(self.active_lease_ids)
                self.volumes.meter.tick()  # GB-hours of volumes and datasets, billed
                self.metrics_targets.sync()  # each lease's Ray metrics, for Prometheus
            except Exception:  # keep watching; the next round retries
                log.exception("health check failed")

    def sync_fence(self) -> None:
        """Each active lease is a group: its members reach each other and its head's ports,
        and no one else's."""
        with self.store.transaction() as db:
            rows = db.execute(
                select(Lease.id, Lease.port_base, Seller.address)
                .join(LeaseMember, LeaseMember.lease_id == Lease.id)
                .join(Seller, Seller.id == LeaseMember.seller_id)
                .where(
                    Lease.state.in_(values(ACTIVE_LEASE_STATES)),
                    LeaseMember.state.in_(values(ACTIVE_MEMBER_STATES)),
                )
            ).all()
        groups: dict[str, set[str]] = {}
        services: dict[str, tuple[int, int]] = {}
        for lease_id, port_base, address in rows:
            groups.setdefault(lease_id, set()).add(address)
            services[lease_id] = (port_base, port_base + 99)
        heads = {lease_id: sandbox.lease_uid(low) for lease_id, (low, _) in services.items()}
        wanted = ({k: frozenset(v) for k, v in groups.items()}, services, heads)
        if wanted != (self.hub.groups, self.hub.services, self.hub.local_uids):
            self.hub.set_groups(*wanted)  # rewrite rules only on change

    def wake_scheduler(self) -> None:
        self._wake.set()

    def _scheduler_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.config.market.tick_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.scheduler.tick()
            except Exception:  # keep scheduling; the next tick retries
                log.exception("scheduler tick failed")

    def _tunnel_snapshot(self):
        if not self.hub:
            return []
        with self.store.transaction() as db:
            names = dict(db.execute(select(Seller.public_key, Seller.name)).all())
        return [(self.config.overlay.interface, self.hub.tunnel.peers(), names)]


def _node(seller: Seller) -> Node:
    return Node(
        seller.name,
        seller.public_key,
        seller.address,
        endpoint=seller.endpoint,
        behind_nat=seller.behind_nat,
    )


def _first_ipv4(interfaces: list[str]) -> str | None:
    for iface in interfaces:
        done = netns.run(["ip", "-4", "-o", "addr", "show", "dev", iface], check=False)
        for line in done.stdout.splitlines():
            return line.split()[3].split("/")[0]
    return None
