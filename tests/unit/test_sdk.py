"""The SDK against a fake coordinator (httpx's MockTransport): specs in every form, the
job's life through status/logs/wait/cancel, typed errors with the server's message,
sweeps as a table. The real coordinator: tests/integration/test_leases_loopback.py."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from computeswarm.cluster.client import CoordinatorClient
from computeswarm.jobs.spec import parse_job_spec
from computeswarm.sdk import JobFailed, NotFound, Swarm

SPEC = {
    "kind": "script",
    "name": "hello",
    "entrypoint": "python -c 'print(1)'",
    "pricing": {"max_price_per_gpu_hour": "0.5"},
}


class FakeCoordinator:
    """A job that runs for a few polls, logs in pieces, then succeeds and is billed."""

    def __init__(self, end_state: str = "succeeded"):
        self.submitted: list[dict] = []
        self.polls = 0
        self.end_state = end_state
        self.log = "step 1\nstep 2\nstep 3 done\n"

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "POST" and path == "/v1/jobs":
            self.submitted.append(json.loads(request.content))
            return httpx.Response(200, json=self.view())
        if path == "/v1/jobs/j-1":
            self.polls += 1
            return httpx.Response(200, json=self.view())
        if path == "/v1/jobs/j-1/logs":
            offset = int(request.url.params.get("offset", 0))
            piece = self.log[offset : offset + 9]  # lines arrive split across chunks
            done = offset + len(piece) >= len(self.log)
            return httpx.Response(
                200, json={"text": piece, "offset": offset + len(piece), "done": done, "state": "x"}
            )
        if path == "/v1/jobs/j-1/cancel":
            return httpx.Response(200, json=self.view() | {"state": "cancelled"})
        if request.method == "POST" and path == "/v1/jobs/j-1/dashboard":
            return httpx.Response(
                200, json={"lease_id": "l-1", "path": "/dashboards/l-1/?ticket=t"}
            )
        if path == "/v1/market/quote":
            return httpx.Response(200, json={"matched": True, "price_per_hour": "0.440000"})
        if path == "/v1/sweeps/j-1":
            return httpx.Response(200, json=SWEEP)
        return httpx.Response(404, json={"error": "not_found", "detail": f"no such thing {path}"})

    def view(self) -> dict:
        ended = self.polls >= 3
        return {
            "id": "j-1",
            "name": "hello",
            "kind": "script",
            "state": self.end_state if ended else "running",
            "reason": "it broke" if ended and self.end_state == "failed" else None,
            "cost": "0.012000" if ended else None,
            "ended_at": 5.0 if ended else None,
            "lease": {"id": "l-1", "state": "running", "price_per_hour": "0.44", "escrow": "1"},
        }


SWEEP = {
    "job_id": "j-1",
    "state": "succeeded",
    "metric": "eval_loss",
    "mode": "min",
    "trials": [
        {"trial_id": "t1", "state": "completed", "metric": 0.5, "params": {"lr": 0.01}},
        {"trial_id": "t2", "state": "stopped_early", "metric": 0.9, "params": {"lr": 0.1}},
    ],
}


def swarm_of(fake: FakeCoordinator) -> Swarm:
    client = CoordinatorClient("http://coordinator", "key", transport=httpx.MockTransport(fake))
    return Swarm(client, "key")


def test_a_spec_goes_in_as_a_dict_yaml_text_a_file_or_a_model(tmp_path):
    fake = FakeCoordinator()
    swarm = swarm_of(fake)
    (tmp_path / "job.yaml").write_text(json.dumps(SPEC))
    for spec in (SPEC, json.dumps(SPEC), tmp_path / "job.yaml", parse_job_spec(SPEC)):
        assert swarm.submit(spec).id == "j-1"
    assert all(
        s["spec"]["name"] == "hello" and s["working_dir_zip"] is None for s in fake.submitted
    )
    assert swarm.quote(SPEC).price_per_hour == "0.440000"


def test_a_job_is_followed_waited_for_and_billed():
    fake = FakeCoordinator()
    job = swarm_of(fake).submit(SPEC)
    assert job.status().state == "running" and job.cost is None
    assert list(job.logs(follow=True, poll_s=0)) == ["step 1", "step 2", "step 3 done"]
    final = job.wait(poll_s=0)
    assert final.state == "succeeded" and job.cost == "0.012000"
    assert asyncio.run(job.wait_async(poll_s=0)).state == "succeeded"


def test_waiting_has_a_timeout_and_can_insist_on_success():
    slow = FakeCoordinator()
    slow.polls = -(10**9)  # never ends
    with pytest.raises(TimeoutError, match="still running"):
        swarm_of(slow).submit(SPEC).wait(timeout=0.05, poll_s=0.01)
    with pytest.raises(JobFailed, match="j-1 failed: it broke"):
        swarm_of(FakeCoordinator("failed")).submit(SPEC).wait(poll_s=0, check=True)


def test_errors_are_typed_and_carry_the_server_s_message():
    swarm = swarm_of(FakeCoordinator())
    with pytest.raises(NotFound, match="no such thing /v1/jobs/j-404"):
        swarm.job("j-404")
    assert swarm.submit(SPEC).cancel().state == "cancelled"
    assert swarm.job("j-1").dashboard() == "http://coordinator/dashboards/l-1/?ticket=t"
    with pytest.raises(Exception, match="not serve"):
        swarm.submit(SPEC).openai()


def test_a_sweep_is_a_table():
    table = swarm_of(FakeCoordinator()).sweeps.show("j-1")
    assert table.records()[0] == {
        "trial_id": "t1",
        "state": "completed",
        "eval_loss": 0.5,
        "iterations": 0,
        "cost_micros": 0,
        "params.lr": 0.01,
    }
    frame = table.to_pandas()
    assert list(frame["trial_id"]) == ["t1", "t2"] and "<table" in table._repr_html_()


def test_a_working_dir_upload_reports_its_progress_and_arrives_whole(tmp_path, capsys):
    import base64
    import io
    import zipfile

    fake = FakeCoordinator()
    swarm = swarm_of(fake)
    (tmp_path / "weights.bin").write_bytes(bytes(range(256)) * 4096)  # 1 MiB, barely compressible
    seen: list[tuple[int, int]] = []
    swarm.client.submit_job(SPEC, b"z" * 700_000, lambda sent, total: seen.append((sent, total)))
    total = seen[-1][1]
    assert len(seen) >= 3 and seen[-1] == (total, total)
    assert [s for s, _ in seen] == sorted(s for s, _ in seen)
    assert base64.b64decode(fake.submitted[-1]["working_dir_zip"]) == b"z" * 700_000

    job = swarm.submit(SPEC | {"runtime_env": {"working_dir": "."}}, working_dir=tmp_path)
    assert job.id == "j-1"
    assert "uploading working_dir" in capsys.readouterr().err  # the bar, on stderr
    upload = base64.b64decode(fake.submitted[-1]["working_dir_zip"])
    with zipfile.ZipFile(io.BytesIO(upload)) as z:
        assert z.read("weights.bin") == (tmp_path / "weights.bin").read_bytes()
