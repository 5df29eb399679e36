"""`Swarm` (one coordinator, one key) and `Job` (one submitted job): a typed layer over
the same `CoordinatorClient` the CLI uses, returning the API's response models."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from computeswarm.cluster.api.views import JobView, LogChunk, Quote, SweepBoard
from computeswarm.cluster.client import CoordinatorClient
from computeswarm.errors import UserError
from computeswarm.jobs.spec import AnyJob, check_inputs, parse_job_spec, resolve_working_dir
from computeswarm.jobs.states import JobState

MAX_UPLOAD = 16 * 1024 * 1024
SpecLike = str | Path | dict | AnyJob


class JobFailed(UserError):
    """`Job.wait(check=True)` on a job that ended other than succeeded."""

    def __init__(self, view: JobView):
        self.view = view
        super().__init__(f"job {view.id} {view.state}: {view.reason or 'no reason given'}")


def connect(url: str | None = None, api_key: str | None = None) -> Swarm:
    """A swarm from `url` and `api_key`, or your profile / COMPUTESWARM_* environment
    (`computeswarm up --local` writes the profile)."""
    import os

    from computeswarm.profile import resolve

    url, key = resolve(
        url or os.environ.get("COMPUTESWARM_COORDINATOR"),
        api_key or os.environ.get("COMPUTESWARM_API_KEY"),
        role="buyer",
    )
    if not key:
        raise UserError("no API key: pass api_key=, set COMPUTESWARM_API_KEY, or run `up --local`")
    return Swarm(CoordinatorClient(url, key, timeout=60), key)


class Swarm:
    def __init__(self, client: CoordinatorClient, api_key: str):
        self.client, self.api_key = client, api_key
        self.models = Models(client)
        self.sweeps = Sweeps(client)

    @property
    def url(self) -> str:
        return self.client.url

    def submit(
        self, spec: SpecLike, working_dir: str | Path | None = None, progress: bool = True
    ) -> Job:
        """Submit a spec (a YAML path, a dict or a spec model); its working_dir (relative
        to the YAML file, or to `working_dir` / the current folder) is uploaded, with a
        progress bar unless `progress=False`."""
        from computeswarm.jobs.upload import pack_working_dir

        parsed, folder = load(spec, working_dir)
        upload = pack_working_dir(folder, MAX_UPLOAD) if folder else None
        body = parsed.model_dump(mode="json")
        if upload is None or not progress:
            return Job(self, self.client.submit_job(body, upload)["id"])
        from tqdm import tqdm  # comes with Ray; text, so it shows in a notebook without widgets

        with tqdm(total=None, unit="B", unit_scale=True, desc="uploading working_dir") as bar:

            def sent(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            return Job(self, self.client.submit_job(body, upload, sent)["id"])

    def quote(self, spec: SpecLike, explain: bool = False) -> Quote:
        parsed, _ = load(spec, None, upload=False)
        return Quote.model_validate(self.client.quote(parsed.model_dump(mode="json"), explain))

    def jobs(self) -> list[Job]:
        return [Job(self, j["id"]) for j in self.client.jobs()]

    def job(self, job_id: str) -> Job:
        self.client.job(job_id)  # NotFound now, not later
        return Job(self, job_id)


class Job:
    def __init__(self, swarm: Swarm, job_id: str):
        self.swarm, self.id = swarm, job_id

    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    def status(self) -> JobView:
        return JobView.model_validate(self.swarm.client.job(self.id))

    @property
    def state(self) -> str:
        return self.status().state

    @property
    def cost(self) -> str | None:
        """What its leases cost, once settled (None before)."""
        return self.status().cost

    def logs(self, follow: bool = False, poll_s: float = 1.0) -> Iterator[str]:
        """Its log, line by line; with `follow`, until the job ends and its log is saved."""
        offset, partial = 0, ""
        while True:
            chunk = LogChunk.model_validate(self.swarm.client.job_logs(self.id, offset))
            offset = chunk.offset
            *lines, partial = (partial + chunk.text).split("\n")
            yield from lines
            if chunk.done or not follow:
                if partial:
                    yield partial
                return
            time.sleep(poll_s)

    def wait(self, timeout: float | None = None, poll_s: float = 1.0, check: bool = False):
        """Until it ends (and its bill is in); the final view. Ctrl-C stops waiting, not
        the job; `timeout` raises TimeoutError; `check` raises JobFailed unless it
        succeeded."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            view = self.status()
            if JobState(view.state).is_terminal and (view.cost is not None or not view.lease):
                if check and view.state != JobState.SUCCEEDED.value:
                    raise JobFailed(view)
                return view
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} still {view.state} after {timeout:g} s")
            time.sleep(poll_s)

    async def wait_async(self, timeout: float | None = None, poll_s: float = 1.0, check=False):
        """`wait` without blocking the notebook's event loop."""
        return await asyncio.to_thread(self.wait, timeout, poll_s, check)

    def cancel(self) -> JobView:
        return JobView.model_validate(self.swarm.client.cancel_job(self.id))

    def dashboard(self) -> str:
        """A one-use link (a minute) to the Ray dashboard of the job's running lease."""
        return self.swarm.client.dashboard_link(self.id)

    def openai(self):
        """An `openai.OpenAI` client for a serve job, through the coordinator's gateway."""
        try:
            from openai import OpenAI
        except ImportError:
            raise UserError("pip install openai (or computeswarm[sdk])") from None
        view = self.status()
        if view.kind != "serve":
            raise UserError(f"job {self.id} is a {view.kind} job, not serve")
        base = f"{self.swarm.url}/v1/serve/{self.id}/v1"
        return OpenAI(base_url=base, api_key=self.swarm.api_key)


class Models:
    def __init__(self, client: CoordinatorClient):
        self.client = client

    def list(self) -> list[dict]:
        return self.client.models()

    def download(self, ref: str, to: str | Path) -> Path:
        """`NAME@N` into the empty (or new) folder `to`."""
        name, _, version = ref.partition("@")
        return self.client.download_model(name, version or "latest", Path(to))


class Sweeps:
    def __init__(self, client: CoordinatorClient):
        self.client = client

    def show(self, job: Job | str) -> SweepTable:
        board = SweepBoard.model_validate(self.client.sweep(getattr(job, "id", job)))
        return SweepTable(board)


class SweepTable:
    """A sweep's leaderboard: `.board` (the API's model), `.records()` (one dict per
    trial, params flattened), `.to_pandas()`; shows as a table in a notebook."""

    def __init__(self, board: SweepBoard):
        self.board = board

    def records(self) -> list[dict[str, Any]]:
        return [
            {
                "trial_id": t.trial_id,
                "state": t.state,
                self.board.metric: t.metric,
                "iterations": t.iterations,
                "cost_micros": t.cost_micros,
                **{f"params.{k}": v for k, v in t.params.items()},
            }
            for t in self.board.trials
        ]

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame.from_records(self.records())

    def _repr_html_(self) -> str:
        return self.to_pandas().to_html(index=False)


def load(spec: SpecLike, working_dir: str | Path | None, upload: bool = True):
    """(the spec as its model, the working_dir folder to upload or None). A quote
    (`upload=False`) reads no folder."""
    from computeswarm.jobs.spec import load_job_spec

    if isinstance(spec, str | Path):
        path = Path(spec)
        if path.suffix in (".yaml", ".yml", ".json") or path.is_file():
            parsed, folder = load_job_spec(path)
            return parsed, folder if upload else None
        spec = yaml.safe_load(str(spec))  # YAML text
    parsed = spec if not isinstance(spec, dict) else parse_job_spec(spec, source="spec")
    if not upload:
        return parsed, None
    folder = resolve_working_dir(parsed, Path(working_dir or Path.cwd()).resolve())
    check_inputs(parsed, folder)
    return parsed, folder
