"""Coordinator configuration: a YAML file (see configs/coordinator.yaml) plus environment.

Environment variables override the file: `COMPUTESWARM_HEAD__<KEY>` for top-level keys and
`COMPUTESWARM_HEAD__<SECTION>__<KEY>` for nested ones, e.g.
`COMPUTESWARM_HEAD__HEARTBEAT__TIMEOUT_S=30`. Unknown keys, in the file or the
environment, are errors that name the nearest valid key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path

import yaml
from pydantic import Field, model_validator

from computeswarm.cluster.errors import ConfigError
from computeswarm.strict import StrictModel, validate_strict

ENV_PREFIX = "COMPUTESWARM_HEAD__"


class OverlayConfig(StrictModel):
    cidr: str = Field("10.90.0.0/16", description="Overlay address range; the hub is its .1.")
    backend: str = Field("auto", description="kernel, userspace, none, or auto (best here).")
    interface: str = Field("cs-hub", description="Hub interface name, unique on the machine.")
    listen_port: int = Field(51820, ge=1, le=65535, description="Hub's WireGuard UDP port.")
    public_endpoint: str | None = Field(
        None, description="host:port sellers dial for WireGuard; default: public_host:listen_port."
    )
    underlay_interfaces: list[str] = Field(
        default_factory=lambda: ["eth0"], description="Interfaces facing the underlay (fenced)."
    )
    fence: bool = Field(True, description="Apply nftables fencing (needs a real backend).")


class HeartbeatConfig(StrictModel):
    interval_s: float = Field(5.0, gt=0, description="How often agents heartbeat.")
    timeout_s: float = Field(15.0, gt=0, description="Silence after which a seller is offline.")

    @model_validator(mode="after")
    def _timeout_covers_interval(self) -> HeartbeatConfig:
        if self.timeout_s < 2 * self.interval_s:
            raise ValueError("heartbeat.timeout_s must be at least 2 x heartbeat.interval_s")
        return self


class LimitsConfig(StrictModel):
    max_body_bytes: int = Field(64 * 1024, ge=1024, description="Largest request body accepted.")
    requests_per_second: float = Field(50.0, gt=0, description="Per API key, sustained.")
    burst: int = Field(100, ge=1, description="Per API key, short bursts.")


class MarketConfig(StrictModel):
    fee_bps: int = Field(1000, ge=0, le=5000, description="Platform fee on asks, basis points.")
    tick_s: float = Field(0.5, gt=0, le=10, description="How often the scheduler runs.")
    ray_system_config: dict[str, int] = Field(
        default_factory=lambda: {
            "health_check_period_ms": 1000,
            "health_check_timeout_ms": 2000,
            "health_check_failure_threshold": 4,
            "grpc_client_keepalive_time_ms": 5000,
            "grpc_client_keepalive_timeout_ms": 5000,
        },
        description="Lease heads' Ray --system-config: failure detection fit for WAN links.",
    )
    max_upload_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest job submission (spec + working_dir)."
    )
    upload_quota_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1024,
        description="Per buyer: unpacked working_dirs of its unfinished jobs kept on the head.",
    )


class StorageConfig(StrictModel):
    endpoint: str | None = Field(
        None,
        description="An S3 service's URL (MinIO, Ceph RGW, a JuiceFS cluster); default: the "
        "embedded store, started by the coordinator on the hub's overlay address.",
    )
    port: int = Field(
        9900, ge=0, le=65535, description="The embedded store's port (0: any free port)."
    )
    bucket: str = Field("computeswarm", description="The bucket every artifact lives in.")
    access_key: str | None = Field(None, description="Root access key of `endpoint`.")
    secret_key: str | None = Field(None, description="Its secret (set it by environment).")
    quota_bytes_per_account: int = Field(
        2 * 1024**3, ge=0, description="Per buyer: bytes in the store before submissions stop."
    )
    price_per_gb_hour: Decimal = Field(
        Decimal("0.00003"),
        ge=0,
        le=1,
        description="What a buyer pays per GB-hour of volumes and datasets (0.00003: ~0.022 a "
        "GB-month).",
    )
    meter_every_s: float = Field(
        3600, ge=1, description="How often stored bytes are sampled and billed."
    )

    @model_validator(mode="after")
    def _endpoint_has_keys(self) -> StorageConfig:
        if self.endpoint and not (self.access_key and self.secret_key):
            raise ValueError("storage.endpoint needs storage.access_key and storage.secret_key")
        if self.endpoint and not self.endpoint.startswith(("http://", "https://")):
            raise ValueError("storage.endpoint must be a URL: http(s)://host:port")
        return self


class CoordinatorConfig(StrictModel):
    state_dir: Path = Field(
        Path("/var/lib/computeswarm/coordinator"), description="Keys, the SQLite store, logs."
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL; default sqlite:///<state_dir>/coordinator.db. "
        "PostgreSQL: postgresql+psycopg://user:pass@host/db",
    )
    listen_host: str = Field("0.0.0.0", description="API bind address.")
    listen_port: int = Field(8443, ge=1, le=65535, description="API port.")
    public_host: str | None = Field(
        None, description="Underlay address or name sellers use to enroll; default: listen_host."
    )
    overlay: OverlayConfig = Field(default_factory=OverlayConfig)
    heartbeat: HeartbeatConfig = Field(default_factory=HeartbeatConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    market: MarketConfig = Field(default_factory=MarketConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    invite_ttl_s: float = Field(24 * 3600, gt=0, description="Default invite lifetime.")

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir / 'coordinator.db'}"


def load_config(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> CoordinatorConfig:
    """File, then environment, then explicit overrides (CLI flags)."""
    data: dict = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read coordinator config {path}: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
        data = loaded
    for key, value in (os.environ if env is None else env).items():
        if key.startswith(ENV_PREFIX):
            parts = key[len(ENV_PREFIX) :].lower().split("__")
            _set_nested(data, parts, _env_value(value))
            source += f" + ${key}"
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_nested(data, key.split("."), value)
    try:
        return validate_strict(CoordinatorConfig, data, source=source)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _set_nested(data: dict, parts: list[str], value: object) -> None:
    for part in parts[:-1]:
        data = data.setdefault(part, {})
    data[parts[-1]] = value


def _env_value(raw: str) -> object:
    """Environment values are YAML scalars or lists: `30`, `true`, `[eth0, eth1]`."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
