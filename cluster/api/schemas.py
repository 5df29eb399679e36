"""Request and response bodies of the coordinator API, and so its OpenAPI spec.

Requests are strict (unknown keys are errors). Responses are `ResponseModel`s: the CLI reads
answers with the same models, leniently (see there). Job views live in `api/views.py`.
"""

from __future__ import annotations

import base64
import binascii
from decimal import Decimal
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from computeswarm.cluster.errors import ApiError
from computeswarm.jobs.money import MICROS
from computeswarm.jobs.mounts import VOLUME_NAME
from computeswarm.strict import StrictModel
from computeswarm.tunnel.config import parse_endpoint
from computeswarm.tunnel.errors import ConfigParseError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def _drop_sometimes(schema: dict[str, Any], model: type[ResponseModel]) -> None:
    required = schema.get("required")
    if required and model.sometimes:
        schema["required"] = [name for name in required if name not in model.sometimes]


class ResponseModel(BaseModel):
    """What the coordinator sends back, parsed leniently by whoever reads it.

    Unknown keys are ignored and fields a reader can do without have defaults, so the CLI
    reads an older coordinator's (or a test fake's) answer. The response schema still marks
    every field required - the coordinator always sends it - except those in `sometimes`,
    which a route leaves out when they do not apply (`response_model_exclude_unset`).
    """

    model_config = ConfigDict(
        extra="ignore",
        json_schema_serialization_defaults_required=True,
        json_schema_extra=_drop_sometimes,
    )
    sometimes: ClassVar[frozenset[str]] = frozenset()


# -- system -------------------------------------------------------------------------------


class Health(ResponseModel):
    status: str = "ok"


class Readiness(ResponseModel):
    ready: bool
    checks: dict[str, str] = Field(description="Each dependency: 'ok', or what is wrong.")


# -- enrollment ---------------------------------------------------------------------------


class InviteCreate(StrictModel):
    ttl_s: float | None = Field(
        None, gt=0, le=30 * 24 * 3600, description="Lifetime in seconds; default from the config."
    )
    note: str = Field("", max_length=200, description="Who the invite is for.")


class InviteCreated(ResponseModel):
    invite: str
    expires_at: float


class EnrollRequest(StrictModel):
    invite: str = Field(max_length=200, description="The invite token, csi_<id>_<secret>.")
    public_key: str = Field(max_length=64, description="The node's WireGuard public key.")
    proof: str = Field(max_length=100, description="possession_proof(node keys, hub key, invite).")
    name: str = Field(pattern=NAME_PATTERN, description="A name for the seller's box.")
    endpoint: str | None = Field(
        None, max_length=100, description="host:port where other nodes reach its WireGuard."
    )
    behind_nat: bool = Field(False, description="No inbound UDP: keep the path open instead.")

    @field_validator("endpoint")
    @classmethod
    def _valid_endpoint(cls, value: str | None) -> str | None:
        # Checked before anything is stored: a bad endpoint once committed broke every
        # later start of the hub.
        if value is None:
            return None
        try:
            return parse_endpoint(value)
        except ConfigParseError as e:
            raise ValueError(str(e)) from None


class HubInfo(ResponseModel):
    public_key: str
    endpoint: str
    address: str
    overlay_cidr: str
    backend: str
    overlay_api_url: str
    heartbeat_interval_s: float
    heartbeat_timeout_s: float
    observed_client_host: str | None = None  # how the caller's address looks from here (NAT?)


class Enrolled(ResponseModel):
    seller_id: str
    address: str
    api_key: str
    rejoined: bool
    hub: HubInfo


# -- sellers ------------------------------------------------------------------------------


class GpuInfo(StrictModel):
    model: str = Field(max_length=40)
    vram_gb: int = Field(ge=1, le=1024)
    simulated: bool = False


class HeartbeatRequest(StrictModel):
    gpus: list[GpuInfo] = Field(default_factory=list, max_length=64)
    simulated: bool = Field(False, description="GPUs are declared, not detected (demos/tests).")
    rtt_ms: float | None = Field(None, ge=0, le=60_000)
    bandwidth_mbps: float | None = Field(None, ge=0, le=1_000_000)
    workers: dict[str, str] = Field(
        default_factory=dict, max_length=16, description="lease id -> starting | running | failed"
    )


class Assignment(ResponseModel):
    """A lease node this seller should run: join the lease's Ray head with these limits."""

    lease_id: str
    head: str = Field(description="host:port of the lease's Ray head.")
    token: str
    gpus: int
    cpus: float
    memory_bytes: int
    driver: bool = Field(description="This node runs the job's driver.")
    port_base: int = Field(description="First of this node's worker ports.")
    labels: dict[str, str] = Field(default_factory=dict)
    uid: int = Field(description="The user the lease's processes run as.")
    files: dict[str, Any] = Field(default_factory=dict)
    datasets: list[str] = Field(
        default_factory=list, description="Dataset versions to fetch before the node starts."
    )
    volumes: list[str] = Field(
        default_factory=list, description="Mount paths of volumes to fetch before it starts."
    )


class HeartbeatReply(ResponseModel):
    state: str
    assignments: list[Assignment] = Field(
        default_factory=list, description="Lease nodes this seller should run now."
    )


# -- jobs, market, ledger -----------------------------------------------------------------


class JobSubmit(StrictModel):
    spec: dict = Field(description="The job spec (as in the YAML file).")
    working_dir_zip: str | None = Field(None, description="base64 zip of runtime_env.working_dir.")

    def upload(self) -> bytes | None:
        """The working_dir zip's bytes, or None when the spec has no working_dir."""
        if self.working_dir_zip is None:
            return None
        try:
            return base64.b64decode(self.working_dir_zip, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError("working_dir_zip is not valid base64") from None


class QuoteRequest(StrictModel):
    spec: dict
    explain: bool = False


class Deposit(StrictModel):
    amount: Decimal = Field(gt=0, le=10_000_000)

    @property
    def micros(self) -> int:
        return int(self.amount * MICROS)


class OfferRequest(StrictModel):
    price_per_gpu_hour: Decimal = Field(
        gt=0, le=1000, description="Ask per GPU-hour, at most 6 decimals."
    )
    available_from: float | None = Field(None, description="Unix time; default now.")
    available_until: float | None = Field(None, description="Unix time; default open-ended.")
    max_lease_hours: int = Field(24, ge=1, le=720)

    @field_validator("price_per_gpu_hour")
    @classmethod
    def _six_decimals(cls, value: Decimal) -> Decimal:
        if value != value.quantize(Decimal("0.000001")):
            raise ValueError("prices have at most 6 decimals (micro-units)")
        return value

    @property
    def price_micros(self) -> int:
        return int(self.price_per_gpu_hour * MICROS)


class OfferView(ResponseModel):
    price_per_gpu_hour: str = Field(description="The ask as the seller wrote it, e.g. 0.42.")
    price_per_gpu_hour_micros: int
    available_from: float | None = None
    available_until: float | None = None
    max_lease_hours: int


class GpuView(ResponseModel):
    model: str
    vram_gb: int
    simulated: bool = False


class SellerView(ResponseModel):
    id: str
    name: str
    state: str
    gpus: list[GpuView] = Field(default_factory=list)
    gpus_simulated: bool = False
    rtt_ms: float | None = None
    bandwidth_mbps: float | None = None
    last_heartbeat: float | None = None
    offer: OfferView | None = None
    # Only for the seller itself and admins:
    address: str | None = None
    public_key: str | None = None
    endpoint: str | None = None
    behind_nat: bool | None = None
    left_at: float | None = None


class EarningsDay(ResponseModel):
    day: float = Field(description="The day's start (UTC), epoch seconds.")
    released_micros: int


class RunningStint(ResponseModel):
    """The seller's part of a running lease; whose lease it is, the seller is not told."""

    lease_id: str
    gpus: int
    since: float
    ask_micros: int
    accrued_micros: int


class SellerEarnings(ResponseModel):
    """Released: paid by settled leases; pending: accrued by leases not settled yet."""

    released_micros: int
    released_24h_micros: int
    released_7d_micros: int
    released_30d_micros: int
    pending_micros: int
    rate_micros_per_hour: int = Field(description="The last 15 minutes' average.")
    predicted_day_micros: int
    predicted_month_micros: int
    daily: list[EarningsDay]
    current: list[RunningStint]


# -- accounts -----------------------------------------------------------------------------


class AccountCreate(StrictModel):
    name: str = Field(pattern=NAME_PATTERN)
    role: str = Field(pattern="^(admin|buyer|seller)$")


class AccountCreated(ResponseModel):
    account_id: str
    name: str
    role: str
    api_key: str = Field(description="Shown once; the coordinator keeps only its hash.")


# -- models -------------------------------------------------------------------------------


class ModelVersionView(ResponseModel):
    """A registered model version (not where its files live on the coordinator)."""

    id: str
    account_id: str
    name: str
    version: int
    ref: str = Field(description="NAME@VERSION")
    kind: str
    base_model: str
    spec_hash: str
    data_hash: str
    metrics: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str
    parent: str | None = Field(None, description="The version training started from.")
    job_id: str | None = None
    dataset: str | None = Field(None, description="The dataset version it was trained on.")
    size_bytes: int
    created_at: float


class ModelVersions(ResponseModel):
    name: str
    versions: list[ModelVersionView] = Field(description="Oldest first.")


# -- datasets -----------------------------------------------------------------------------


class DatasetVersionView(ResponseModel):
    ref: str = Field(description="[OWNER/]NAME@N: what a spec's `dataset` takes.")
    name: str
    owner: str | None = Field(None, description="The owner's account name, if shared with you.")
    version: int
    id: str = Field(description="The manifest's sha256: the same bytes, the same id.")
    files: int
    size_bytes: int
    created_at: float
    versions: int | None = Field(None, description="In listings: how many versions it has.")


class DatasetView(ResponseModel):
    name: str
    owner: str | None = None
    versions: list[DatasetVersionView] = Field(description="Oldest first.")
    shared_with: list[str] = Field(default_factory=list, description="Accounts that may read it.")


class ChunkSize(StrictModel):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=1, le=8 * 2**20)


class ChunksAsked(StrictModel):
    chunks: list[ChunkSize] = Field(max_length=10_000)


class ChunksMissing(ResponseModel):
    missing: list[str] = Field(description="The sha256 of each chunk the store lacks.")


class ChunkStored(ResponseModel):
    sha256: str
    stored: bool = Field(description="False: the store had it already.")


class ManifestUpload(StrictModel):
    manifest: dict[str, Any] = Field(description="Files, sizes, sha256s and chunks.")


class ShareRequest(StrictModel):
    account: str = Field(pattern=NAME_PATTERN, description="The account name to share with.")
    revoke: bool = False


class LeaseDataset(ResponseModel):
    ref: str
    id: str
    manifest: dict[str, Any]


class VolumeCreate(StrictModel):
    name: str = Field(pattern=VOLUME_NAME, description="Letters, digits, _ and -.")
    size_bytes: int | None = Field(None, gt=0, description="Its size limit (default 10 GiB).")


class VolumeView(ResponseModel):
    name: str
    id: str
    size_bytes: int = Field(description="What its newest commit holds.")
    size_limit_bytes: int
    files: int
    commits: int
    head: str | None = Field(description="The newest commit's manifest id (None: empty).")
    last_error: str | None = Field(description="Why the last commit was refused, if it was.")
    created_at: float
    updated_at: float


class VolumeFile(ResponseModel):
    path: str
    size: int
    sha256: str


class VolumeCommitRequest(StrictModel):
    base: str | None = Field(None, description="The commit the node's copy started from.")
    manifest: dict[str, Any]


class LeaseVolume(ResponseModel):
    mount: str
    name: str
    readonly: bool
    head: str | None
    manifest: dict[str, Any]
