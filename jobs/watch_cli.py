"""Live views: `computeswarm jobs watch [JOB]` for buyers, `computeswarm top` for
operators (the core is `jobs/watch.py`)."""

from __future__ import annotations

import time

import typer

from computeswarm.cluster.cli.options import API_KEY, COORDINATOR
from computeswarm.cluster.cli.options import buyer_client as _client
from computeswarm.jobs.cli import jobs_app


@jobs_app.command("watch")
def jobs_watch(
    job_id: str | None = typer.Argument(None, help="One job; default: all your jobs."),
    interval: float = typer.Option(1.0, min=0.2, help="Seconds between refreshes."),
    coordinator: str | None = COORDINATOR,
    api_key: str | None = API_KEY,
) -> None:
    """A live view: states, sellers, steps and loss (trials, requests), spend and its rate
    against the escrow. `q` or Ctrl-C quits; plain lines when not a terminal."""
    from computeswarm.cluster.api.views import JobView
    from computeswarm.jobs import watch

    client = _client(coordinator, api_key)
    views: list = []

    def read():
        answer = [client.job(job_id)] if job_id else client.jobs()
        views[:] = [JobView.model_validate(j) for j in answer]
        return watch.job_rows(views, time.time()), None

    def finished() -> bool:  # one job: stop once it has ended and its bill is in
        return bool(job_id and views and views[0].ended_at and views[0].cost is not None)

    watch.live(read, f"jobs {job_id or ''}".strip(), watch.JOB_COLUMNS, interval, finished)


def top(
    interval: float = typer.Option(1.0, min=0.2, help="Seconds between refreshes."),
    coordinator: str | None = COORDINATOR,
    api_key: str | None = API_KEY,
) -> None:
    """Operators: every job and seller, live (`q` or Ctrl-C quits)."""
    from computeswarm.cluster.api.views import JobView
    from computeswarm.cluster.cli.options import operator_client
    from computeswarm.jobs import watch

    client = operator_client(coordinator, api_key)

    def read():
        now = time.time()
        jobs = [JobView.model_validate(j) for j in client.jobs()]
        unfinished = [j for j in jobs if j.ended_at is None]
        return watch.job_rows(unfinished, now), watch.seller_rows(client.sellers(), now)

    watch.live(read, "jobs not ended", watch.JOB_COLUMNS, interval)
