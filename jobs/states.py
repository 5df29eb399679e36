"""Job lifecycle: pending -> scheduled -> running -> succeeded | failed | cancelled."""

from __future__ import annotations

import enum


class JobState(enum.StrEnum):
    PENDING = "pending"  # waiting for the market (queued)
    SCHEDULED = "scheduled"  # a lease is being formed for it
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.SCHEDULED, JobState.FAILED, JobState.CANCELLED}),
    JobState.SCHEDULED: frozenset(
        {JobState.RUNNING, JobState.PENDING, JobState.FAILED, JobState.CANCELLED}
    ),
    # Back to pending: a requeued job (a sweep whose lease ended under it) resumes later.
    JobState.RUNNING: frozenset(
        {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.PENDING}
    ),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


def job_transition(current: JobState, target: JobState) -> JobState:
    if target not in ALLOWED[current]:
        raise ValueError(f"a {current.value} job cannot become {target.value}")
    return target
