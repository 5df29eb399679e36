"""Job routes: submit, list, view, logs, cancel, and a sweep's leaderboard.

Job views carry only their kind's section (`training`, `sweep`, `serve`): the routes leave
out what the service did not set.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from computeswarm.cluster.accounts.roles import Caller
from computeswarm.cluster.api import deps
from computeswarm.cluster.api.schemas import JobSubmit
from computeswarm.cluster.api.views import JobView, LogChunk, SweepBoard
from computeswarm.cluster.services.jobs import JobsService

router = APIRouter(tags=["jobs"])
Jobs = Depends(deps.jobs)
Who = Depends(deps.caller)


@router.post("/v1/jobs", response_model=JobView, response_model_exclude_unset=True)
def submit_job(body: JobSubmit, who: Caller = Who, jobs: JobsService = Jobs) -> dict:
    """Submit a job spec (and its working_dir as a base64 zip); it waits for the market."""
    return jobs.submit(who, body.spec, body.upload())


@router.get("/v1/jobs", response_model=list[JobView], response_model_exclude_unset=True)
def list_jobs(who: Caller = Who, jobs: JobsService = Jobs) -> list[dict]:
    """Your jobs (admins: everyone's), newest first."""
    return jobs.list(who)


@router.get("/v1/jobs/{job_id}", response_model=JobView, response_model_exclude_unset=True)
def get_job(job_id: str, who: Caller = Who, jobs: JobsService = Jobs) -> dict:
    return jobs.view(who, job_id)


@router.get("/v1/jobs/{job_id}/logs", response_model=LogChunk)
def job_logs(job_id: str, offset: int = 0, who: Caller = Who, jobs: JobsService = Jobs) -> dict:
    """The driver's output from `offset` on."""
    return jobs.logs(who, job_id, max(0, offset))


@router.get("/v1/sweeps/{job_id}", response_model=SweepBoard)
def get_sweep(job_id: str, who: Caller = Who, jobs: JobsService = Jobs) -> dict:
    return jobs.sweep(who, job_id)


@router.post("/v1/jobs/{job_id}/cancel", response_model=JobView, response_model_exclude_unset=True)
def cancel_job(job_id: str, who: Caller = Who, jobs: JobsService = Jobs) -> dict:
    """Cancel a job: its lease is released and the buyer pays only for the time used."""
    return jobs.cancel(who, job_id)
