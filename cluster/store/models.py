"""Tables. Times are unix seconds (float), money is integer micro-units, ids are text.

Sellers are never deleted (innernet's rule): their address and key stay on record, so an
address once given out is never handed out again.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[float] = mapped_column(Float)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # the key's public prefix
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Invite(Base):
    __tablename__ = "invites"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    note: Mapped[str] = mapped_column(String(200), default="")
    redeemed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    redeemed_by_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seller_id: Mapped[str | None] = mapped_column(String(40), nullable=True)


class Seller(Base):
    __tablename__ = "sellers"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    public_key: Mapped[str] = mapped_column(String(64), unique=True)
    address: Mapped[str] = mapped_column(String(45), unique=True)
    address_int: Mapped[int] = mapped_column(BigInteger, unique=True)
    state: Mapped[str] = mapped_column(String(20), index=True)
    endpoint: Mapped[str | None] = mapped_column(String(100), nullable=True)
    behind_nat: Mapped[bool] = mapped_column(Boolean, default=False)
    gpus: Mapped[list] = mapped_column(JSON, default=list)
    gpus_simulated: Mapped[bool] = mapped_column(Boolean, default=False)
    last_heartbeat: Mapped[float | None] = mapped_column(Float, nullable=True)
    rtt_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    bandwidth_mbps: Mapped[float | None] = mapped_column(Float, nullable=True)
    enrolled_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    left_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # address retired
    leases_completed: Mapped[int] = mapped_column(Integer, default=0)
    leases_lost: Mapped[int] = mapped_column(Integer, default=0)


class Offer(Base):
    __tablename__ = "offers"

    seller_id: Mapped[str] = mapped_column(ForeignKey("sellers.id"), primary_key=True)
    price_per_gpu_hour_micros: Mapped[int] = mapped_column(BigInteger)
    available_from: Mapped[float | None] = mapped_column(Float, nullable=True)
    available_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_lease_hours: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[float] = mapped_column(Float)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(20))
    spec: Mapped[dict] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(20), index=True)
    reason: Mapped[str] = mapped_column(String(500), default="")
    lease_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    upload_path: Mapped[str | None] = mapped_column(String(500), nullable=True)
    # Chosen by the coordinator when the job is first leased; never read from the upload.
    run_dir: Mapped[str | None] = mapped_column(String(500), nullable=True)
    # Bytes of the unpacked upload while it is kept (0 once the finished job's is deleted).
    upload_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    submission_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    # The dataset versions it reads, pinned at submit: {"[OWNER/]NAME@N": {"owner": account
    # id, "name", "version", "id": manifest id}}. A rerun of the spec reads the same bytes.
    datasets: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Lease(Base):
    __tablename__ = "leases"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    job_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    state: Mapped[str] = mapped_column(String(20), index=True)
    reason: Mapped[str] = mapped_column(String(500), default="")
    token: Mapped[str] = mapped_column(String(100))
    port_base: Mapped[int] = mapped_column(Integer)
    head_session: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The head process's start time in clock ticks since boot (/proc/PID/stat): a PID alone
    # may belong to another process after a restart.
    head_started: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # What the lease's sandboxes see besides the system: {"read": [...], "write": [...]}.
    files: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    price_per_hour_micros: Mapped[int] = mapped_column(BigInteger)
    escrow_micros: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    deadline: Mapped[float] = mapped_column(Float)


class LeaseMember(Base):
    __tablename__ = "lease_members"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    lease_id: Mapped[str] = mapped_column(ForeignKey("leases.id"), index=True)
    seller_id: Mapped[str] = mapped_column(ForeignKey("sellers.id"), index=True)
    gpus: Mapped[int] = mapped_column(Integer)
    ask_micros: Mapped[int] = mapped_column(BigInteger)
    price_micros: Mapped[int] = mapped_column(BigInteger)
    driver: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[str] = mapped_column(String(20))
    assigned_at: Mapped[float] = mapped_column(Float)
    attached_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    detached_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class LedgerEntry(Base):
    __tablename__ = "ledger_entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    txn_id: Mapped[str] = mapped_column(String(40), index=True)
    account: Mapped[str] = mapped_column(String(80), index=True)
    amount_micros: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(40))
    ref: Mapped[str] = mapped_column(String(80), default="")
    created_at: Mapped[float] = mapped_column(Float)


class ModelVersion(Base):
    """A registered model (a LoRA adapter), numbered 1, 2, 3... per (account, name).

    Its files live in `artifact_path` on the coordinator; the row is written in the same
    transaction that moves the complete folder into place, so a visible row always has
    all of its files.
    """

    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("account_id", "name", "version", name="uq_model_versions_version"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)  # the owner
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(20))
    base_model: Mapped[str] = mapped_column(String(200))
    spec_hash: Mapped[str] = mapped_column(String(64))
    data_hash: Mapped[str] = mapped_column(String(64))
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    checkpoint: Mapped[str] = mapped_column(String(500))  # the checkpoint it came from
    parent: Mapped[str | None] = mapped_column(  # the version training started from
        ForeignKey("model_versions.id"), nullable=True
    )
    job_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    dataset: Mapped[str | None] = mapped_column(String(200), nullable=True)  # NAME@N (id)
    artifact_path: Mapped[str] = mapped_column(String(500))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[float] = mapped_column(Float)


class Dataset(Base):
    """A buyer's named dataset: immutable versions, shared read-only by name."""

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("account_id", "name", name="uq_datasets_name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)  # the owner
    name: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)


class DatasetVersion(Base):
    """Version N of a dataset: its manifest (in the store, by its id) and sizes. The row is
    written after the manifest and every chunk are in the store."""

    __tablename__ = "dataset_versions"
    __table_args__ = (
        UniqueConstraint("dataset_id", "version", name="uq_dataset_versions_version"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    manifest_id: Mapped[str] = mapped_column(String(64))
    files: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[float] = mapped_column(Float)


class DatasetShare(Base):
    __tablename__ = "dataset_shares"
    __table_args__ = (UniqueConstraint("dataset_id", "account_id", name="uq_dataset_shares"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)  # the reader
    created_at: Mapped[float] = mapped_column(Float)


class SweepTrial(Base):
    """One trial of a sweep, as its driver last recorded it (ingested from the run folder)."""

    __tablename__ = "sweep_trials"
    __table_args__ = (UniqueConstraint("job_id", "trial_id", name="uq_sweep_trials_trial"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    trial_id: Mapped[str] = mapped_column(String(64))
    plan_index: Mapped[int] = mapped_column(Integer)  # its place in the sweep's plan
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(20))  # running|completed|stopped_early|error...
    iterations: Mapped[int] = mapped_column(Integer, default=0)
    history: Mapped[list] = mapped_column(JSON, default=list)  # the metric over time
    metric: Mapped[float | None] = mapped_column(Float, nullable=True)
    best_metric: Mapped[float | None] = mapped_column(Float, nullable=True)
    gpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    cost_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    checkpoint: Mapped[str | None] = mapped_column(String(500), nullable=True)
    node_ip: Mapped[str | None] = mapped_column(String(45), nullable=True)
    lease_id: Mapped[str | None] = mapped_column(String(40), nullable=True)  # where it ended
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class ServeRequest(Base):
    """One metered request through the gateway to a buyer's serve job."""

    __tablename__ = "serve_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    lease_id: Mapped[str] = mapped_column(String(40), index=True)
    key_id: Mapped[str] = mapped_column(String(40))
    model: Mapped[str] = mapped_column(String(64))
    route: Mapped[str] = mapped_column(String(32))
    status: Mapped[int] = mapped_column(Integer)
    stream: Mapped[bool] = mapped_column(Boolean)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    gpu_seconds: Mapped[float] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)
    cost_micros: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[float] = mapped_column(Float)


class Volume(Base):
    """A buyer's persistent volume: a chain of commits, the newest one its contents
    (`head`, a manifest in the store; None while empty)."""

    __tablename__ = "volumes"
    __table_args__ = (UniqueConstraint("account_id", "name", name="uq_volumes_name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)  # the owner
    name: Mapped[str] = mapped_column(String(64))
    size_limit_bytes: Mapped[int] = mapped_column(BigInteger)
    head: Mapped[str | None] = mapped_column(String(64), nullable=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    files: Mapped[int] = mapped_column(Integer, default=0)
    commits: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class VolumeCommit(Base):
    """One commit of a volume: from which lease, on which version, what it became."""

    __tablename__ = "volume_commits"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    volume_id: Mapped[str] = mapped_column(ForeignKey("volumes.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    base: Mapped[str | None] = mapped_column(String(64), nullable=True)
    head: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    lease_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    committed_at: Mapped[float] = mapped_column(Float)


class StorageMeter(Base):
    """Until when an account's volumes and datasets have been billed."""

    __tablename__ = "storage_meters"

    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    until: Mapped[float] = mapped_column(Float)
