"""What a job pinned at submit, as the coordinator's kinds read it: the hash of the file
it trains on (its run folder's name and its model version's `data_hash`), and the version
a model version records."""

from __future__ import annotations

from pathlib import Path

from computeswarm.cluster.store.models import Job
from computeswarm.data.refs import is_dataset_ref, parse_ref
from computeswarm.jobs.train.runs import file_hash


def data_hash(job: Job, dataset: str | None) -> str:
    """The sha256 of the file: a pinned version's from its manifest (no read), a
    working_dir file's by reading it."""
    if dataset is None:
        return "no-data"
    if is_dataset_ref(dataset):
        pin = (job.datasets or {}).get(parse_ref(dataset).version_key)
        return pin["sha256"] if pin else ""
    path = Path(job.upload_path or "") / dataset
    return file_hash(path) if job.upload_path and path.is_file() else ""


def dataset_of(job: Job, dataset: str | None) -> str | None:
    """`NAME@N/FILE (id 1a2b3c4d5e6f)` for a pinned version; None for a working_dir file."""
    if dataset is None or not is_dataset_ref(dataset):
        return None
    pin = (job.datasets or {}).get(parse_ref(dataset).version_key)
    return f"{dataset} (id {pin['id'][:12]})" if pin else dataset
