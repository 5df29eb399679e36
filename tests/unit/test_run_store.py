"""A run folder from both sides, without a server: the drivers' `RunStore` on a local
folder (the same pyarrow calls as on the store), and the coordinator's `StoredRun` over a
fake bucket, which must never turn a driver's claim into a key outside the run."""

from __future__ import annotations

from pathlib import Path

import pytest

from computeswarm.cluster.objects.client import ObjectMissing, StoredObject
from computeswarm.cluster.objects.runs import StoredRun
from computeswarm.jobs import contract
from computeswarm.jobs.run_store import RunStore, StepsLog


def test_a_run_store_writes_whole_files_appends_lists_and_downloads(tmp_path):
    run = RunStore(str(tmp_path / "runs" / "r1"), in_store=False)
    assert (run.name, run.parent) == ("r1", str(tmp_path / "runs"))
    assert run.read_text("result.json") is None and run.listdir() == []
    run.write_text("step-000010/COMPLETE", "{}")
    run.append_text("events.log", "resumed 10 step-000010\n")
    run.append_text("events.log", "resumed 20 step-000020\n")
    assert run.read_text("events.log").split() == [
        "resumed",
        "10",
        "step-000010",
        "resumed",
        "20",
        "step-000020",
    ]
    assert run.listdir() == ["events.log", "step-000010"]
    assert not list(Path(run.root).rglob("*.partial"))
    copied = run.download("step-000010", tmp_path / "local")
    assert (copied / "COMPLETE").read_text() == "{}"
    again = RunStore.of(run.describe())
    assert again == run


def test_the_run_comes_from_the_coordinators_environment(tmp_path):
    env = {
        contract.RUN_PREFIX: "acct-1/runs/r1/",
        contract.S3_BUCKET: "computeswarm",
        contract.S3_ENDPOINT: "http://10.90.0.1:9900",
    }
    assert RunStore.from_env(env) == RunStore("computeswarm/acct-1/runs/r1", True)
    with pytest.raises(KeyError, match="endpoint"):
        RunStore.from_env({contract.RUN_PREFIX: "acct-1/runs/r1/"})
    assert RunStore.from_env({contract.RUN_DIR: str(tmp_path)}) == RunStore(str(tmp_path), False)


def test_a_restarted_writer_goes_on_after_the_steps_already_recorded(tmp_path):
    run = RunStore(str(tmp_path), in_store=False)
    first = StepsLog(run, every_s=3600)
    first.add("1 0.5 0.1")
    assert run.read_text(contract.STEPS_LOG) is None  # not yet due
    first.add("2 0.4 0.1")
    first.flush()
    second = StepsLog(run, every_s=0)  # the run restarted elsewhere
    second.add("3 0.3 0.1")
    assert [line.split()[0] for line in run.read_text(contract.STEPS_LOG).splitlines()] == [
        "1",
        "2",
        "3",
    ]


class FakeBucket:
    def __init__(self, objects: dict[str, bytes]):
        self.objects = objects

    def get_bytes(self, key: str) -> bytes:
        if key not in self.objects:
            raise ObjectMissing(key)
        return self.objects[key]

    def list(self, prefix: str):
        for key in sorted(self.objects):
            if key.startswith(prefix):
                yield StoredObject(key, len(self.objects[key]))


def test_the_coordinator_fetches_only_what_lies_inside_the_run(tmp_path):
    bucket = FakeBucket(
        {
            "acct-a/runs/r1/result.json": b"{}",
            "acct-a/runs/r1/steps.log.old": b"not steps.log",
            "acct-a/runs/r1/step-000030/adapter/adapter_model.safetensors": b"w",
            "acct-a/runs/r1/step-000030/adapter/../../../../acct-b/x": b"evil",
            "acct-b/runs/r9/step-000001/adapter/adapter_model.safetensors": b"theirs",
        }
    )
    run = StoredRun(bucket, "acct-a/runs/r1/")
    assert run.read_text("result.json") == "{}" and run.read_text("nothing") is None
    assert run.exists("result.json") and not run.exists("steps.log")
    got = run.fetch("step-000030/adapter", tmp_path / "a")
    assert sorted(p.name for p in got.rglob("*") if p.is_file()) == ["adapter_model.safetensors"]
    # A driver's result may name anything: other runs, other accounts, absolute paths.
    for claim in ("../../acct-b/runs/r9/step-000001/adapter", "/etc", "", None, 7, "a/../.."):
        assert run.fetch(claim, tmp_path / "b") is None, claim
    assert run.fetch("step-999999/adapter", tmp_path / "c") is None  # holds nothing
    with pytest.raises(ValueError):
        StoredRun(bucket, "acct-a/runs/r1")


def test_the_coordinator_chooses_the_run_folder_in_the_store_once(tmp_path):
    """Same spec and data as an unfinished run: its folder (training resumes there); as a
    finished one: a fresh attempt; a store that cannot be asked: a retryable refusal."""
    from computeswarm.cluster.errors import Busy
    from computeswarm.cluster.kinds.training import choose_run_prefix, run_name_of
    from computeswarm.cluster.store.models import Job
    from computeswarm.jobs.spec import parse_job_spec
    from tests.unit.test_training_core import training_spec

    upload = tmp_path / "upload"
    upload.mkdir()
    (upload / "data.jsonl").write_text('{"text": "hi"}\n')
    spec = parse_job_spec(training_spec())

    def job(n: int) -> Job:
        record = spec.model_dump(mode="json")
        return Job(id=f"j-{n}", account_id="acct-a", name="t", spec=record, upload_path=str(upload))

    name = run_name_of(job(0), spec)
    bucket = FakeBucket({f"acct-a/runs/{name}/steps.log": b"1 0.5 0.1\n"})
    first = job(1)
    assert choose_run_prefix(bucket, first, spec) == f"acct-a/runs/{name}/"  # resumed
    assert first.run_dir == f"acct-a/runs/{name}/"
    bucket.objects[f"acct-a/runs/{name}/result.json"] = b"{}"
    assert choose_run_prefix(bucket, first, spec) == f"acct-a/runs/{name}/"  # chosen once
    assert choose_run_prefix(bucket, job(2), spec) == f"acct-a/runs/{name}-r2/"

    class Down(FakeBucket):
        def list(self, prefix):
            raise ConnectionError("connection refused")

    with pytest.raises(Busy, match="object store"):
        choose_run_prefix(Down({}), job(3), spec)
