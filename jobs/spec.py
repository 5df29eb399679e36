"""Buyer job specs: one strict model per `kind`, a discriminated union, one parser.

    kind: script
    name: hello-swarm
    entrypoint: python main.py
    runtime_env: {working_dir: ., pip: [numpy], env_vars: {STEPS: "10"}}
    resources: {gpus: "RTX4090:24GB:2", nodes: 2}
    pricing: {max_price_per_gpu_hour: 0.60, budget: 2.00}
    min_reliability: 0.9
    max_duration: 30m

`parse_job_spec` turns pydantic's errors into one `SpecError` that names each problem and,
for unknown keys, the nearest valid key. Later kinds (`lora`, `pipeline`, `sweep`, `serve`)
reuse `Resources`, `Pricing` and `RuntimeEnv`.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, TypeAdapter, ValidationError, field_validator, model_validator

from computeswarm.jobs.errors import SpecError
from computeswarm.strict import StrictModel, explain

MICROS = 1_000_000
FUTURE_KINDS = ("lora", "pipeline", "sweep", "serve")
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


class _JobBase(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="A short name.")
    resources: Resources = Field(default_factory=Resources)
    pricing: Pricing
    min_reliability: float = Field(
        0.0, ge=0, le=1, description="Only sellers at least this reliable."
    )
    max_duration: float = Field(3600, description="Seconds, or 30m / 2h / 1d.")
    queue: bool = Field(True, description="Wait for supply (true) or fail fast (false).")

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

    @property
    def escrow_micros(self) -> int:
        """What is held up front: the budget, or the most the job could cost."""
        ceiling = (
            self.pricing.max_price_micros * self.resources.gpus.count * math.ceil(self.max_duration)
            + 3599
        ) // 3600
        budget = self.pricing.budget_micros
        return ceiling if budget is None else min(budget, ceiling)


class ScriptJob(_JobBase):
    """A Ray job: an entrypoint command run on a leased seller, with its runtime env."""

    kind: Literal["script"]
    entrypoint: str = Field(min_length=1, max_length=4096, description="Command to run.")
    runtime_env: RuntimeEnv = Field(default_factory=RuntimeEnv)


JobSpec = Annotated[ScriptJob, Field(discriminator="kind")]
_ADAPTER = TypeAdapter(JobSpec)


def parse_job_spec(data: str | dict, *, source: str = "job spec") -> ScriptJob:
    """A validated spec from YAML text or a dict; SpecError lists every problem."""
    if isinstance(data, str):
        try:
            data = yaml.safe_load(data)
        except yaml.YAMLError as e:
            raise SpecError(f"{source}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping with a `kind` key")
    kind = data.get("kind")
    if kind in FUTURE_KINDS:
        raise SpecError(
            f"{source}: kind {kind!r} is not available yet on this swarm; supported: script"
        )
    if kind is None:
        raise SpecError(f"{source}: missing `kind` (supported: script)")
    if kind != "script":
        raise SpecError(f"{source}: unknown kind {kind!r} (supported: script)")
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as e:
        problems = "; ".join(explain(ScriptJob, _strip_tag(err)) for err in e.errors())
        raise SpecError(f"{source}: {problems}") from None


def load_job_spec(path: Path) -> tuple[ScriptJob, Path | None]:
    """Parse a spec file; return it with its working_dir resolved safely, if any."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise SpecError(f"cannot read job spec {path}: {e.strerror}") from None
    spec = parse_job_spec(text, source=str(path))
    return spec, resolve_working_dir(spec, Path(path).resolve().parent)


def resolve_working_dir(spec: ScriptJob, base: Path) -> Path | None:
    """The working_dir as a real folder inside `base`; refuses `..`, absolute paths out of
    `base`, and symlinks that lead out of it."""
    raw = spec.runtime_env.working_dir
    if raw is None:
        return None
    base = base.resolve()
    target = (base / raw).resolve()
    if target != base and base not in target.parents:
        raise SpecError(
            f"runtime_env.working_dir {raw!r} leads outside the spec's folder "
            f"{base}; put the code next to the spec"
        )
    if not target.is_dir():
        raise SpecError(f"runtime_env.working_dir {raw!r} is not a folder ({target})")
    for path in target.rglob("*"):
        if path.is_symlink() and base not in path.resolve().parents:
            raise SpecError(f"{path} is a symlink out of the spec's folder; copy the file in")
    return target


def _strip_tag(err: dict) -> dict:
    # The discriminated union adds the tag ('script') to each location; drop it.
    loc = tuple(err["loc"])
    return {**err, "loc": loc[1:] if loc and loc[0] == "script" else loc}
