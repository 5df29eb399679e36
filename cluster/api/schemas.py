"""Request and response bodies. Requests are strict (unknown keys are errors)."""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, Field, field_validator

from computeswarm.strict import StrictModel
from computeswarm.tunnel.config import parse_endpoint
from computeswarm.tunnel.errors import ConfigParseError

MICROS = 1_000_000
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class InviteCreate(StrictModel):
    ttl_s: float | None = Field(
        None, gt=0, le=30 * 24 * 3600, description="Lifetime in seconds; default from the config."
    )
    note: str = Field("", max_length=200, description="Who the invite is for.")


class InviteCreated(BaseModel):
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


class HubInfo(BaseModel):
    public_key: str
    endpoint: str
    address: str
    overlay_cidr: str
    backend: str
    overlay_api_url: str
    heartbeat_interval_s: float
    heartbeat_timeout_s: float
    observed_client_host: str | None = None  # how the caller's address looks from here (NAT?)


class Enrolled(BaseModel):
    seller_id: str
    address: str
    api_key: str
    rejoined: bool
    hub: HubInfo


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


class HeartbeatReply(BaseModel):
    state: str
    assignments: list[dict] = Field(
        default_factory=list, description="Lease nodes this seller should run now."
    )


class JobSubmit(StrictModel):
    spec: dict = Field(description="The job spec (as in the YAML file).")
    working_dir_zip: str | None = Field(None, description="base64 zip of runtime_env.working_dir.")


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


class OfferView(BaseModel):
    price_per_gpu_hour: str
    price_per_gpu_hour_micros: int
    available_from: float | None
    available_until: float | None
    max_lease_hours: int


class SellerView(BaseModel):
    id: str
    name: str
    state: str
    gpus: list[dict]
    gpus_simulated: bool
    rtt_ms: float | None
    bandwidth_mbps: float | None
    last_heartbeat: float | None
    offer: OfferView | None
    # Only for the seller itself and admins:
    address: str | None = None
    public_key: str | None = None
    endpoint: str | None = None
    behind_nat: bool | None = None
    left_at: float | None = None


class AccountCreate(StrictModel):
    name: str = Field(pattern=NAME_PATTERN)
    role: str = Field(pattern="^(admin|buyer|seller)$")


class AccountCreated(BaseModel):
    account_id: str
    name: str
    role: str
    api_key: str
