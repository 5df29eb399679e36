"""Job kinds: one `JobKind` per kind (`base.py`), looked up by name in KINDS."""

from __future__ import annotations

from computeswarm.cluster.kinds.base import JobKind
from computeswarm.cluster.kinds.script import ScriptKind
from computeswarm.cluster.kinds.serve import ServeKind
from computeswarm.cluster.kinds.sweep import SweepKind
from computeswarm.cluster.kinds.training import LoraKind, PipelineKind

KINDS: dict[str, JobKind] = {
    kind.name: kind for kind in (ScriptKind(), LoraKind(), PipelineKind(), SweepKind(), ServeKind())
}


def kind_of(job) -> JobKind:
    """The kind of a stored job (or of a spec)."""
    return KINDS[job.kind]
