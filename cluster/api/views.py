"""Response models of the buyer side: jobs, their kinds' progress, quotes, sweeps, the ledger.

Money is text from `money_text` (six places: `0.440000`) beside integer micro-units where
a script needs to add them up. A job view's kind section (`training`, `sweep`, `serve`)
is present only for its kind.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from computeswarm.cluster.api.schemas import ResponseModel

# -- jobs -----------------------------------------------------------------------------------


class MemberView(ResponseModel):
    """One seller in a lease."""

    seller_id: str
    gpus: int
    state: str
    driver: bool = False
    price_per_gpu_hour: str = Field(description="What the buyer pays, fee included.")
    attached_at: float | None = None
    detached_at: float | None = None


class LeaseView(ResponseModel):
    id: str
    state: str
    reason: str | None = None
    price_per_hour: str
    escrow: str
    members: list[MemberView] = Field(default_factory=list)


class TrainingProgress(ResponseModel):
    """`lora` and `pipeline` jobs: the last steps' losses, the final metrics, the stages."""

    sometimes: ClassVar[frozenset[str]] = frozenset({"stages"})

    steps: int | None = Field(None, description="Total steps when known at the start.")
    step: int = 0
    recent_losses: list[float] = Field(default_factory=list)
    metrics: dict[str, Any] | None = None
    stages: list[dict[str, Any]] | None = Field(
        None, description="A pipeline's planned split of layers over the lease's sellers."
    )


class BestTrial(ResponseModel):
    trial_id: str
    params: dict[str, Any] = Field(default_factory=dict)
    metric: float | None = None


class SweepSummary(ResponseModel):
    trials: dict[str, int] = Field(default_factory=dict, description="Trials per state.")
    best: BestTrial | None = None
    trials_cost: str


class ServeStatus(ResponseModel):
    endpoint: str = Field(description="Path of the OpenAI-compatible API, under the coordinator.")
    ready: bool = False
    models: list[str] = Field(default_factory=list)
    replicas: dict[str, Any] | None = None
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    metered_micros: int = 0


class JobView(ResponseModel):
    sometimes: ClassVar[frozenset[str]] = frozenset({"training", "sweep", "serve", "datasets"})

    id: str
    name: str
    kind: str = ""
    state: str
    reason: str | None = None
    created_at: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None
    lease: LeaseView | None = None
    cost: str | None = Field(None, description="What its leases cost, once all are settled.")
    model_version: str | None = Field(None, description="NAME@VERSION it registered.")
    datasets: dict[str, str] | None = Field(
        None, description="Dataset versions it reads, pinned at submit: ref -> manifest id."
    )
    training: TrainingProgress | None = None
    sweep: SweepSummary | None = None
    serve: ServeStatus | None = None


class LogChunk(ResponseModel):
    text: str
    offset: int = Field(description="Where the next read starts (`?offset=`).")
    done: bool = Field(description="The job ended and its whole log is here.")
    state: str


# -- sweeps ---------------------------------------------------------------------------------


class TrialView(ResponseModel):
    trial_id: str
    index: int | None = Field(None, description="Its place in the sweep's plan.")
    state: str
    params: dict[str, Any] = Field(default_factory=dict)
    metric: float | None = None
    best_metric: float | None = None
    iterations: int = 0
    gpu_seconds: float = 0.0
    cost_micros: int = 0
    lease_id: str | None = None
    history: list[Any] = Field(default_factory=list)
    started_at: float | None = Field(None, description="When it started (Unix seconds).")
    ended_at: float | None = Field(None, description="When it ended, if it has.")


class SweepBoard(ResponseModel):
    """A sweep's leaderboard: trials best first, and how their costs add up to the bill."""

    job_id: str
    state: str
    metric: str
    mode: str
    planned: int | None = None
    trials: list[TrialView] = Field(default_factory=list)
    trials_cost_micros: int = 0
    cost_cap_micros: int | None = None
    bill_micros: int | None = None
    overhead_micros: int | None = Field(
        None, description="Lease formation, imports and idle GPUs: paid, but no trial's."
    )
    status: dict[str, Any] = Field(default_factory=dict)
    model_version: str | None = None


# -- market ---------------------------------------------------------------------------------


class QuotedSeller(ResponseModel):
    seller_id: str
    vram_gb: int | float
    gpus: int
    ask_per_gpu_hour: str
    price_per_gpu_hour: str = Field(description="What the buyer pays: the ask plus the fee.")


class QuotedVolume(ResponseModel):
    size_bytes: int
    size_limit_bytes: int
    per_hour_when_full: str


class StorageQuote(ResponseModel):
    """Storage is billed per GB-hour until it is removed, job or no job."""

    price_per_gb_hour: str
    held_bytes: int = Field(description="Your volumes' newest commits and datasets' chunks.")
    per_hour: str
    per_month: str
    during_job: str = Field(description="What it costs over the job's max_duration.")
    volumes: dict[str, QuotedVolume] = Field(default_factory=dict)


class Quote(ResponseModel):
    """What the market would choose now; nothing is leased."""

    sometimes: ClassVar[frozenset[str]] = frozenset(
        {"price_per_hour", "estimated_cost", "sellers", "reason", "storage"}
    )

    escrow: str = ""
    max_duration_s: float = 0.0
    matched: bool
    price_per_hour: str | None = None
    estimated_cost: str | None = None
    sellers: list[QuotedSeller] = Field(default_factory=list)
    reason: str | None = Field(None, description="Why nothing matched.")
    rejected: dict[str, str] = Field(
        default_factory=dict, description="With `explain`: seller id -> why not chosen."
    )
    storage: StorageQuote | None = None


# -- ledger ---------------------------------------------------------------------------------


class LedgerEntryView(ResponseModel):
    txn: str
    account: str
    kind: str
    ref: str = ""
    amount: str
    amount_micros: int
    at: float


class LedgerView(ResponseModel):
    storage_bytes: dict[str, int] = Field(
        default_factory=dict, description="Bytes each account keeps in the object store."
    )
    balances: dict[str, str] = Field(default_factory=dict)
    balances_micros: dict[str, int] = Field(default_factory=dict)
    entries: list[LedgerEntryView] = Field(default_factory=list)


class Deposited(ResponseModel):
    account: str
    balance: str
