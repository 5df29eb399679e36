"""The buyer's Python SDK, for scripts and notebooks:

    import computeswarm.sdk as cs
    swarm = cs.connect()                      # your profile; or connect(url, api_key)
    print(swarm.quote("lora.yaml").price_per_hour)
    job = swarm.submit("lora.yaml")           # a path, a dict, or a spec model
    for line in job.logs(follow=True): print(line)
    job.wait(timeout=3600); print(job.cost)

Errors are the coordinator's own, typed (`NotFound`, `Forbidden`, `ApiError`, ...), with
its message. Ctrl-C while waiting stops the waiting, never the job.
"""

from computeswarm.cluster.errors import ApiError, Conflict, Forbidden, NotFound, Unauthorized
from computeswarm.sdk.swarm import Job, JobFailed, Swarm, connect

__all__ = [
    "ApiError",
    "Conflict",
    "Forbidden",
    "Job",
    "JobFailed",
    "NotFound",
    "Swarm",
    "Unauthorized",
    "connect",
]
