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
for unknown keys, the nearest valid key. Training kinds (`lora`, `pipeline`) add a model,
a dataset and training settings; the swarm renders them into a Ray job that runs the
workloads in `jobs/train/`. `sweep` runs many training trials as a Ray Tune experiment
(`tune/`), `serve` runs a base model and its adapters as a Ray Serve app (`serve/`).
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, TypeAdapter, ValidationError, field_validator, model_validator

from computeswarm.jobs import inputs
from computeswarm.jobs.errors import SpecError
from computeswarm.jobs.money import MICROS
from computeswarm.jobs.spec_parts import (
    DATA_REF,
    MODEL_REF,
    VERSION_REF,
    DeepSpeedSettings,
    JobBase,
    LoraSettings,
    LowBandwidth,
    PipelineSettings,
    Pricing,
    RateLimits,
    Replicas,
    RuntimeEnv,
    SweepScheduler,
    Training,
    TrialLora,
)
from computeswarm.strict import StrictModel, explain

KINDS = ("script", "lora", "pipeline", "sweep", "serve")


class ScriptJob(JobBase):
    """A Ray job: an entrypoint command run on a leased seller, with its runtime env."""

    kind: Literal["script"]
    entrypoint: str = Field(min_length=1, max_length=4096, description="Command to run.")
    runtime_env: RuntimeEnv = Field(default_factory=RuntimeEnv)


class _TrainingJob(JobBase):
    model: str = Field(
        pattern=MODEL_REF,
        description="A model folder (relative to the working_dir, or absolute) loaded with "
        "from_pretrained, or a hub id already in the sellers' cache.",
    )
    dataset: str = Field(pattern=DATA_REF, description="JSONL in working_dir, or NAME@N[/FILE].")
    training: Training = Field(default_factory=Training)
    runtime_env: RuntimeEnv = Field(default_factory=RuntimeEnv)

    @field_validator("dataset")
    @classmethod
    def _relative_dataset(cls, value: str) -> str:
        return inputs.relative_dataset(value)

    def check_inputs(self, working_dir: Path) -> None:
        inputs.check_dataset(working_dir, self.dataset)
        inputs.check_model(working_dir, self.model)

    @property
    def data_file(self) -> str | None:
        return self.dataset

    def with_data_file(self, value: str) -> _TrainingJob:
        return self.model_copy(update={"dataset": value})

    @model_validator(mode="after")
    def _needs_working_dir(self) -> _TrainingJob:
        if self.runtime_env.working_dir is None:
            raise ValueError("training jobs need runtime_env.working_dir (it holds the dataset)")
        return self


class LoraJob(_TrainingJob):
    """LoRA fine-tuning on Ray Train + DeepSpeed + PEFT, one worker per leased GPU."""

    kind: Literal["lora"]
    workers: int | None = Field(None, ge=1, le=256, description="Default: one per leased GPU.")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    deepspeed: DeepSpeedSettings = Field(default_factory=DeepSpeedSettings)
    low_bandwidth: LowBandwidth | None = Field(
        None, description="Average adapters every H steps instead of syncing every step."
    )
    init_adapter: str | None = Field(
        None, pattern=VERSION_REF, description="Start from a registered version: NAME[@N]."
    )
    register_as: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="Default: the job name."
    )

    @model_validator(mode="after")
    def _workers_fit(self) -> LoraJob:
        if self.workers is not None and self.workers > self.resources.gpus.count:
            raise ValueError(
                f"workers ({self.workers}) > leased GPUs ({self.resources.gpus.count}): "
                "each worker needs its own GPU"
            )
        return self

    @property
    def num_workers(self) -> int:
        return self.workers or self.resources.gpus.count

    def registered_refs(self) -> list[str]:
        return [self.init_adapter] if self.init_adapter else []

    @property
    def model_name(self) -> str:
        return self.register_as or self.name


class PipelineJob(_TrainingJob):
    """Pipeline-parallel training: the model's layers split into stages, one per seller,
    sized by each seller's GPU memory."""

    kind: Literal["pipeline"]
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)

    def stage_split(self, working_dir: Path, sellers: list[tuple[str, float]]) -> list[dict] | None:
        """One stage per seller, from the model's config.json (None without it)."""
        from computeswarm.jobs.train.pipeline_plan import split_table

        config = Path(working_dir) / self.model / "config.json"
        if not config.exists():
            return None
        return split_table(
            json.loads(config.read_text()),
            sellers,
            seq_len=self.training.max_seq_len,
            batch_size=self.pipeline.batch_size,
            micro_batches=self.pipeline.micro_batches,
            schedule=self.pipeline.schedule,
        )

    @model_validator(mode="before")
    @classmethod
    def _no_zero(cls, data: Any) -> Any:
        if isinstance(data, dict) and "deepspeed" in data:
            stage = (
                (data["deepspeed"] or {}).get("zero_stage")
                if isinstance(data["deepspeed"], dict)
                else None
            )
            raise ValueError(
                f"deepspeed (ZeRO-{stage}) does not combine with pipeline stages: ZeRO-2/3 "
                "shard gradients and parameters across data-parallel copies, and a pipeline "
                "job has one copy split by layers; remove `deepspeed`"
            )
        return data

    @model_validator(mode="after")
    def _stages_fit(self) -> PipelineJob:
        if self.training.epochs is not None:
            raise ValueError("pipeline jobs count training.steps; training.epochs is for lora")
        nodes = self.resources.nodes
        if self.pipeline.stages is not None and self.pipeline.stages > nodes:
            raise ValueError(
                f"pipeline.stages ({self.pipeline.stages}) > resources.nodes ({nodes}): "
                "each stage runs on its own seller"
            )
        if self.pipeline.stages is not None and self.pipeline.stages < nodes:
            raise ValueError(
                f"pipeline.stages ({self.pipeline.stages}) < resources.nodes ({nodes}) "
                "would leave sellers idle; lease as many nodes as stages"
            )
        if nodes < 2:
            raise ValueError("a pipeline needs resources.nodes >= 2 (one stage per seller)")
        if self.resources.gpus_per_node != 1:
            raise ValueError("a pipeline stage uses one GPU: set gpus count = nodes")
        return self

    @property
    def num_stages(self) -> int:
        return self.pipeline.stages or self.resources.nodes


class TrialSpec(StrictModel):
    """A trial: a LoRA fine-tune, or a function trainable (`file.py:function` calling
    `ray.tune.report`) from the working_dir."""

    lora: TrialLora | None = None
    function: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_./-]+\.py:[A-Za-z_][A-Za-z0-9_]*$", description="file.py:func"
    )
    config: dict[str, Any] = Field(
        default_factory=dict, description="Fixed parameters of every function trial."
    )

    @model_validator(mode="after")
    def _one(self) -> TrialSpec:
        if (self.lora is None) == (self.function is None):
            raise ValueError("a trial is exactly one of `lora` or `function`")
        if self.function and ".." in Path(self.function.split(":")[0]).parts:
            raise ValueError(f"{self.function!r}: the function's file is in the working_dir")
        return self


class SweepJob(JobBase):
    """A hyperparameter sweep: trials of a training job over a search space, run as a Ray
    Tune experiment on the lease, launched only while they fit the cost cap."""

    kind: Literal["sweep"]
    trial: TrialSpec
    search_space: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Dotted parameter -> {choice|grid: [..]} or {uniform|loguniform: [lo, hi]}.",
    )
    metric: str = Field("eval_loss", pattern=r"^[A-Za-z0-9_./-]{1,64}$")
    mode: Literal["min", "max"] = "min"
    scheduler: SweepScheduler = Field(default_factory=SweepScheduler)
    num_samples: int = Field(8, ge=1, le=10_000, description="Samples (x grid points).")
    max_concurrent_trials: int | None = Field(
        None, ge=1, le=256, description="Default: one per leased GPU."
    )
    cost_cap: Decimal | None = Field(
        None, gt=0, le=1_000_000, description="Stop launching trials past this spend."
    )
    register_as: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="Default: the job name."
    )
    seed: int = Field(0, ge=0, le=2**31 - 1)
    runtime_env: RuntimeEnv = Field(default_factory=RuntimeEnv)

    @field_validator("cost_cap")
    @classmethod
    def _micros(cls, value: Decimal | None) -> Decimal | None:
        return Pricing._micros(value)

    @model_validator(mode="after")
    def _space_fits_trial(self) -> SweepJob:
        from computeswarm.tune.space import apply, check_space

        if self.runtime_env.working_dir is None:
            raise ValueError("sweeps need runtime_env.working_dir (the trial's model and data)")
        lora = self.trial.lora
        if lora is None:
            check_space(self.search_space)
            return self
        base = lora.model_dump()

        def check_values(params: dict) -> None:
            try:
                TrialLora.model_validate(apply(base, params))
            except ValidationError as e:
                raise ValueError(explain(TrialLora, e.errors()[0])) from None

        check_space(self.search_space, check_values)
        return self

    @property
    def cost_cap_micros(self) -> int | None:
        return None if self.cost_cap is None else int(self.cost_cap * MICROS)

    @property
    def concurrency(self) -> int:
        return self.max_concurrent_trials or self.resources.gpus.count

    def check_inputs(self, working_dir: Path) -> None:
        if self.trial.function:
            file = self.trial.function.split(":")[0]
            if not inputs.inside(working_dir, file).is_file():
                raise SpecError(f"trial function file {file!r} is not in the working_dir")
            return
        inputs.check_dataset(working_dir, self.trial.lora.dataset)
        inputs.check_model(working_dir, self.trial.lora.model)

    @property
    def data_file(self) -> str | None:
        return self.trial.lora.dataset if self.trial.lora else None

    def with_data_file(self, value: str) -> SweepJob:
        lora = self.trial.lora.model_copy(update={"dataset": value})
        return self.model_copy(update={"trial": self.trial.model_copy(update={"lora": lora})})

    @property
    def model_name(self) -> str:
        return self.register_as or self.name


class ServeJob(JobBase):
    """Inference: a base model and LoRA adapters on Ray Serve behind the coordinator's
    OpenAI-compatible gateway, on a long-lived lease."""

    kind: Literal["serve"]
    model: str = Field(pattern=MODEL_REF, description="Base model folder (working_dir or abs).")
    adapters: dict[str, str] = Field(
        default_factory=dict,
        description="Served name -> a registered version NAME[@N] or an adapter folder.",
    )
    replicas: Replicas = Field(default_factory=Replicas)
    max_concurrent_requests: int = Field(8, ge=1, le=1024, description="Per replica.")
    max_tokens: int = Field(128, ge=1, le=32768, description="Most tokens a request may ask.")
    rate_limits: RateLimits = Field(default_factory=RateLimits)
    max_duration: float = Field(86400, description="Seconds, or 30m / 2h / 1d (long-lived).")
    runtime_env: RuntimeEnv = Field(default_factory=RuntimeEnv)

    @field_validator("adapters")
    @classmethod
    def _adapter_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, ref in value.items():
            if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", name):
                raise ValueError(f"adapter name {name!r}: letters, digits, . _ - (max 64)")
            if not (re.match(VERSION_REF, ref) or re.match(MODEL_REF, ref)):
                raise ValueError(f"adapter {name}: {ref!r} is neither NAME[@N] nor a folder")
        return value

    def check_inputs(self, working_dir: Path) -> None:
        inputs.check_model(working_dir, self.model)
        for name, ref in self.adapters.items():
            if inputs.adapter_is_path(ref):
                folder = inputs.inside(working_dir, ref)
                if not (folder / "adapter_config.json").is_file():
                    raise SpecError(
                        f"adapter {name}: {ref!r} is not an adapter folder (adapter_config.json) "
                        "in the working_dir"
                    )

    def registered_refs(self) -> list[str]:
        return [ref for ref in self.adapters.values() if not inputs.adapter_is_path(ref)]

    @model_validator(mode="after")
    def _fits(self) -> ServeJob:
        if self.runtime_env.working_dir is None and not self.model.startswith("/"):
            raise ValueError("serve jobs need runtime_env.working_dir (it holds the model)")
        if self.replicas.max > self.resources.gpus.count:
            raise ValueError(
                f"replicas.max ({self.replicas.max}) > leased GPUs "
                f"({self.resources.gpus.count}): each replica needs its own GPU"
            )
        return self


AnyJob = ScriptJob | LoraJob | PipelineJob | SweepJob | ServeJob
JobSpec = Annotated[AnyJob, Field(discriminator="kind")]
_ADAPTER = TypeAdapter(JobSpec)
_MODELS = {
    "script": ScriptJob,
    "lora": LoraJob,
    "pipeline": PipelineJob,
    "sweep": SweepJob,
    "serve": ServeJob,
}


def parse_job_spec(data: str | dict, *, source: str = "job spec") -> AnyJob:
    """A validated spec from YAML text or a dict; SpecError lists every problem."""
    if isinstance(data, str):
        try:
            data = yaml.safe_load(data)
        except yaml.YAMLError as e:
            raise SpecError(f"{source}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping with a `kind` key")
    kind = data.get("kind")
    supported = ", ".join(KINDS)
    if kind is None:
        raise SpecError(f"{source}: missing `kind` (supported: {supported})")
    if not isinstance(kind, str) or kind not in _MODELS:  # a list or mapping is no kind
        raise SpecError(f"{source}: unknown kind {repr(kind)[:60]} (supported: {supported})")
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as e:
        problems = "; ".join(explain(_MODELS[kind], _strip_tag(err, kind)) for err in e.errors())
        raise SpecError(f"{source}: {problems}") from None


def job_from_record(spec: dict) -> AnyJob:
    """A stored (already validated) spec back as its model."""
    return _MODELS[spec["kind"]].model_validate(spec)


def load_job_spec(path: Path) -> tuple[AnyJob, Path | None]:
    """Parse a spec file; return it with its working_dir resolved safely, if any."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise SpecError(f"cannot read job spec {path}: {e.strerror}") from None
    spec = parse_job_spec(text, source=str(path))
    working_dir = resolve_working_dir(spec, Path(path).resolve().parent)
    check_inputs(spec, working_dir)
    return spec, working_dir


def check_inputs(spec: AnyJob, working_dir: Path | None) -> None:
    """A job's model, dataset, adapters and trainable exist before anything is leased."""
    if working_dir is not None:
        spec.check_inputs(working_dir)


def resolve_working_dir(spec: AnyJob, base: Path) -> Path | None:
    return inputs.resolve_working_dir(spec.runtime_env.working_dir, base)


def _strip_tag(err: dict, kind: str) -> dict:
    # The discriminated union adds the tag (the kind) to each location; drop it.
    loc = tuple(err["loc"])
    return {**err, "loc": loc[1:] if loc and loc[0] == kind else loc}
