"""The parts every job spec is made of (resources, pricing, runtime env, the base model
every kind extends) and the settings blocks of the kinds (`jobs/spec.py` has the kinds)."""

from __future__ import annotations

import math
import re
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from computeswarm.jobs import inputs
from computeswarm.jobs.money import MICROS
from computeswarm.jobs.mounts import VolumeMount, check_mounts
from computeswarm.strict import StrictModel

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)?$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_GPUS = re.compile(
    r"^(?P<model>[A-Za-z0-9_.-]+|any)(?::(?P<vram>\d+)\s*GB)?(?::(?P<count>\d+))?$", re.IGNORECASE
)


class GpuRequest(StrictModel):
    """Which GPUs: a model (or any), a VRAM floor, a count. Shorthand: `RTX4090:24GB:2`."""

    model: str | None = Field(None, description="GPU model, e.g. RTX4090; None: any model.")
    min_vram_gb: int = Field(0, ge=0, le=1024, description="Each GPU has at least this VRAM.")
    count: int = Field(1, ge=1, le=256, description="GPUs in total across all nodes.")

    @classmethod
    def parse(cls, text: str) -> GpuRequest:
        match = _GPUS.match(text.strip())
        if not match:
            raise ValueError(
                f"{text!r} is not MODEL[:VRAM GB][:COUNT], e.g. RTX4090:24GB:2 or any:16GB:4"
            )
        model = None if match["model"].lower() == "any" else match["model"].upper()
        return cls(model=model, min_vram_gb=int(match["vram"] or 0), count=int(match["count"] or 1))


class Resources(StrictModel):
    gpus: GpuRequest = Field(
        default_factory=GpuRequest, description="GPUs wanted; shorthand RTX4090:24GB:2 accepted."
    )
    nodes: int = Field(1, ge=1, le=64, description="Distinct sellers to spread the GPUs over.")
    cpus_per_node: float = Field(1.0, gt=0, le=256, description="CPUs for each node's worker.")
    memory_gb_per_node: float = Field(2.0, gt=0, le=2048, description="RAM per node's worker.")

    @field_validator("gpus", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return GpuRequest.parse(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _even_split(self) -> Resources:
        if self.gpus.count % self.nodes:
            raise ValueError(
                f"{self.gpus.count} GPUs cannot be split evenly over {self.nodes} "
                f"nodes; use a multiple of {self.nodes}"
            )
        return self

    @property
    def gpus_per_node(self) -> int:
        return self.gpus.count // self.nodes


class Pricing(StrictModel):
    max_price_per_gpu_hour: Decimal = Field(
        gt=0, le=1000, description="The most paid per GPU-hour, fee included."
    )
    budget: Decimal | None = Field(
        None,
        gt=0,
        le=1_000_000,
        description="The most spent on this job; default: max price x GPUs x max_duration.",
    )

    @field_validator("max_price_per_gpu_hour", "budget")
    @classmethod
    def _micros(cls, value: Decimal | None) -> Decimal | None:
        if value is not None and value != value.quantize(Decimal("0.000001")):
            raise ValueError("money has at most 6 decimals (micro-units)")
        return value

    @property
    def max_price_micros(self) -> int:
        return int(self.max_price_per_gpu_hour * MICROS)

    @property
    def budget_micros(self) -> int | None:
        return None if self.budget is None else int(self.budget * MICROS)


class RuntimeEnv(StrictModel):
    working_dir: str | None = Field(
        None,
        description="Folder uploaded with the job, relative "
        "to the spec file; it must stay inside the spec's folder.",
    )
    pip: list[str] = Field(default_factory=list, max_length=100)
    env_vars: dict[str, str] = Field(default_factory=dict)

    @field_validator("env_vars")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
                raise ValueError(f"{name!r} is not a valid environment variable name")
            if name.startswith("RAY_") or name.startswith("COMPUTESWARM_"):
                raise ValueError(f"{name} is reserved (RAY_*, COMPUTESWARM_* are set by the swarm)")
        return value


class JobBase(StrictModel):
    """What every kind has; each kind adds its own fields and the facts below."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="A short name.")
    resources: Resources = Field(default_factory=Resources)
    pricing: Pricing
    min_reliability: float = Field(
        0.0, ge=0, le=1, description="Only sellers at least this reliable."
    )
    max_duration: float = Field(3600, description="Seconds, or 30m / 2h / 1d.")
    queue: bool = Field(True, description="Wait for supply (true) or fail fast (false).")
    volumes: dict[str, VolumeMount] = Field(
        default_factory=dict, description="Your volumes, by mount path on every node."
    )

    @field_validator("volumes")
    @classmethod
    def _mounts(cls, value: dict[str, VolumeMount]) -> dict[str, VolumeMount]:
        return check_mounts(value)

    @field_validator("max_duration", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        if isinstance(value, int | float):
            seconds = float(value)
        else:
            match = _DURATION.match(str(value).strip())
            if not match:
                raise ValueError(f"{value!r} is not a duration like 90, 30m, 2h, 1d")
            seconds = float(match[1]) * _UNITS[match[2]]
        if not 1 <= seconds <= 30 * 86400:
            raise ValueError("max_duration must be between 1 s and 30 days")
        return seconds

    def check_inputs(self, working_dir: Path) -> None:
        """The files the spec names exist in the working_dir (before anything is leased)."""

    def registered_refs(self) -> list[str]:
        """The registered model versions it starts from: they must exist, and be the buyer's."""
        return []

    def stage_split(self, working_dir: Path, sellers: list[tuple[str, float]]) -> list[dict] | None:
        """Which layers each (seller, VRAM GB) would hold, for kinds that split the model."""
        return None

    @property
    def data_file(self) -> str | None:
        """The dataset its weights depend on (its run folder is named after its hash)."""
        return None

    @property
    def escrow_micros(self) -> int:
        """What is held up front: the budget, or the most the job could cost."""
        ceiling = (
            self.pricing.max_price_micros * self.resources.gpus.count * math.ceil(self.max_duration)
            + 3599
        ) // 3600
        budget = self.pricing.budget_micros
        return ceiling if budget is None else min(budget, ceiling)


class LoraSettings(StrictModel):
    rank: int = Field(8, ge=1, le=1024, description="LoRA rank r (> 0).")
    alpha: float = Field(16.0, gt=0, le=4096, description="LoRA scaling alpha.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA path.")
    target_modules: list[str] | None = Field(
        None, min_length=1, description="Modules to adapt; default: the architecture's attention."
    )


class DeepSpeedSettings(StrictModel):
    zero_stage: Literal[2, 3] = Field(2, description="ZeRO stage: 2 (gradients) or 3 (params).")
    micro_batch: int = Field(4, ge=1, le=4096, description="Samples per worker per micro-step.")
    gradient_accumulation: int = Field(
        1, ge=1, le=1024, description="Micro-steps per optimizer step (and per gradient sync)."
    )


class LowBandwidth(StrictModel):
    """Local SGD (DiLoCo-style): each seller trains alone, adapters are averaged every H steps."""

    sync_every: int = Field(8, ge=2, le=10_000, description="Optimizer steps between averages.")


class Training(StrictModel):
    steps: int = Field(100, ge=1, le=1_000_000, description="Optimizer steps in all.")
    epochs: float | None = Field(
        None, gt=0, le=100_000, description="Passes over the training split; overrides steps."
    )
    learning_rate: float = Field(1e-3, gt=0, le=10)
    max_seq_len: int = Field(64, ge=4, le=32768, description="Tokens per sample (padded/cut).")
    eval_fraction: float = Field(0.1, gt=0, lt=1, description="Share of the data held out.")
    eval_every: int = Field(25, ge=1, le=1_000_000, description="Steps between evaluations.")
    checkpoint_every: int = Field(25, ge=1, le=1_000_000, description="Steps between checkpoints.")
    seed: int = Field(0, ge=0, le=2**31 - 1)


MODEL_REF = r"^[A-Za-z0-9_./~-][A-Za-z0-9_./~:-]{0,511}$"
DATA_REF = r"^[A-Za-z0-9_./-][A-Za-z0-9_./@+=-]{0,511}$"  # a file, or [OWNER/]NAME@N[/FILE]
VERSION_REF = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}(@\d{1,9})?$"


class PipelineSettings(StrictModel):
    stages: int | None = Field(None, ge=2, le=64, description="Default: one per node.")
    micro_batches: int = Field(4, ge=1, le=1024, description="Micro-batches per step.")
    batch_size: int = Field(8, ge=1, le=65536, description="Samples per optimizer step.")
    schedule: Literal["gpipe", "1f1b"] = "gpipe"

    @model_validator(mode="after")
    def _divides(self) -> PipelineSettings:
        if self.batch_size % self.micro_batches:
            raise ValueError(
                f"batch_size {self.batch_size} is not a multiple of micro_batches "
                f"{self.micro_batches}"
            )
        return self


class SweepScheduler(StrictModel):
    type: Literal["asha", "fifo"] = Field("asha", description="asha stops weak trials early.")
    grace_period: int = Field(1, ge=1, le=10_000, description="Reports before ASHA may stop.")
    reduction_factor: int = Field(2, ge=2, le=100, description="ASHA keeps 1/this per rung.")


class Replicas(StrictModel):
    min: int = Field(1, ge=1, le=64, description="Replicas always up.")
    max: int = Field(1, ge=1, le=64, description="Replicas under load (each takes a GPU).")

    @model_validator(mode="after")
    def _order(self) -> Replicas:
        if self.min > self.max:
            raise ValueError(f"replicas.min ({self.min}) > replicas.max ({self.max})")
        return self


class RateLimits(StrictModel):
    requests_per_second: float = Field(10, gt=0, le=100_000, description="Per API key.")
    tokens_per_second: float = Field(2000, gt=0, le=10_000_000, description="Per API key.")


class TrialLora(StrictModel):
    """What each trial of a LoRA sweep trains: one adapter on one leased GPU."""

    model: str = Field(pattern=MODEL_REF, description="A model folder in the working_dir.")
    dataset: str = Field(
        pattern=DATA_REF, description="JSONL file in the working_dir, or NAME@N[/FILE]."
    )
    training: Training = Field(default_factory=Training)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    micro_batch: int = Field(8, ge=1, le=4096, description="Samples per step.")

    @field_validator("dataset")
    @classmethod
    def _relative_dataset(cls, value: str) -> str:
        return inputs.relative_dataset(value)
