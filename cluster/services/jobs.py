"""What the coordinator does for buyers: take jobs, quote them, cancel them, show bills.

Validation happens here, before anything is leased: a bad spec or a path trick in the
upload is refused with the reason and nothing is written.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import func, select

from computeswarm.cluster.accounts.roles import Caller, Role
from computeswarm.cluster.config import MarketConfig
from computeswarm.cluster.errors import ApiError, Busy, Conflict, NotFound
from computeswarm.cluster.kinds import kind_of
from computeswarm.cluster.kinds import sweep as sweep_jobs
from computeswarm.cluster.kinds.base import Where
from computeswarm.cluster.kinds.sweep import SweepKind
from computeswarm.cluster.ledger import journal as ledger
from computeswarm.cluster.market.book import Match, explain, match
from computeswarm.cluster.market.orders import bid_for
from computeswarm.cluster.models import registry as model_registry
from computeswarm.cluster.store.db import Store
from computeswarm.cluster.store.models import Account, Job, Lease, LeaseMember, LedgerEntry, Seller
from computeswarm.jobs.errors import SpecError
from computeswarm.jobs.money import money_text
from computeswarm.jobs.spec import check_inputs, parse_job_spec
from computeswarm.jobs.states import JobState, job_transition
from computeswarm.jobs.upload import unpack_working_dir

if TYPE_CHECKING:
    from computeswarm.cluster.leases.scheduler import LeaseScheduler
    from computeswarm.cluster.services.datasets import DatasetsService
    from computeswarm.cluster.services.volumes import VolumesService


class StoredBytes(Protocol):
    """The object store as job submission and the ledger see it."""

    quota: int

    def bytes_of(self, account_id: str) -> int: ...

    def bytes_by_account(self) -> dict[str, int]: ...


class JobsService:
    def __init__(
        self,
        store: Store,
        clock: Callable[[], float],
        market: MarketConfig,
        uploads: Path,
        where: Callable[[], Where],
        scheduler: LeaseScheduler,
        wake_scheduler: Callable[[], None],
        stored: StoredBytes | None = None,
        datasets: DatasetsService | None = None,
        volumes: VolumesService | None = None,
    ):
        self.store, self.clock, self.market = store, clock, market
        self.uploads = uploads  # <uploads>/<job>/working_dir
        self.where = where  # job storage, model versions, the lease heads' address
        self.scheduler = scheduler
        self.wake_scheduler = wake_scheduler
        self.stored = stored  # bytes each account keeps in the object store, and its quota
        self.datasets = datasets  # pins a spec's dataset to one version
        self.volumes = volumes  # the volumes a spec mounts must be the buyer's

    def submit(self, caller: Caller, spec_data: dict, working_dir_zip: bytes | None) -> dict:
        caller.require(Role.BUYER, Role.ADMIN)
        spec = parse_job_spec(spec_data, source="job spec")
        if spec.runtime_env.working_dir and working_dir_zip is None:
            raise ApiError(
                "runtime_env.working_dir is set but no folder was uploaded "
                "(`computeswarm submit` uploads it for you)"
            )
        self._check_storage_quota(caller)
        job_id = f"j-{secrets.token_hex(6)}"
        upload, upload_bytes = None, None
        # Nothing reaches the disk from a buyer who could not pay for the job, or past the
        # buyer's quota: an upload unpacks to up to 4x its size.
        free = self._upload_room(caller, spec.escrow_micros)
        if working_dir_zip is not None:
            target = self.uploads / job_id / "working_dir"
            limit = min(4 * self.market.max_upload_bytes, free)
            try:
                unpack_working_dir(working_dir_zip, target, max_bytes=limit)
            except SpecError as e:
                shutil.rmtree(target.parent, ignore_errors=True)
                if limit == free and "unpacks to over" in str(e):
                    raise ApiError(_quota_message(self.market.upload_quota_bytes)) from None
                raise
            except BaseException:
                shutil.rmtree(target.parent, ignore_errors=True)
                raise
            upload = str(target)
            upload_bytes = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
        pinned: dict = {}
        try:
            if self.datasets is not None:
                spec, pinned = self.datasets.pin(caller, spec, Path(upload) if upload else None)
            if self.volumes is not None:
                self.volumes.check_spec(caller, spec)
            # Training inputs are checked here, before anything is leased.
            check_inputs(spec, Path(upload) if upload else None)
            with self.store.transaction() as db:
                for ref in spec.registered_refs():
                    model_registry.resolve(db, caller.account_id, ref)
        except BaseException:
            if upload:
                shutil.rmtree(Path(upload).parent, ignore_errors=True)
            raise
        with self.store.transaction() as db:
            job = Job(
                id=job_id,
                account_id=caller.account_id,
                name=spec.name,
                kind=spec.kind,
                spec=spec.model_dump(mode="json"),
                state=JobState.PENDING.value,
                reason="waiting for the market",
                upload_path=upload,
                upload_bytes=upload_bytes,
                datasets=pinned or None,
                created_at=self.clock(),
            )
            db.add(job)
        self.wake_scheduler()
        return self.view(caller, job_id)

    def _check_storage_quota(self, caller: Caller) -> None:
        """A buyer at its object-store quota submits nothing more that would write there;
        a store that cannot be asked refuses for now (retry), it does not wave jobs by."""
        if self.stored is None or caller.role is not Role.BUYER:
            return
        try:
            used = self.stored.bytes_of(caller.account_id)
        except Exception as e:
            raise Busy(f"the object store is unreachable ({type(e).__name__}); retry soon") from e
        if used >= self.stored.quota:
            raise ApiError(
                f"storage quota reached: {used} of {self.stored.quota} bytes in the object "
                "store; delete old model versions or runs, or ask the operator for more"
            )

    def _upload_room(self, caller: Caller, escrow_micros: int) -> int:
        """Bytes this buyer may still unpack; refuses a buyer who cannot fund the escrow."""
        quota = self.market.upload_quota_bytes
        with self.store.transaction() as db:
            funds = ledger.balance(db, ledger.buyer(caller.account_id))
            used = db.scalar(
                select(func.coalesce(func.sum(Job.upload_bytes), 0)).where(
                    Job.account_id == caller.account_id, Job.upload_bytes > 0
                )
            )
        if caller.role is Role.BUYER and funds < escrow_micros:
            raise ApiError(
                f"insufficient funds: {money_text(funds)} available, {money_text(escrow_micros)} "
                "needed in escrow (lower pricing.budget, or deposit first)"
            )
        if used >= quota:
            raise ApiError(_quota_message(quota))
        return quota - used

    def quote(self, caller: Caller, spec_data: dict, explain: bool) -> dict:
        """What the market would choose now, without leasing anything."""
        spec = parse_job_spec(spec_data, source="job spec")
        now = self.clock()
        with self.store.transaction() as db:
            asks = self.scheduler.asks_now(db, now)
        decision = match(bid_for("quote", spec), asks, now, self.market.fee_bps, explain_all=True)
        out: dict = {"escrow": money_text(spec.escrow_micros), "max_duration_s": spec.max_duration}
        if self.volumes is not None and caller.role is Role.BUYER:
            out["storage"] = self.volumes.quote(caller, spec)
        if isinstance(decision, Match):
            vram = {a.seller_id: a.vram_gb for a in asks}
            per_hour = decision.price_per_hour_micros
            out |= {
                "matched": True,
                "price_per_hour": money_text(per_hour),
                "estimated_cost": money_text(per_hour * int(spec.max_duration) // 3600),
                "sellers": [
                    {
                        "seller_id": a.seller_id,
                        "vram_gb": vram[a.seller_id],
                        "gpus": a.gpus,
                        "ask_per_gpu_hour": money_text(a.ask_micros),
                        "price_per_gpu_hour": money_text(a.price_micros),
                    }
                    for a in decision.allocations
                ],
            }
            chosen = {a.seller_id for a in decision.allocations}
            out["rejected"] = (
                {}
                if not explain
                else {
                    s: r
                    for s, r in _reasons(
                        bid_for("quote", spec), asks, now, self.market.fee_bps
                    ).items()
                    if s not in chosen
                }
            )
        else:
            out |= {"matched": False, "reason": decision.reason}
            out["rejected"] = decision.rejected if explain else {}
        return out

    def cancel(self, caller: Caller, job_id: str) -> dict:
        with self.store.transaction() as db:
            job = self._own(db, caller, job_id)
            state = JobState(job.state)
            if state.is_terminal:
                raise Conflict(f"job {job_id} already {state.value}")
            if state is JobState.PENDING:
                job.state = job_transition(state, JobState.CANCELLED).value
                job.reason, job.ended_at = "cancelled by the buyer", self.clock()
            else:
                lease = db.get(Lease, job.lease_id)
                self.scheduler.start_release(
                    db, lease, "cancelled by the buyer", JobState.CANCELLED
                )
        self.wake_scheduler()
        return self.view(caller, job_id)

    def list(self, caller: Caller) -> list[dict]:
        with self.store.transaction() as db:
            query = select(Job.id).order_by(Job.created_at.desc())
            if caller.role is not Role.ADMIN:
                query = query.where(Job.account_id == caller.account_id)
            ids = list(db.scalars(query))
        return [self.view(caller, job_id) for job_id in ids]

    def view(self, caller: Caller, job_id: str) -> dict:
        with self.store.transaction() as db:
            job = self._own(db, caller, job_id)
            out = {
                "id": job.id,
                "name": job.name,
                "kind": job.kind,
                "state": job.state,
                "reason": job.reason,
                "created_at": job.created_at,
                "started_at": job.started_at,
                "ended_at": job.ended_at,
                "lease": None,
                "cost": None,
                "model_version": None,
            }
            out |= kind_of(job).view(db, job, self.where())
            if job.datasets:  # what it reads, pinned at submit: the same bytes on a rerun
                out["datasets"] = {ref: pin["id"] for ref, pin in job.datasets.items()}
            version = model_registry.made_by(db, job.id)
            if version is not None:
                out["model_version"] = f"{version.name}@{version.version}"
            if job.lease_id:
                lease = db.get(Lease, job.lease_id)
                members = db.scalars(
                    select(LeaseMember)
                    .where(LeaseMember.lease_id == lease.id)
                    .order_by(LeaseMember.id)
                )
                out["lease"] = {
                    "id": lease.id,
                    "state": lease.state,
                    "reason": lease.reason,
                    "price_per_hour": money_text(lease.price_per_hour_micros),
                    "escrow": money_text(lease.escrow_micros),
                    "members": [
                        {
                            "seller_id": m.seller_id,
                            "gpus": m.gpus,
                            "state": m.state,
                            "driver": m.driver,
                            "price_per_gpu_hour": money_text(m.price_micros),
                            "attached_at": m.attached_at,
                            "detached_at": m.detached_at,
                        }
                        for m in members
                    ],
                }
                billed = _billed(db, job.id)  # every lease it had (a requeued job has more)
                if billed is not None:
                    out["cost"] = money_text(billed)
            return out

    def sweep(self, caller: Caller, job_id: str) -> dict:
        """A sweep's leaderboard: trials best first, each with its cost, and the bill."""
        with self.store.transaction() as db:
            job = self._own(db, caller, job_id)
            if job.kind != SweepKind.name:
                raise NotFound(f"job {job_id} is not a sweep")
            out = sweep_jobs.leaderboard(db, job, _billed(db, job.id))
            out["job_id"], out["state"] = job.id, job.state
            out["status"] = sweep_jobs.sweep_status(self.where().objects, job)
            version = model_registry.made_by(db, job.id)
            out["model_version"] = f"{version.name}@{version.version}" if version else None
            return out

    def logs(self, caller: Caller, job_id: str, offset: int) -> dict:
        with self.store.transaction() as db:
            state = JobState(self._own(db, caller, job_id).state)
        text = self.scheduler.job_logs(job_id)
        done = state.is_terminal and self.scheduler.job_log_path(job_id).exists()
        return {"text": text[offset:], "offset": len(text), "done": done, "state": state.value}

    def ledger_view(self, caller: Caller, account: str | None) -> dict:
        with self.store.transaction() as db:
            if caller.role is Role.ADMIN:
                accounts = [account] if account else None
            elif caller.role is Role.BUYER:
                own = ledger.buyer(caller.account_id)
                leases = db.scalars(
                    select(Lease.id).where(Lease.account_id == caller.account_id)
                ).all()
                allowed = [
                    own,
                    *(ledger.escrow(lease) for lease in leases),
                    *(ledger.metered(lease) for lease in leases),
                ]
                accounts = [account] if account in allowed else allowed
            else:
                sellers = db.scalars(
                    select(Seller.id).where(Seller.account_id == caller.account_id)
                ).all()
                accounts = [ledger.seller(s) for s in sellers]
            entries = ledger.entries_for(db, accounts)
            balances: dict[str, int] = {}
            for e in entries:
                balances[e.account] = balances.get(e.account, 0) + e.amount_micros
            return {
                "storage_bytes": self._storage_view(caller, account),
                "balances": {a: money_text(v) for a, v in sorted(balances.items())},
                "balances_micros": dict(sorted(balances.items())),
                "entries": [
                    {
                        "txn": e.txn_id,
                        "account": e.account,
                        "kind": e.kind,
                        "ref": e.ref,
                        "amount": money_text(e.amount_micros),
                        "amount_micros": e.amount_micros,
                        "at": e.created_at,
                    }
                    for e in entries
                ],
            }

    def _storage_view(self, caller: Caller, account: str | None) -> dict[str, int]:
        """Bytes in the object store: the buyer's own; any account's for admins."""
        if self.stored is None or caller.role is Role.SELLER:
            return {}
        try:
            if caller.role is Role.BUYER:
                return {caller.account_id: self.stored.bytes_of(caller.account_id)}
            every = self.stored.bytes_by_account()
        except Exception:  # the ledger answers without it; /readyz says why
            return {}
        return {account: every.get(account, 0)} if account else every

    def deposit(self, caller: Caller, account_id: str, micros: int) -> dict:
        caller.require(Role.ADMIN)
        if micros <= 0:
            raise ApiError("deposits are positive")
        with self.store.transaction() as db:
            if db.get(Account, account_id) is None:
                raise NotFound(f"no account {account_id}")
            ledger.post(db, ledger.deposit(account_id, micros, ref=caller.account_id), self.clock())
            return {
                "account": ledger.buyer(account_id),
                "balance": money_text(ledger.balance(db, ledger.buyer(account_id))),
            }

    def _own(self, db, caller: Caller, job_id: str) -> Job:
        job = db.get(Job, job_id)
        if job is None or (caller.role is not Role.ADMIN and job.account_id != caller.account_id):
            raise NotFound(f"no job {job_id}")
        return job


def _billed(db, job_id: str) -> int | None:
    """What the job's leases cost the buyer (sellers and fees), once all are settled."""
    leases = db.scalars(select(Lease.id).where(Lease.job_id == job_id)).all()
    settled = db.scalars(
        select(LedgerEntry).where(LedgerEntry.ref.in_(leases), LedgerEntry.kind == "settle")
    ).all()
    if not leases or len({e.txn_id for e in settled}) < len(leases):
        return None
    return sum(e.amount_micros for e in settled if e.account.startswith(("seller:", "platform")))


def _reasons(bid, asks, now, fee_bps) -> dict[str, str]:
    return {
        a.seller_id: explain(bid, a, now, fee_bps) or "eligible, but not among the cheapest"
        for a in asks
    }


def _quota_message(quota: int) -> str:
    return (
        f"upload quota of {quota // 2**20} MiB reached: the working_dirs of your unfinished "
        "jobs are kept until they end; cancel one, or upload less (exclude data the job can "
        "fetch itself)"
    )
