"""The lease scheduler: forms, runs and ends leases, acting on the market's decisions.

One loop (a coordinator thread) moves every job and lease along:

    pending job --match--> lease matched (escrow held, sellers leased)
    matched --start head--> provisioning --all workers attached--> running (job submitted)
    running --job ends / cancel / budget or time spent / seller lost--> releasing
    releasing --workers detached, head stopped, ledger settled--> closed | failed

Decisions are made in store transactions; processes (Ray heads) and HTTP calls (the
lease's Jobs API) happen between them, never inside one.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from sqlalchemy import select

from computeswarm.cluster.kinds import serve as serve_jobs
from computeswarm.cluster.kinds import sweep as sweep_jobs
from computeswarm.cluster.kinds import training as training_jobs
from computeswarm.cluster.kinds.training import RayJob
from computeswarm.cluster.leases.files import lease_files
from computeswarm.cluster.leases.rules import (
    LeaseState,
    MemberState,
    ask_for,
    bid_for,
    budget_end,
    free_port_base,
    lease_transition,
    reliability,
)
from computeswarm.cluster.ledger import journal as ledger
from computeswarm.cluster.market.book import Match, OrderBook
from computeswarm.cluster.nodes import sandbox
from computeswarm.cluster.nodes.ray_nodes import (
    PortBlock,
    head_argv,
    node_env,
    process_start,
    session_pids,
    start_node,
    stop_session,
)
from computeswarm.cluster.sellers.states import SellerEvent, SellerState, transition
from computeswarm.cluster.store.models import Job, Lease, LeaseMember, Offer, Seller
from computeswarm.errors import ComputeSwarmError
from computeswarm.jobs.spec import ScriptJob, ServeJob, SweepJob, job_from_record
from computeswarm.jobs.states import JobState, job_transition

if TYPE_CHECKING:
    from computeswarm.cluster.coordinator import Coordinator

log = logging.getLogger("computeswarm.scheduler")
HEAD_PORT_START = 20000
HEAD_SLOTS = 50
PROVISION_TIMEOUT_S = 180.0
# A released head's job is over: no reason to let Ray drain for its default 30 s.
HEAD_STOP_GRACE_S = 3.0
LIVE_LOG_TTL_S = 1.0
LOG_ATTEMPTS = 20  # the driver node's log agent can take a while on a busy host
DRIVER_STARTED = "Running entrypoint"  # written by Ray on the driver node, not the head's stub
HEAD_OBJECT_STORE_BYTES = 80 * 1024 * 1024
# Jobs that go back to the queue when their lease ends under them: a sweep restores its
# experiment on the next lease, a serve job starts its app again (the gateway follows).
RESUMABLE_KINDS = ("sweep", "serve")
# Ray's word for a job whose supervisor (on the driver's node) died with the node: the
# job did not fail, its seller did, and Ray can say so before the heartbeats do.
DRIVER_NODE_LOST = ("JOB_SUPERVISOR_ACTOR_DIED", "JOB_SUPERVISOR_ACTOR_UNKNOWN_FAILURE")
_UNSETTLED = (
    LeaseState.MATCHED.value,
    LeaseState.PROVISIONING.value,
    LeaseState.RUNNING.value,
    LeaseState.RELEASING.value,
)
_SETTLED = (LeaseState.CLOSED.value, LeaseState.FAILED.value)
ACTIVE_LEASE_STATES = (
    LeaseState.MATCHED,
    LeaseState.PROVISIONING,
    LeaseState.RUNNING,
    LeaseState.RELEASING,
)


class LeaseScheduler:
    def __init__(self, coordinator: Coordinator):
        self.c = coordinator
        self.heads: dict[str, subprocess.Popen] = {}
        self._jobs_clients: dict[str, object] = {}
        self._dashboards: dict[str, tuple[str, dict]] = {}
        self._stoppers: list[tuple[int, threading.Thread]] = []
        self._lock = threading.Lock()  # one tick at a time
        self._live_logs: dict[str, tuple[float, str]] = {}  # job -> (fetched at, text)
        self._log_locks: dict[str, threading.Lock] = {}
        self._log_locks_guard = threading.Lock()

    @property
    def head_ip(self) -> str:
        """Where lease members reach lease heads: the hub's overlay address."""
        return self.c.hub.tunnel.address

    def tick(self) -> None:
        with self._lock:
            now = self.c.clock()
            self.match_pending(now)
            self.c.sync_fence()  # members reach their head before they are told to start
            self.provision(now)
            self.watch(now)
            self.release(now)
            self.c.sync_fence()
            self.drop_finished_uploads()

    def drop_finished_uploads(self) -> None:
        """A finished job's uploaded working_dir is deleted once its lease has settled (the
        release reads it: datasets' hashes, the registered model), and no longer counts
        against the buyer's quota. Its logs, run folder and models stay."""
        with self.c.store.transaction() as db:
            finished = db.execute(
                select(Job.id, Job.upload_path)
                .outerjoin(Lease, Lease.id == Job.lease_id)
                .where(
                    Job.state.in_([s.value for s in JobState if s.is_terminal]),
                    Job.upload_bytes > 0,
                    (Lease.id.is_(None)) | Lease.state.in_(_SETTLED),
                )
            ).all()
        for job_id, upload in finished:
            if upload:
                shutil.rmtree(upload, ignore_errors=True)
            with self.c.store.transaction() as db:
                db.get(Job, job_id).upload_bytes = 0

    # -- pending -> matched ---------------------------------------------------------------

    def match_pending(self, now: float) -> None:
        with self.c.store.transaction() as db:
            jobs = db.scalars(
                select(Job).where(Job.state == JobState.PENDING.value).order_by(Job.created_at)
            ).all()
            if not jobs:
                return
            book = OrderBook(self.asks_now(db, now), now, self.c.config.market.fee_bps)
            used_ports = db.scalars(
                select(Lease.port_base).where(
                    Lease.state.in_([s.value for s in ACTIVE_LEASE_STATES])
                )
            ).all()
            for job in jobs:
                # One bad job (a spec this code cannot render, a missing model) fails alone
                # with its reason; the rest of the queue is matched as usual. Nothing of a
                # job is written before `_open_lease`, so a failure leaves no half-lease.
                try:
                    opening = self._match_one(db, job, book, used_ports, now)
                except Exception as e:
                    log.exception("job %s: cannot be matched", job.id)
                    self._end_job(job, JobState.FAILED, now, f"cannot lease: {_why(e)}")
                    continue
                if opening is not None:
                    used_ports = [*used_ports, opening[3]]
                    self._open_lease(db, *opening, now)

    def _match_one(self, db, job: Job, book: OrderBook, used_ports: list[int], now: float):
        """(job, spec, match, port, escrow, files) for `_open_lease`, or None: the job
        waits, or has ended with its reason."""
        if job.lease_id and db.get(Lease, job.lease_id).state in _UNSETTLED:
            return None  # requeued: its escrow comes back when the old lease settles
        spec = job_from_record(job.spec)
        escrow = spec.escrow_micros
        funds = ledger.balance(db, ledger.buyer(job.account_id))
        if funds < escrow:
            self._end_job(
                job,
                JobState.FAILED,
                now,
                (
                    f"insufficient funds: {funds / 1e6:.6f} available, {escrow / 1e6:.6f} "
                    "needed in escrow (budget, or max price x GPUs x max_duration)"
                ),
            )
            return None
        port = free_port_base(
            used_ports, HEAD_PORT_START, PortBlock.SIZE, HEAD_SLOTS, is_free=self._block_free
        )
        if port is None:
            job.reason = (
                f"waiting for a lease slot: all {HEAD_SLOTS} on this coordinator are in use"
            )
            return None
        decision = book.place(bid_for(job.id, spec))
        if not isinstance(decision, Match):
            if spec.queue:
                job.reason = f"waiting for supply: {decision.reason}"
            else:
                self._end_job(
                    job, JobState.FAILED, now, f"no match (queue: false): {decision.reason}"
                )
            return None
        files = lease_files(db, job, spec, self.c.storage_root)  # what its sandboxes see
        if sandbox.check().ok:  # the lease's uid writes its run folder, on every host
            for folder in files["write"]:
                sandbox.hand_over(Path(folder), sandbox.lease_uid(port))
        return job, spec, decision, port, escrow, files

    def _open_lease(
        self,
        db,
        job: Job,
        spec: ScriptJob,
        match: Match,
        port: int,
        escrow: int,
        files: dict[str, list[str]],
        now: float,
    ) -> None:
        lease = Lease(
            id=f"l-{secrets.token_hex(6)}",
            account_id=job.account_id,
            job_id=job.id,
            state=LeaseState.MATCHED.value,
            reason="",
            token=secrets.token_urlsafe(24),
            port_base=port,
            price_per_hour_micros=match.price_per_hour_micros,
            escrow_micros=escrow,
            created_at=now,
            deadline=now + spec.max_duration,
            files=files,
        )
        db.add(lease)
        db.flush()
        for index, allocation in enumerate(match.allocations):
            _assign(db, lease.id, allocation, driver=index == 0, now=now)
        ledger.post(db, ledger.hold(job.account_id, lease.id, escrow), now)
        job.state = job_transition(JobState(job.state), JobState.SCHEDULED).value
        job.lease_id, job.reason = lease.id, ""
        log.info(
            "job %s matched: lease %s on %s at %d micros/h",
            job.id,
            lease.id,
            [a.seller_id for a in match.allocations],
            match.price_per_hour_micros,
        )

    def _block_free(self, base: int) -> bool:
        """Can a head bind its GCS and dashboard ports here? (Another coordinator, or any
        program, may hold them on this host.)"""
        for port in (base, base + 1):
            with socket.socket() as probe:
                try:
                    probe.bind((self.head_ip, port))
                except OSError:
                    return False
        return True

    def asks_now(self, db, now: float) -> list:
        rows = db.execute(
            select(Seller, Offer)
            .join(Offer, Offer.seller_id == Seller.id)
            .where(Seller.state == SellerState.ONLINE.value, Seller.left_at.is_(None))
        ).all()
        asks = []
        for seller, offer in rows:
            if offer.available_from and offer.available_from > now:
                continue
            ask = ask_for(
                seller.id,
                seller.gpus or [],
                offer.price_per_gpu_hour_micros,
                reliability(seller.leases_completed, seller.leases_lost),
                offer.max_lease_hours,
                offer.available_until,
            )
            if ask:
                asks.append(ask)
        return asks

    # -- matched -> provisioning -> running -----------------------------------------------

    def attach_joined(self, now: float) -> None:
        """Members whose Ray node the lease head sees alive are attached (metering starts).
        The head's view decides, never the agent's word: a heartbeat saying `running`
        with no node behind it bills nothing."""
        with self.c.store.transaction() as db:
            waiting = db.execute(
                select(Lease.id, Seller.id, Seller.address)
                .join(LeaseMember, LeaseMember.lease_id == Lease.id)
                .join(Seller, Seller.id == LeaseMember.seller_id)
                .where(
                    Lease.state.in_([LeaseState.PROVISIONING.value, LeaseState.RUNNING.value]),
                    LeaseMember.state == MemberState.ASSIGNED.value,
                )
            ).all()
        by_lease: dict[str, dict[str, str]] = {}
        for lease_id, seller_id, address in waiting:
            by_lease.setdefault(lease_id, {})[seller_id] = address
        for lease_id, expected in by_lease.items():
            alive = self._nodes_alive(lease_id)
            # The `none` backend (loopback dev mode) has no real overlay addresses, and Ray
            # reports loopback ones as the host's: there the label alone is checked.
            loopback = self.c.backend_name == "none"
            joined = [s for s, a in expected.items() if _joined(s, a, alive, loopback)]
            if not joined:
                continue
            with self.c.store.transaction() as db:
                for member in self._members(db, lease_id):
                    if member.seller_id in joined and member.state == MemberState.ASSIGNED.value:
                        member.state, member.attached_at = MemberState.ATTACHED.value, now

    def _nodes_alive(self, lease_id: str) -> set[tuple[str, str]]:
        """(seller id, overlay address) of every live node in the lease's Ray cluster: the
        node's own cs-seller label and the address it joined from must both match."""
        if self._client(lease_id) is None:
            return set()
        url, headers = self._dashboards[lease_id]
        try:
            response = httpx.get(
                f"{url}/api/v0/nodes",
                params={"detail": "true", "limit": 1000, "timeout": 5},
                headers=headers,
                timeout=6,
            )
            rows = response.json()["data"]["result"]["result"]
        except Exception as e:  # the head is still starting, or busy: next tick
            log.debug("lease %s: node list unavailable: %s", lease_id, e)
            return set()
        out = set()
        for node in rows if isinstance(rows, list) else []:
            labels = node.get("labels") or {}
            if node.get("state") == "ALIVE" and labels.get("cs-lease") == lease_id:
                out.add((str(labels.get("cs-seller")), str(node.get("node_ip"))))
        return out

    def provision(self, now: float) -> None:
        self.attach_joined(now)
        with self.c.store.transaction() as db:
            matched = [
                (lease.id, lease.port_base, lease.token)
                for lease in db.scalars(
                    select(Lease).where(Lease.state == LeaseState.MATCHED.value)
                )
            ]
        for lease_id, port, token in matched:
            try:
                process = self._start_head(lease_id, port, token)
            except Exception as e:
                self._fail_alone(lease_id, "cannot start the lease's head", e)
                continue
            with self.c.store.transaction() as db:
                lease = db.get(Lease, lease_id)
                lease.state = lease_transition(
                    LeaseState(lease.state), LeaseState.PROVISIONING
                ).value
                lease.head_session = process.pid
                lease.head_started = process_start(process.pid)
        with self.c.store.transaction() as db:
            ready = []
            for lease in db.scalars(
                select(Lease).where(Lease.state == LeaseState.PROVISIONING.value)
            ):
                members = self._members(db, lease.id)
                if lost := self._lost_member(db, lease.id):
                    self._replace_before_start(db, lease, lost, now)
                elif members and all(m.state == MemberState.ATTACHED.value for m in members):
                    ready.append(lease.id)
                elif now - lease.created_at > PROVISION_TIMEOUT_S:
                    self.start_release(
                        db,
                        lease,
                        f"lease formation timed out ({PROVISION_TIMEOUT_S:.0f} s)",
                        JobState.FAILED,
                    )
        for lease_id in ready:
            try:
                self._submit(lease_id, now)
            except Exception as e:
                self._fail_alone(lease_id, "cannot start the job", e)

    def _start_head(self, lease_id: str, port: int, token: str) -> subprocess.Popen:
        """A lease's Ray head, in a sandbox as the lease's uid when this host can make one:
        buyer tasks pinned to the head run there, on the coordinator's host."""
        lease_dir = self.lease_dir(lease_id)
        lease_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        box = sandbox.Sandbox(sandbox.lease_uid(port), ray_temp_dir(lease_id))
        boxed = sandbox.check().ok
        if boxed:
            box.prepare()
        scratch = box.scratch if boxed else lease_dir
        token_path = sandbox.write_token(scratch, token, box.uid if boxed else None)
        argv = head_argv(
            ip=self.head_ip,
            ports=PortBlock(port),
            temp_dir=Path(sandbox.HOME) / "ray" if boxed else ray_temp_dir(lease_id),
            object_store_bytes=HEAD_OBJECT_STORE_BYTES,
            system_config=self.c.config.market.ray_system_config,
        )
        if boxed:
            inside_token = Path(sandbox.HOME) / token_path.name
            argv, env = box.argv(argv), box.env(node_env(inside_token))
        else:
            env = node_env(token_path)
        process = start_node(argv, env, lease_dir / "head.log")
        self.heads[lease_id] = process
        log.info(
            "lease %s: head starting on %s:%d (%s)",
            lease_id,
            self.head_ip,
            port,
            f"sandboxed as uid {box.uid}" if boxed else "NOT sandboxed: " + sandbox.check().reason,
        )
        return process

    def _submit(self, lease_id: str, now: float) -> None:
        with self.c.store.transaction() as db:
            lease = db.get(Lease, lease_id)
            job = db.get(Job, lease.job_id)
            spec = job_from_record(job.spec)
            upload, job_id = job.upload_path, job.id
            client = self._client(lease_id)
            if client is None:
                return  # the head's dashboard is not up yet: next tick
            try:
                ray_job = self._render(db, job, spec, lease)
            except ComputeSwarmError as e:
                self.start_release(db, lease, f"cannot start the job: {e}", JobState.FAILED)
                return
        runtime_env: dict = {
            "env_vars": {
                **spec.runtime_env.env_vars,
                **ray_job.env_vars,
                "COMPUTESWARM_JOB_ID": job_id,
                "COMPUTESWARM_LEASE_ID": lease_id,
            }
        }
        if upload:
            runtime_env["working_dir"] = upload
        if spec.runtime_env.pip:
            runtime_env["pip"] = spec.runtime_env.pip
        try:
            submission = client.submit_job(
                entrypoint=ray_job.entrypoint,
                runtime_env=runtime_env,
                entrypoint_resources={"cs_driver": 1},
                submission_id=f"{job_id}-{lease_id}",
            )
        except Exception as e:  # the head refused: end the lease with the reason
            with self.c.store.transaction() as db:
                self.start_release(
                    db,
                    db.get(Lease, lease_id),
                    f"the lease's Ray cluster refused the job: {e}",
                    JobState.FAILED,
                )
            return
        with self.c.store.transaction() as db:
            lease, job = db.get(Lease, lease_id), db.get(Job, job_id)
            lease.state = lease_transition(LeaseState(lease.state), LeaseState.RUNNING).value
            lease.started_at = now
            job.state = job_transition(JobState(job.state), JobState.RUNNING).value
            job.submission_id, job.started_at = submission, now
        log.info("job %s submitted to lease %s", job_id, lease_id)

    def _render(self, db, job: Job, spec, lease: Lease) -> RayJob:
        """The Ray job a spec becomes: its driver's entrypoint and environment."""
        storage = self.c.storage_root
        if isinstance(spec, ScriptJob):
            return RayJob(spec.entrypoint, {})
        if isinstance(spec, SweepJob):
            return sweep_jobs.render(job, spec, storage, sweep_jobs.member_prices(db, lease.id))
        if isinstance(spec, ServeJob):
            return serve_jobs.render(db, job, spec, lease, self.head_ip, storage)
        return training_jobs.render(db, job, spec, storage)

    # -- running: watch the job, the clock, the budget and the sellers --------------------

    def watch(self, now: float) -> None:
        with self.c.store.transaction() as db:
            running = [
                (lease.id, lease.job_id)
                for lease in db.scalars(
                    select(Lease).where(Lease.state == LeaseState.RUNNING.value)
                )
            ]
            self._lose_vanished_members(db, now)
        for lease_id, job_id in running:
            try:
                self._watch_one(lease_id, job_id, now)
            except Exception as e:
                self._fail_alone(lease_id, "cannot watch the job", e)

    def _watch_one(self, lease_id: str, job_id: str, now: float) -> None:
        """One running lease: its job's status, clock, budget, members and records."""
        status, error = self._job_status(lease_id, job_id)
        with self.c.store.transaction() as db:
            lease, job = db.get(Lease, lease_id), db.get(Job, job_id)
            if status == "FAILED" and error in DRIVER_NODE_LOST:
                driver = next((m.seller_id for m in self._members(db, lease_id) if m.driver), "?")
                reason = f"seller {driver} (running the job's driver) was lost (Ray: {error})"
                self._driver_lost(db, lease, job, reason)
            elif status in ("SUCCEEDED", "FAILED", "STOPPED"):
                final = {
                    "SUCCEEDED": JobState.SUCCEEDED,
                    "FAILED": JobState.FAILED,
                    "STOPPED": JobState.CANCELLED,
                }[status]
                reason = job.reason or (
                    "" if final is JobState.SUCCEEDED else f"the job ended {status.lower()}"
                )
                self.start_release(db, lease, reason, final)
            elif now >= lease.deadline:
                self.start_release(db, lease, "max_duration reached", JobState.FAILED)
            # One tick early: the lease must end before use passes the escrow, or sellers
            # are paid below their ask and the platform its fee (M2).
            elif now + self.c.config.market.tick_s >= budget_end(
                (
                    (m.attached_at, m.detached_at, m.gpus, m.price_micros)
                    for m in self._members(db, lease.id, everyone=True)
                ),
                lease.escrow_micros,
            ):
                self.start_release(db, lease, "budget spent", JobState.FAILED)
            elif lost := self._lost_member(db, lease.id):
                self._repair_or_fail(db, lease, lost, now)
            elif job.kind == "sweep":
                sweep_jobs.ingest(db, job, self.c.storage_root)
                for seller_id in sweep_jobs.shrink(db, lease, job, self.c.storage_root):
                    self._let_go(db, lease, seller_id, now)

    def _lose_vanished_members(self, db, now: float) -> None:
        """Members whose seller went offline are lost: metering stops at the last sign."""
        rows = db.execute(
            select(LeaseMember, Seller)
            .join(Seller, Seller.id == LeaseMember.seller_id)
            .where(
                LeaseMember.state.in_([MemberState.ASSIGNED.value, MemberState.ATTACHED.value]),
                Seller.state == SellerState.OFFLINE.value,
            )
        ).all()
        for member, seller in rows:
            member.state = MemberState.LOST.value
            member.detached_at = max(
                member.attached_at or now, min(now, seller.last_heartbeat or now)
            )
            seller.leases_lost += 1
            log.warning("lease %s lost seller %s", member.lease_id, seller.id)

    def _lost_member(self, db, lease_id: str) -> LeaseMember | None:
        return db.scalars(
            select(LeaseMember).where(
                LeaseMember.lease_id == lease_id,
                LeaseMember.state == MemberState.LOST.value,
                LeaseMember.detached_at.is_not(None),
            )
        ).first()

    def _repair_or_fail(self, db, lease: Lease, lost: LeaseMember, now: float) -> None:
        job = db.get(Job, lease.job_id)
        lost.state = MemberState.DROPPED.value  # handled once: replaced, or the lease ends
        if lost.driver:
            self._driver_lost(
                db, lease, job, f"seller {lost.seller_id} (running the job's driver) was lost"
            )
            return
        decision = self._replacement(db, lease, job, now)
        if not isinstance(decision, Match):
            self.start_release(
                db,
                lease,
                f"seller {lost.seller_id} was lost and no "
                f"replacement is available ({decision.reason})",
                JobState.FAILED,
            )
            return
        seller = _assign(db, lease.id, decision.allocations[0], driver=False, now=now)
        log.info("lease %s repaired: %s replaces %s", lease.id, seller.id, lost.seller_id)

    def _driver_lost(self, db, lease: Lease, job: Job, reason: str) -> None:
        """Sweeps and serve jobs go back to the queue; the other kinds fail."""
        if job.kind in RESUMABLE_KINDS:
            self.requeue(db, lease, reason)
        else:
            self.start_release(db, lease, reason, JobState.FAILED)

    def _replace_before_start(self, db, lease: Lease, lost: LeaseMember, now: float) -> None:
        """A member's node failed to start (or its seller went offline) while the lease
        was forming: nothing ran yet, so another seller takes its place, the driver's role
        included; without one the job goes back to the queue rather than failing."""
        job = db.get(Job, lease.job_id)
        lost.state = MemberState.DROPPED.value
        decision = self._replacement(db, lease, job, now)
        if not isinstance(decision, Match):
            self.requeue(
                db, lease, f"seller {lost.seller_id}'s node failed to join ({decision.reason})"
            )
            return
        seller = _assign(db, lease.id, decision.allocations[0], driver=lost.driver, now=now)
        log.warning(
            "lease %s: %s's node failed to join; %s takes its place",
            lease.id,
            lost.seller_id,
            seller.id,
        )

    def _replacement(self, db, lease: Lease, job: Job, now: float):
        """The market's pick of one seller for `job`'s lease, from sellers not yet in it."""
        members = {
            m.seller_id
            for m in db.scalars(select(LeaseMember).where(LeaseMember.lease_id == lease.id))
        }
        asks = [a for a in self.asks_now(db, now) if a.seller_id not in members]
        single = dataclasses.replace(bid_for(job.id, job_from_record(job.spec)), nodes=1)
        return OrderBook(asks, now, self.c.config.market.fee_bps).place(single)

    # -- releasing -> closed --------------------------------------------------------------

    def start_release(self, db, lease: Lease, reason: str, job_state: JobState) -> None:
        lease.state = lease_transition(LeaseState(lease.state), LeaseState.RELEASING).value
        lease.reason = reason
        # Metering stops now: stopping the job, saving its logs and tearing the cluster
        # down afterwards are not the buyer's time.
        lease.ended_at = self.c.clock()
        job = db.get(Job, lease.job_id)
        if job and not JobState(job.state).is_terminal:
            self._end_job(job, job_state, self.c.clock(), reason)

    def requeue(self, db, lease: Lease, reason: str) -> None:
        """End the lease but not its job: the job waits for a new lease and resumes there
        (sweeps restore their Tune experiment from the run folder; serve jobs redeploy)."""
        lease.state = lease_transition(LeaseState(lease.state), LeaseState.RELEASING).value
        lease.reason, lease.ended_at = reason, self.c.clock()
        job = db.get(Job, lease.job_id)
        job.state = job_transition(JobState(job.state), JobState.PENDING).value
        job.reason = f"requeued ({reason}): resumes on a new lease"
        log.warning("job %s requeued: %s", job.id, reason)

    def _let_go(self, db, lease: Lease, seller_id: str, now: float) -> None:
        """A member the job no longer needs leaves the lease now; it is billed until now."""
        member = db.scalars(
            select(LeaseMember).where(
                LeaseMember.lease_id == lease.id,
                LeaseMember.seller_id == seller_id,
                LeaseMember.state == MemberState.ATTACHED.value,
            )
        ).first()
        if member is None:
            return
        member.state, member.detached_at = MemberState.DETACHED.value, now
        seller = db.get(Seller, seller_id)
        if seller.state == SellerState.LEASED.value:
            seller.state = transition(SellerState.LEASED, SellerEvent.RELEASE).value
        seller.leases_completed += 1
        log.info("lease %s: seller %s released early (no trials left for it)", lease.id, seller_id)

    def release(self, now: float) -> None:
        with self.c.store.transaction() as db:
            releasing = [
                (lease.id, lease.head_session, lease.job_id)
                for lease in db.scalars(
                    select(Lease).where(Lease.state == LeaseState.RELEASING.value)
                )
            ]
        for lease_id, session, job_id in releasing:
            # Each step on its own: a driver's malformed record or log must not keep the
            # lease from settling (escrow held forever) or the head from stopping.
            for step in (self._stop_job, self._save_logs):
                _guarded(lease_id, step.__name__, step, lease_id, job_id)
            for step in (self._ingest_records, self._register_model):
                _guarded(lease_id, step.__name__, step, job_id)
            try:
                with self.c.store.transaction() as db:
                    self._settle(db, db.get(Lease, lease_id), self.c.clock())
            except Exception:
                log.exception("lease %s: settling failed; the next tick retries", lease_id)
                continue
            if session:
                # Stopping a head takes seconds (Ray ignores SIGTERM a while): not in the
                # tick. `stop_all` waits for these, so a coordinator stop never orphans one.
                stopper = threading.Thread(target=_stop_head, args=(session, lease_id), daemon=True)
                stopper.start()
                self._stoppers.append((session, stopper))
            self.heads.pop(lease_id, None)
            self._jobs_clients.pop(lease_id, None)
            self._dashboards.pop(lease_id, None)

    def _ingest_records(self, job_id: str) -> None:
        """A sweep's last trial records, read before its lease is gone."""
        with self.c.store.transaction() as db:
            job = db.get(Job, job_id)
            if job is not None and job.kind == "sweep":
                sweep_jobs.ingest(db, job, self.c.storage_root)

    def _register_model(self, job_id: str) -> None:
        """A succeeded `lora` job's adapter (a sweep's best trial's) becomes the next
        version of its model."""
        try:
            with self.c.store.transaction() as db:
                job = db.get(Job, job_id)
                if job is None or job.state != JobState.SUCCEEDED.value:
                    return
                register = (
                    sweep_jobs.register_best
                    if job.kind == "sweep"
                    else training_jobs.register_result
                )
                version = register(db, job, self.c.storage_root, self.c.models_root, self.c.clock())
                if version:
                    job.reason = f"registered model {version['name']}@{version['version']}"
                    log.info("job %s: %s", job_id, job.reason)
        except Exception as e:  # the job's result stays in its run folder either way
            log.warning("job %s: could not register its model: %s", job_id, e)
            with self.c.store.transaction() as db:
                db.get(Job, job_id).reason = f"finished, but the model was not registered: {e}"

    def _settle(self, db, lease: Lease, now: float) -> None:
        """Detach everyone, pay out of escrow, return the rest, free the sellers."""
        usages = []
        for member in self._members(db, lease.id, everyone=True):
            if member.state in (MemberState.ASSIGNED.value, MemberState.ATTACHED.value):
                member.detached_at = (lease.ended_at or now) if member.attached_at else None
                member.state = MemberState.DETACHED.value
                seller = db.get(Seller, member.seller_id)
                if seller.state == SellerState.LEASED.value:
                    seller.state = transition(SellerState.LEASED, SellerEvent.RELEASE).value
                if member.attached_at:
                    seller.leases_completed += 1
            elif member.state == MemberState.LOST.value:
                member.state = MemberState.DROPPED.value
            seconds = ledger.metered_seconds(member.attached_at, member.detached_at)
            if seconds:
                usages.append(
                    ledger.Usage(
                        member.seller_id,
                        member.gpus,
                        seconds,
                        member.ask_micros,
                        member.price_micros,
                    )
                )
        txn = ledger.settle(
            lease.account_id,
            lease.id,
            lease.escrow_micros,
            usages,
            metered_micros=ledger.balance(db, ledger.metered(lease.id)),
        )
        ledger.post(db, txn, now)
        self.c.record_sale(usages)
        # A lease fails with its job; one ended by success or by the buyer's cancel closes.
        failed = db.get(Job, lease.job_id).state == JobState.FAILED.value
        lease.state = (LeaseState.FAILED if failed else LeaseState.CLOSED).value
        lease.ended_at = lease.ended_at or now
        lease.token = ""  # its cluster is gone: no credential outlives it (L4)
        log.info("lease %s %s: %s", lease.id, lease.state, lease.reason or "job done")

    # -- helpers --------------------------------------------------------------------------

    def _fail_alone(self, lease_id: str, what: str, error: Exception) -> None:
        """One lease broke: it ends with the reason, the tick goes on for the others."""
        log.exception("lease %s: %s", lease_id, what)
        with self.c.store.transaction() as db:
            lease = db.get(Lease, lease_id)
            if lease is not None and lease.state not in (
                LeaseState.RELEASING.value,
                LeaseState.CLOSED.value,
                LeaseState.FAILED.value,
            ):
                self.start_release(db, lease, f"{what}: {_why(error)}", JobState.FAILED)

    def lease_dir(self, lease_id: str) -> Path:
        return self.c.config.state_dir / "leases" / lease_id

    def job_log_path(self, job_id: str) -> Path:
        return self.c.config.state_dir / "jobs" / job_id / "driver.log"

    def _members(self, db, lease_id: str, everyone: bool = False) -> list[LeaseMember]:
        query = select(LeaseMember).where(LeaseMember.lease_id == lease_id)
        if not everyone:
            query = query.where(
                LeaseMember.state.in_([MemberState.ASSIGNED.value, MemberState.ATTACHED.value])
            )
        return list(db.scalars(query))

    def _end_job(self, job: Job, state: JobState, now: float, reason: str) -> None:
        job.state = job_transition(JobState(job.state), state).value
        job.reason, job.ended_at = reason[:500], now

    def _client(self, lease_id: str):
        """The lease's Jobs API client, or None while its head is still starting."""
        if lease_id in self._jobs_clients:
            return self._jobs_clients[lease_id]
        from ray.job_submission import JobSubmissionClient

        with self.c.store.transaction() as db:
            lease = db.get(Lease, lease_id)
            url = f"http://{self.head_ip}:{PortBlock(lease.port_base).dashboard}"
            headers = {"Authorization": f"Bearer {lease.token}"}
        try:
            client = JobSubmissionClient(url, headers=headers)
        except Exception:
            return None
        self._jobs_clients[lease_id] = client
        self._dashboards[lease_id] = (url, headers)
        return client

    def _job_status(self, lease_id: str, job_id: str) -> tuple[str | None, str | None]:
        """The Ray job's status and, once it failed, Ray's error type (None, None while
        the head does not answer)."""
        client = self._client(lease_id)
        if client is None:
            return None, None
        try:
            info = client.get_job_info(f"{job_id}-{lease_id}")
        except Exception as e:
            log.warning("lease %s: job status unavailable: %s", lease_id, e)
            return None, None
        error = getattr(info, "error_type", None)
        return str(info.status.value), (str(getattr(error, "value", error)) if error else None)

    def job_logs(self, job_id: str) -> str:
        """The driver's output so far: live from the lease, or saved after it ended.

        A live log is fetched from the lease at most once per LIVE_LOG_TTL_S per job, by one
        caller at a time: many buyers' clients following logs (`--follow` polls) cost the
        head and the API's threads one fetch, not one each (M5)."""
        saved = self.job_log_path(job_id)
        if saved.exists():
            return saved.read_text(errors="replace")
        with self._log_locks_guard:
            lock = self._log_locks.setdefault(job_id, threading.Lock())
        with lock:
            fetched_at, text = self._live_logs.get(job_id, (0.0, ""))
            if time.monotonic() - fetched_at < LIVE_LOG_TTL_S:
                return text
            text = self._fetch_live_log(job_id)
            self._live_logs[job_id] = (time.monotonic(), text)
            return text

    def _fetch_live_log(self, job_id: str) -> str:
        with self.c.store.transaction() as db:
            job = db.get(Job, job_id)
            lease_id = job.lease_id if job and job.submission_id else None
        client = self._client(lease_id) if lease_id else None
        if client is None:
            return ""
        submission = f"{job_id}-{lease_id}"
        try:
            # The driver runs on a seller, and its log lives there: fetch that node's file
            # through the head (the Jobs API's own log call only sees the head's part).
            # The driver's node is tried first, then every node: on one machine (loopback)
            # Ray may record the driver against the head's node.
            # The head keeps a stub file of the same name ("Runtime env is setting up"),
            # so the first answer is not enough: the driver's own file says it ran.
            url, headers = self._dashboards[lease_id]
            first = client.get_job_info(submission).driver_node_id
            found = ""
            for node in dict.fromkeys([first, *self._node_ids(url, headers)]):
                if not node:
                    continue
                response = httpx.get(
                    f"{url}/api/v0/logs/file",
                    headers=headers,
                    timeout=10,
                    params={
                        "node_id": node,
                        "lines": 100_000,
                        "filename": f"job-driver-{submission}.log",
                    },
                )
                if response.status_code == 200:
                    if DRIVER_STARTED in response.text:
                        return response.text
                    found = found or response.text
            return found
        except Exception:
            return ""

    def _node_ids(self, url: str, headers: dict) -> list[str]:
        response = httpx.get(
            f"{url}/api/v0/nodes", headers=headers, timeout=10, params={"limit": 1000}
        )
        return [n["node_id"] for n in response.json()["data"]["result"]["result"]]

    def _stop_job(self, lease_id: str, job_id: str) -> None:
        client = self._jobs_clients.get(lease_id)
        if client is None:
            return
        try:
            submission = f"{job_id}-{lease_id}"
            if not client.get_job_status(submission).is_terminal():
                client.stop_job(submission)  # SIGTERM first: the job is told before the end
                deadline = time.monotonic() + 10
                while (
                    time.monotonic() < deadline
                    and not client.get_job_status(submission).is_terminal()
                ):
                    time.sleep(0.5)
        except Exception as e:
            log.warning("lease %s: could not stop the job cleanly: %s", lease_id, e)

    def _save_logs(self, lease_id: str, job_id: str) -> None:
        """Keep the driver's output before the lease's nodes go away. The driver's node can
        answer a moment late (its log agent is busy as the job ends): retry briefly."""
        path = self.job_log_path(job_id)
        with self.c.store.transaction() as db:
            if not JobState(db.get(Job, job_id).state).is_terminal:
                path = path.with_name(f"driver-{lease_id}.log")  # requeued: a later lease's
        if path.exists():
            return
        logs = ""
        for _ in range(LOG_ATTEMPTS):
            logs = self._fetch_live_log(job_id)  # fresh, not the followers' cached copy
            if DRIVER_STARTED in logs or not self._jobs_clients.get(lease_id):
                break
            time.sleep(1.0)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(logs)
        self._live_logs.pop(job_id, None)
        self._log_locks.pop(job_id, None)

    def stop_all(self) -> None:
        """Stop every lease head this coordinator runs (on shutdown): none is left behind."""
        for lease_id, process in list(self.heads.items()):
            _stop_head(process.pid, lease_id)
        self.heads.clear()
        for session, stopper in self._stoppers:
            stopper.join(15)
            if session_pids(session):
                stop_session(session, grace_s=1)
        self._stoppers.clear()

    def stop_orphaned_heads(self) -> list[str]:
        """After a crash, heads of leases from before are still running: ask each how its
        job ended meanwhile, stop it, and end its lease. A job Ray saw finish keeps that
        outcome, billed to when it finished; the rest fail (or, sweeps and serve, go back
        to the queue) with the reason."""
        with self.c.store.transaction() as db:
            leases = [
                (lease.id, lease.head_session, lease.head_started, lease.state)
                for lease in db.scalars(select(Lease).where(Lease.head_session.is_not(None)))
            ]
        stopped = []
        for lease_id, session, started, state in leases:
            # Ours only if the PID still names the process we started: after a reboot or
            # PID reuse it may lead an unrelated program's session.
            ours = started is not None and process_start(session) == started
            alive = ours and bool(session_pids(session))
            active = state in (LeaseState.PROVISIONING.value, LeaseState.RUNNING.value)
            ended = self._ended_meanwhile(lease_id) if alive and active else None
            if alive:
                stop_session(session, grace_s=5)
                stopped.append(lease_id)
            if active:
                with self.c.store.transaction() as db:
                    self._end_after_restart(db, db.get(Lease, lease_id), ended)
        return stopped

    def _ended_meanwhile(self, lease_id: str) -> tuple[JobState, float] | None:
        """(outcome, when) of the lease's job if Ray saw it finish, else None."""
        with self.c.store.transaction() as db:
            lease = db.get(Lease, lease_id)
            job = db.get(Job, lease.job_id)
            submission = job.submission_id if job else None
        if not submission:
            return None
        client = self._client(lease_id)
        if client is None:
            return None
        try:
            info = client.get_job_info(submission)
        except Exception as e:  # the head no longer answers: nothing is known
            log.warning("lease %s: how its job ended is unknown: %s", lease_id, e)
            return None
        outcome = {
            "SUCCEEDED": JobState.SUCCEEDED,
            "FAILED": JobState.FAILED,
            "STOPPED": JobState.CANCELLED,
        }.get(str(info.status.value))
        if outcome is None or not info.end_time:
            return None
        return outcome, info.end_time / 1000

    def _end_after_restart(self, db, lease: Lease, ended: tuple[JobState, float] | None) -> None:
        reason = "the coordinator restarted"
        job = db.get(Job, lease.job_id)
        if ended is not None:
            outcome, when = ended
            why = "" if outcome is JobState.SUCCEEDED else f"the job ended {outcome.value}"
            self.start_release(db, lease, why or "", outcome)
            # Billed until the job ended, not through the coordinator's outage.
            lease.ended_at = max(lease.started_at or when, min(when, lease.ended_at))
        elif job.kind in RESUMABLE_KINDS and job.state == JobState.RUNNING.value:
            self.requeue(db, lease, reason)
        else:
            self.start_release(db, lease, reason, JobState.FAILED)


def _assign(db, lease_id: str, allocation, *, driver: bool, now: float) -> Seller:
    """Add a seller to a lease at its allocated price; the seller becomes leased."""
    db.add(
        LeaseMember(
            lease_id=lease_id,
            seller_id=allocation.seller_id,
            gpus=allocation.gpus,
            ask_micros=allocation.ask_micros,
            price_micros=allocation.price_micros,
            driver=driver,
            state=MemberState.ASSIGNED.value,
            assigned_at=now,
        )
    )
    seller = db.get(Seller, allocation.seller_id)
    seller.state = transition(SellerState(seller.state), SellerEvent.LEASE).value
    return seller


def _joined(seller_id: str, address: str, alive: set[tuple[str, str]], loopback: bool) -> bool:
    """Is the seller's node in the head's list, labelled as its own and joined from its own
    overlay address (which WireGuard ties to the seller's key)?"""
    if loopback:
        return any(seller == seller_id for seller, _ in alive)
    return (seller_id, address) in alive


def _guarded(lease_id: str, what: str, step, *args) -> None:
    try:
        step(*args)
    except Exception:
        log.exception("lease %s: %s failed; releasing goes on", lease_id, what)


def _why(error: Exception) -> str:
    """What a buyer is told of an error: our own errors say what to fix; anything else is
    ours to fix, and its text (paths, internals) stays in the operator's log."""
    if isinstance(error, ComputeSwarmError):
        return str(error)
    return f"internal error ({type(error).__name__}); the coordinator's log has the details"


def ray_temp_dir(lease_id: str) -> Path:
    return Path(f"/tmp/cs-ray/{lease_id}")


def _stop_head(session: int, lease_id: str) -> None:
    """Stop a released lease's head, then remove its scratch (Ray's temp dir, its token)."""
    stop_session(session, HEAD_STOP_GRACE_S)
    shutil.rmtree(ray_temp_dir(lease_id), ignore_errors=True)
