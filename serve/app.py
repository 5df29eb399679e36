"""The Ray Serve application of a serve job: an OpenAI-compatible API over LoRA adapters.

One deployment, `InferenceServer`, with a FastAPI ingress. Each replica loads the base model
once and attaches adapters on demand through `@serve.multiplexed` (least recently used
ones are released when a replica holds more than `max_models_per_replica`). The request's
`model` picks the adapter; the base model is served under its own name (the basename of
the spec's `model`). Clients that also send the header `serve_multiplexed_model_id: <model>`
are routed to a replica that already holds that adapter.

Replicas ask for one GPU each (`num_gpus: 1`): sellers expose their GPU as a Ray GPU
resource, even simulated sellers whose "GPU" is a CPU. CUDA is used only where
`torch.cuda.is_available()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from computeswarm.jobs import artifacts, contract
from computeswarm.jobs.errors import SpecError
from computeswarm.jobs.spec import ServeJob
from computeswarm.serve import openai

log = logging.getLogger(__name__)

MAX_MODELS_PER_REPLICA = 8  # adapters (and the base) one replica keeps attached at most
# The spec model's own defaults, for a spec given as a dict (tests, local runs).
DEFAULTS = ServeJob.model_construct(kind="serve").model_dump(
    include={"replicas", "max_concurrent_requests", "max_tokens"}
)
# Autoscaling within the lease: its GPUs are paid for whether a replica runs on them or
# not, so a replica is added within seconds of load (Serve's default waits 30 s, on
# metrics pushed every 10 s); it is removed after Serve's default 10 minutes without it.
AUTOSCALING = {"metrics_interval_s": 1.0, "look_back_period_s": 5.0, "upscale_delay_s": 2.0}


@dataclass(frozen=True)
class ModelSource:
    """Where a model folder is: absolute on the driver's node, and relative to the job's
    working dir when it lies inside it (Ray ships the working dir to every node, so a
    replica elsewhere finds it there)."""

    absolute: str
    relative: str | None = None
    stored: str | None = None  # a registered version in the store (`store:<prefix>`)

    def local(self) -> str:
        """The folder on this node: fetched from the store for a registered version (each
        replica's node has its own disk), else the working-dir copy if there is one, else
        absolute."""
        if self.stored:
            return str(artifacts.local_folder(self.stored))
        if self.relative and Path(self.relative).exists():
            return str(Path(self.relative).resolve())
        return self.absolute


@dataclass(frozen=True)
class ServeOptions:
    """A serve spec, checked and resolved: what the deployment and the driver need."""

    name: str
    base_name: str
    base: ModelSource
    adapters: dict[str, ModelSource] = field(default_factory=dict)
    min_replicas: int = 1
    max_replicas: int = 1
    max_concurrent_requests: int = 8
    max_tokens: int = 128

    @property
    def models(self) -> list[str]:
        return [self.base_name, *self.adapters]

    @property
    def target_ongoing_requests(self) -> int:
        # A replica generates one request at a time (see generate.LoraEngine), so more
        # than a couple waiting means another replica would cut latency.
        return max(1, self.max_concurrent_requests // 2)

    @property
    def max_models_per_replica(self) -> int:
        return min(len(self.models), MAX_MODELS_PER_REPLICA)

    def replica_config(self) -> dict:
        """Plain data for `InferenceServer.__init__` (sent to every replica)."""
        return {
            "base_name": self.base_name,
            "base": asdict(self.base),
            "adapters": {name: asdict(source) for name, source in self.adapters.items()},
            "max_tokens": self.max_tokens,
            "max_models_per_replica": self.max_models_per_replica,
        }


def serve_options(spec: ServeJob | dict, adapters: dict[str, str], base_dir: Path) -> ServeOptions:
    """Check a serve spec (the driver's validated `ServeJob`, or its `model_dump`) against
    the files it names, and resolve its paths.

    `adapters` maps served names to the coordinator's resolution of the spec's `adapters`:
    a folder relative to `base_dir` (the working dir) or a registered version in the
    store (`store:<prefix>`, fetched onto each replica's node); a spec adapter missing
    there that is a path (`./x`, `/x`) is taken relative to `base_dir`. Raises `SpecError`
    naming every problem.
    """
    if isinstance(spec, ServeJob):
        spec = spec.model_dump(mode="json")
    problems: list[str] = []
    base_dir = Path(base_dir).resolve()
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        problems.append("name: missing (a short name for the application)")
        name = "serve"
    model = spec.get("model")
    base = None
    base_name = ""
    if not isinstance(model, str) or not model:
        problems.append("model: missing (a base model folder in the working dir)")
    else:
        base = _source(model, base_dir)
        base_name = Path(model.rstrip("/")).name
        if not Path(base.absolute).is_dir():
            problems.append(
                f"model: {model!r} is not a folder (looked in {base.absolute}); "
                "give a save_pretrained folder inside the working dir or an absolute path"
            )
    resolved: dict[str, ModelSource] = {}
    wanted = dict(spec.get("adapters") or {})
    for served, ref in {**wanted, **adapters}.items():
        if served == base_name:
            problems.append(f"adapters.{served}: the base model is already served as {served!r}")
            continue
        if served in adapters and artifacts.is_stored(adapters[served]):
            try:  # fetched here too: the driver checks it before any replica starts
                path = artifacts.local_folder(adapters[served])
            except (OSError, KeyError, ValueError) as exc:
                problems.append(f"adapters.{served}: cannot fetch {ref!r} from the store: {exc}")
                continue
            source = ModelSource(str(path), None, stored=adapters[served])
        elif served in adapters:
            path = Path(adapters[served])
            source = _source(str(path), base_dir)
        elif isinstance(ref, str) and (ref.startswith((".", "/"))):
            source = _source(ref, base_dir)
        else:
            problems.append(
                f"adapters.{served}: {ref!r} was not resolved to a folder "
                f"(registered versions are resolved by the coordinator in {contract.ADAPTERS})"
            )
            continue
        if not (Path(source.absolute) / "adapter_config.json").is_file():
            problems.append(
                f"adapters.{served}: no adapter at {source.absolute} "
                "(a PEFT save_pretrained folder with adapter_config.json)"
            )
            continue
        resolved[served] = source
    replicas = spec.get("replicas") or DEFAULTS["replicas"]
    low, high = replicas.get("min", 1), replicas.get("max", replicas.get("min", 1))
    if not (isinstance(low, int) and isinstance(high, int) and 0 <= low <= high and high >= 1):
        problems.append(f"replicas: {replicas!r} needs 0 <= min <= max and max >= 1")
        low, high = 1, 1
    concurrent = spec.get("max_concurrent_requests") or DEFAULTS["max_concurrent_requests"]
    max_tokens = spec.get("max_tokens") or DEFAULTS["max_tokens"]
    for key, value in (("max_concurrent_requests", concurrent), ("max_tokens", max_tokens)):
        if not isinstance(value, int) or value < 1:
            problems.append(f"{key}: {value!r} must be a positive integer")
    if problems:
        raise SpecError("serve spec: " + "; ".join(problems))
    return ServeOptions(
        name=name,
        base_name=base_name,
        base=base,
        adapters=resolved,
        min_replicas=low,
        max_replicas=high,
        max_concurrent_requests=concurrent,
        max_tokens=max_tokens,
    )


def bind(options: ServeOptions):
    return InferenceServer.options(
        name="InferenceServer",
        max_ongoing_requests=options.max_concurrent_requests,
        autoscaling_config={
            "min_replicas": options.min_replicas,
            "initial_replicas": max(options.min_replicas, 1),
            "max_replicas": options.max_replicas,
            "target_ongoing_requests": options.target_ongoing_requests,
            **AUTOSCALING,
        },
        ray_actor_options={"num_gpus": 1, "num_cpus": 1},
    ).bind(options.replica_config())


def _source(path: str, base_dir: Path) -> ModelSource:
    given = Path(path)
    absolute = given if given.is_absolute() else (base_dir / given)
    absolute = absolute.resolve()
    try:
        relative = str(absolute.relative_to(base_dir))
    except ValueError:
        relative = None
    return ModelSource(str(absolute), relative)


# -- the deployment ----------------------------------------------------------------------

api = FastAPI(title="ComputeSwarm inference", description="OpenAI-compatible completions.")


class OpenAIError(Exception):
    def __init__(self, status: int, body: dict):
        self.status = status
        self.body = body


@api.exception_handler(OpenAIError)
async def _openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
    return JSONResponse(exc.body, status_code=exc.status)


@api.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse(openai.validation_error(list(exc.errors())), status_code=400)


async def sse_events(engine, model: str, prompt: str, params, request_id: str, chat: bool):
    """SSE events: one per text piece, then one with finish_reason and usage, then
    [DONE]. Generation runs in a thread; pieces cross to the event loop by a queue."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    cancel = threading.Event()

    def on_text(piece: str) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, piece)

    task = asyncio.ensure_future(
        asyncio.to_thread(engine.generate, model, prompt, params, on_text, cancel)
    )
    # Runs on the loop after every on_text callback already queued: None ends the stream.
    task.add_done_callback(lambda _: queue.put_nowait(None))

    def chunk(text: str | None = None, **extra) -> str:
        if chat:
            delta = {} if text is None else {"content": text}
            return openai.sse(openai.chat_chunk(id=request_id, model=model, delta=delta, **extra))
        return openai.sse(
            openai.completion_chunk(id=request_id, model=model, text=text or "", **extra)
        )

    try:
        if chat:
            yield openai.sse(
                openai.chat_chunk(
                    id=request_id, model=model, delta={"role": "assistant", "content": ""}
                )
            )
        while (piece := await queue.get()) is not None:
            yield chunk(piece)
        try:
            result = task.result()
        except Exception as exc:  # the stream has started: report in-band, like OpenAI
            log.exception("generation failed")
            yield openai.sse(openai.error_body(str(exc), type="server_error"))
            yield openai.SSE_DONE
            return
        usage = openai.usage(result.prompt_tokens, result.completion_tokens, result.seconds)
        yield chunk(None, finish_reason=result.finish_reason, usage=usage)
        yield openai.SSE_DONE
    finally:
        cancel.set()  # the client went away (or we are done): stop generating
        if not task.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(task)


def multiplexed_loader(engine, max_models: int):
    """Serve's multiplexed loader for one replica's engine: attaches an adapter (in a
    thread: reading it blocks) and returns what Serve caches for it.

    A plain function, not a bound method: Serve keeps its cache as an attribute of the
    function, which a bound method cannot hold.
    """

    async def load_model(name: str) -> _AttachedModel:
        await asyncio.to_thread(engine.load, name)
        return _AttachedModel(engine, name)

    return serve.multiplexed(max_num_models_per_replica=max_models)(load_model)


class _AttachedModel:
    """What the multiplexed loader caches: releasing it detaches the adapter."""

    def __init__(self, engine, name: str):
        self.engine = engine
        self.name = name

    def __del__(self) -> None:
        # Serve calls this on LRU unload; release() only marks, so a second call (from
        # garbage collection) or a call mid-generation is harmless.
        self.engine.release(self.name)


# Last in the module: Serve pickles the class when it is decorated, by value, with the
# module globals that exist at that moment; everything it uses must be defined above.
@serve.deployment
@serve.ingress(api)
class InferenceServer:
    """One replica: the base model with its adapters, answering the OpenAI routes."""

    def __init__(self, config: dict):
        from computeswarm.serve.generate import LoraEngine

        base = ModelSource(**config["base"])
        adapters = {name: ModelSource(**src).local() for name, src in config["adapters"].items()}
        self.engine = LoraEngine(base.local(), config["base_name"], adapters)
        self.max_tokens = config["max_tokens"]
        self.created = int(time.time())
        self.load_model = multiplexed_loader(self.engine, config["max_models_per_replica"])

    @api.get("/v1/models")
    async def list_models(self) -> dict:
        adapters = [n for n in self.engine.names if n != self.engine.base_name]
        return openai.models_list(self.engine.base_name, adapters, self.created)

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"ok": True}

    @api.post("/v1/completions")
    async def completions(self, body: openai.CompletionRequest):
        return await self._respond(body, body.prompt, chat=False)

    @api.post("/v1/chat/completions")
    async def chat_completions(self, body: openai.ChatCompletionRequest):
        prompt = openai.chat_prompt(body.messages, self.engine.tokenizer)
        return await self._respond(body, prompt, chat=True)

    async def _respond(self, body: Any, prompt: str, *, chat: bool):
        from computeswarm.serve.generate import PromptTooLong, SamplingParams

        if body.model not in self.engine.names:
            raise OpenAIError(404, openai.model_not_found(body.model, self.engine.names))
        await self.load_model(body.model)
        params = SamplingParams(
            max_tokens=body.token_budget(self.max_tokens),
            temperature=body.temperature,
            top_p=body.top_p,
            stop=body.stop_strings,
            seed=body.seed,
        )
        try:
            self.engine.check_prompt(prompt)
        except PromptTooLong as exc:
            raise OpenAIError(
                400, openai.error_body(str(exc), code="context_length_exceeded", param="prompt")
            ) from exc
        request_id = openai.new_id("chatcmpl" if chat else "cmpl")
        if body.stream:
            events = sse_events(self.engine, body.model, prompt, params, request_id, chat)
            return StreamingResponse(events, media_type="text/event-stream")
        result = await asyncio.to_thread(self.engine.generate, body.model, prompt, params)
        usage = openai.usage(result.prompt_tokens, result.completion_tokens, result.seconds)
        reply = openai.chat_body if chat else openai.completion_body
        return reply(
            id=request_id,
            model=body.model,
            text=result.text,
            finish_reason=result.finish_reason,
            usage=usage,
        )
