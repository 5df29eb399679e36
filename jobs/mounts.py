"""A spec's `volumes`: where each of the buyer's volumes appears on every leased node.

    volumes:
      /workspace/data: cache            # read-write: what the job writes is committed back
      /workspace/weights: {name: w, readonly: true}

Mount paths are absolute, plain and not inside the system folders every node shares;
no mount is inside another. Pure: the names are checked against the buyer's volumes at
submit, by the coordinator.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, model_validator

from computeswarm.strict import StrictModel

VOLUME_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
MAX_MOUNTS = 8
# A node's own view: system folders, devices and the lease's scratch home stay as they are.
RESERVED = (
    "/usr",
    "/etc",
    "/opt",
    "/sys",
    "/proc",
    "/dev",
    "/bin",
    "/sbin",
    "/lib",
    "/lib64",
    "/tmp",
)
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


class VolumeMount(StrictModel):
    name: str = Field(pattern=VOLUME_NAME, description="One of your volumes.")
    readonly: bool = Field(False, description="Mount it read-only (nothing is committed).")

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


def check_mounts(mounts: dict[str, VolumeMount]) -> dict[str, VolumeMount]:
    if len(mounts) > MAX_MOUNTS:
        raise ValueError(f"at most {MAX_MOUNTS} volumes per job")
    for path in mounts:
        check_mount_path(path)
    for outer in mounts:
        for inner in mounts:
            if inner.startswith(outer + "/"):
                raise ValueError(f"volume mount {inner} is inside {outer}")
    return mounts


def check_mount_path(path: str) -> str:
    parts = path.split("/")
    if not path.startswith("/") or not all(_SEGMENT.fullmatch(p) for p in parts[1:]):
        raise ValueError(f"volume mount {path!r}: an absolute path of plain segments")
    if any(path == r or path.startswith(r + "/") for r in RESERVED):
        raise ValueError(f"volume mount {path}: {path.split('/')[1]} is the node's own")
    return path
