"""The object store against the real server (JuiceFS's S3 gateway): per-lease keys reach
only their lease's prefixes, a revoked key is refused, the store survives its own crash
with every object and key, and pyarrow (what Ray Train writes checkpoints with) works."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from computeswarm.cluster.config import StorageConfig
from computeswarm.cluster.objects.client import s3_client
from computeswarm.cluster.objects.layout import Grant, job_prefix, model_prefix
from computeswarm.cluster.objects.plane import ObjectPlane
from computeswarm.cluster.objects.server import Credentials

BUCKET = "computeswarm"


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    plane = ObjectPlane(StorageConfig(port=0), tmp_path_factory.mktemp("objects"))
    plane.start("127.0.0.1")
    yield plane
    plane.stop()


def lease_client(env: dict[str, str]):
    return s3_client(
        env["AWS_ENDPOINT_URL"], Credentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
    )


def _code(call) -> str:
    with pytest.raises(ClientError) as caught:
        call()
    return caught.value.response["Error"]["Code"]


def test_a_lease_key_reaches_its_prefixes_and_another_buyers_objects_are_denied(plane):
    plane.store.put_bytes(f"{model_prefix('buyerA', 'adder', 1)}adapter.bin", b"A's model")
    plane.store.put_bytes(f"{job_prefix('buyerB', 'jobB')}secret.txt", b"B's result")
    grant = Grant(read=(model_prefix("buyerA", "adder", 1),), write=(job_prefix("buyerA", "jobA"),))
    env = plane.issue("leaseA", grant)
    s3 = lease_client(env)
    assert plane.store.credentials.access_key not in env.values(), "the root key reached a lease"
    assert plane.store.credentials.secret_key not in env.values()

    mine = f"{job_prefix('buyerA', 'jobA')}out.txt"
    s3.put_object(Bucket=BUCKET, Key=mine, Body=b"written by the lease")
    assert plane.store.get_bytes(mine) == b"written by the lease"
    model = f"{model_prefix('buyerA', 'adder', 1)}adapter.bin"
    assert s3.get_object(Bucket=BUCKET, Key=model)["Body"].read() == b"A's model"
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=job_prefix("buyerA", "jobA"))
    assert [o["Key"] for o in listed["Contents"]] == [mine]

    theirs = f"{job_prefix('buyerB', 'jobB')}secret.txt"
    assert _code(lambda: s3.get_object(Bucket=BUCKET, Key=theirs)) == "AccessDenied"
    assert _code(lambda: s3.put_object(Bucket=BUCKET, Key=theirs, Body=b"x")) == "AccessDenied"
    assert _code(lambda: s3.delete_object(Bucket=BUCKET, Key=theirs)) == "AccessDenied"
    assert _code(lambda: s3.list_objects_v2(Bucket=BUCKET, Prefix="buyerB/")) == "AccessDenied"
    assert _code(lambda: s3.list_objects_v2(Bucket=BUCKET)) == "AccessDenied"
    # Read-only where it only reads: the model it starts from cannot be overwritten.
    assert _code(lambda: s3.put_object(Bucket=BUCKET, Key=model, Body=b"x")) == "AccessDenied"
    assert plane.store.get_bytes(theirs) == b"B's result"
    plane.revoke("leaseA")


def test_a_revoked_key_is_refused_at_once(plane):
    env = plane.issue("leaseR", Grant(write=(job_prefix("buyerA", "jobR"),)))
    s3 = lease_client(env)
    s3.put_object(Bucket=BUCKET, Key=f"{job_prefix('buyerA', 'jobR')}x", Body=b"x")
    assert "leaseR" in plane.keys.issued()
    plane.revoke("leaseR")
    plane.revoke("leaseR")  # twice is fine
    assert "leaseR" not in plane.keys.issued()
    key = f"{job_prefix('buyerA', 'jobR')}x"
    assert _code(lambda: s3.get_object(Bucket=BUCKET, Key=key)) == "InvalidAccessKeyId"
    forged = s3_client(env["AWS_ENDPOINT_URL"], Credentials(env["AWS_ACCESS_KEY_ID"], "forged"))
    assert _code(lambda: forged.get_object(Bucket=BUCKET, Key=key)) in (
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
    )


def test_the_root_key_is_kept_0600_and_bytes_are_counted_per_account(plane):
    mode = stat.S_IMODE(os.stat(plane.embedded.root / "root.json").st_mode)
    assert mode == 0o600
    plane.store.put_bytes("buyerC/jobs/j1/a.bin", b"x" * 1000)
    plane.store.put_bytes("buyerC/jobs/j1/b.bin", b"x" * 500)
    assert plane.store.bytes_by_account()["buyerC"] == 1500
    assert plane.store.bytes_of("buyerC") == 1500
    assert plane.store.delete_prefix("buyerC/") == 2
    assert "buyerC" not in plane.store.bytes_by_account()


def test_a_killed_store_is_restarted_with_its_objects_and_keys(plane):
    env = plane.issue("leaseK", Grant(write=(job_prefix("buyerA", "jobK"),)))
    key = f"{job_prefix('buyerA', 'jobK')}kept.txt"
    plane.store.put_bytes(key, b"kept")
    os.killpg(plane.embedded.process.pid, signal.SIGKILL)
    plane.embedded.process.wait(10)
    with pytest.raises(Exception):  # noqa: B017 (down: a connection error, of any kind)
        plane.ping()
    assert plane.supervise() is True
    plane.ping()
    assert plane.supervise() is False  # alive: nothing to do
    assert lease_client(env).get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"kept"
    plane.revoke("leaseK")


def test_pyarrow_writes_a_multipart_object_with_a_lease_key(plane, monkeypatch):
    """What Ray Train's checkpoints go through (RunConfig(storage_filesystem=...))."""
    import pyarrow.fs as pafs

    env = plane.issue("leaseP", Grant(write=(job_prefix("buyerA", "jobP"),)))
    for name in ("AWS_REQUEST_CHECKSUM_CALCULATION", "AWS_RESPONSE_CHECKSUM_VALIDATION"):
        monkeypatch.setenv(name, env[name])
    fs = pafs.S3FileSystem(
        access_key=env["AWS_ACCESS_KEY_ID"],
        secret_key=env["AWS_SECRET_ACCESS_KEY"],
        endpoint_override=env["AWS_ENDPOINT_URL"],
        region=env["AWS_REGION"],
    )
    path = f"{BUCKET}/{job_prefix('buyerA', 'jobP')}checkpoint.bin"
    with fs.open_output_stream(path) as out:
        out.write(os.urandom(1024) * (12 * 1024))  # 12 MB: a multipart upload
    assert fs.get_file_info(path).size == 12 * 1024 * 1024
    evil = f"{BUCKET}/buyerB/jobs/x/evil.bin"
    with pytest.raises(OSError, match=r"(?i)denied"), fs.open_output_stream(evil) as out:
        out.write(b"x")
    plane.revoke("leaseP")


def test_a_buyer_at_its_storage_quota_submits_no_more_and_sees_its_bytes_in_the_ledger(tmp_path):
    """Storage is a cost the buyer sees: its bytes in the store show in its ledger and in
    /metrics, and past its quota a submission is refused with the reason (nothing queued)."""
    from computeswarm.cluster.accounts.roles import authenticate
    from computeswarm.cluster.ledger import journal as ledger
    from tests.integration.conftest import make_head
    from tests.integration.test_containment import _script

    head = make_head(tmp_path, **{"storage.quota_bytes_per_account": 1000})
    try:
        head.coordinator.stop_loops()
        buyer = head.account("buyer", "hoarder")
        with head.coordinator.store.transaction() as db:
            owner = authenticate(db, buyer).account_id
            ledger.post(db, ledger.deposit(owner, 10**7), head.clock())
        objects = head.coordinator.objects.store
        objects.put_bytes(f"{job_prefix(owner, 'j-old')}result.bin", b"x" * 600)

        def submit():
            spec = {k: v for k, v in _script().items() if k != "runtime_env"}
            return head.http.post("/v1/jobs", json={"spec": spec}, headers=head.auth(buyer))

        assert submit().status_code == 200  # 600 of 1000 bytes: room left
        assert head.http.get("/v1/ledger", headers=head.auth(buyer)).json()["storage_bytes"] == {
            owner: 600
        }
        objects.put_bytes(f"{job_prefix(owner, 'j-old')}more.bin", b"x" * 400)
        refused = submit()
        assert refused.status_code == 400, refused.text
        assert "storage quota reached: 1000 of 1000 bytes" in refused.json()["detail"]
        assert len(head.http.get("/v1/jobs", headers=head.auth(buyer)).json()) == 1
        admin_view = head.http.get("/v1/ledger", headers=head.admin).json()["storage_bytes"]
        assert admin_view[owner] == 1000

        # The store down: a clear retryable refusal, never a job waved past its quota.
        head.coordinator.objects.embedded.stop()
        down = submit()
        assert down.status_code == 503 and "object store is unreachable" in down.json()["detail"]
        ready = head.http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["objects"] != "ok"
        assert head.coordinator.objects.supervise() is True
        assert head.http.get("/readyz").json()["checks"]["objects"] == "ok"
    finally:
        head.coordinator.stop()


def test_a_coordinator_killed_hard_takes_its_store_down_with_it(tmp_path):
    """No orphan keeps the port: the next start of the same state dir gets it back."""
    import subprocess
    import sys
    import time

    code = (
        "import sys, time; from pathlib import Path\n"
        "from computeswarm.cluster.config import StorageConfig\n"
        "from computeswarm.cluster.objects.plane import ObjectPlane\n"
        "plane = ObjectPlane(StorageConfig(port=int(sys.argv[2])), Path(sys.argv[1]))\n"
        "plane.start('127.0.0.1'); print(plane.embedded.process.pid, flush=True); time.sleep(600)\n"
    )
    port = ObjectPlane(StorageConfig(port=0), tmp_path / "unused").port
    owner = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "objects"), str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        gateway = int(owner.stdout.readline())
        owner.kill()
        owner.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _running(gateway):
            time.sleep(0.1)
        assert not _running(gateway), "the store outlived its coordinator"
    finally:
        if owner.poll() is None:
            owner.kill()
    again = ObjectPlane(StorageConfig(port=port), tmp_path / "objects")
    again.start("127.0.0.1")
    try:
        again.ping()
    finally:
        again.stop()


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_run_through_a_lease_key_prunes_checkpoints_and_travels_without_the_key(
    plane, monkeypatch
):
    """Ray Train deletes old checkpoints (DeleteObjects, which this server refuses without
    Content-MD5, must not be what a folder delete uses), and Tune pickles the file system
    into the experiment state: a sweep resumed on a new lease unpickles it there, after the
    old lease's key was revoked, and must use the new lease's key."""
    import pickle

    import pyarrow.fs as pafs

    from computeswarm.jobs.run_store import RunStore

    prefix = job_prefix("buyerA", "jobR")
    first = plane.issue("leaseR1", Grant(write=(prefix,)))
    for name, value in first.items():
        monkeypatch.setenv(name, value)
    run = RunStore(f"{BUCKET}/{prefix}run", True)
    run.write_text("experiment/trial_1/checkpoint_000001/model.bin", "weights")
    run.write_text("experiment/trial_1/checkpoint_000001/deep/extra.bin", "more")
    run.write_text("experiment/trial_1/checkpoint_000002/model.bin", "newer")
    run.fs.delete_dir(run.path("experiment/trial_1/checkpoint_000001"))
    assert run.listdir("experiment/trial_1") == ["checkpoint_000002"]
    assert run.read_text("experiment/trial_1/checkpoint_000002/model.bin") == "newer"

    shipped = pickle.dumps(run.fs)
    assert first["AWS_SECRET_ACCESS_KEY"].encode() not in shipped
    plane.revoke("leaseR1")
    second = plane.issue("leaseR2", Grant(write=(prefix,)))
    for name, value in second.items():
        monkeypatch.setenv(name, value)
    restored = pickle.loads(shipped)
    with restored.open_input_stream(
        run.path("experiment/trial_1/checkpoint_000002/model.bin")
    ) as f:
        assert f.read() == b"newer"
    info = restored.get_file_info(run.path("experiment/trial_1/checkpoint_000001"))
    assert info.type == pafs.FileType.NotFound
    plane.revoke("leaseR2")


def test_a_run_write_made_while_the_store_restarts_waits_for_it(plane, monkeypatch):
    """A lease outlives its coordinator's crash, the embedded store does not: a checkpoint
    written in the gap must wait for the restarted store, not fail the run (a sweep whose
    Tune driver failed that way was failed by the restarted coordinator)."""
    import threading
    import time

    from computeswarm.jobs.run_store import RunStore

    prefix = job_prefix("buyerA", "jobW")
    for name, value in plane.issue("leaseW", Grant(write=(prefix,))).items():
        monkeypatch.setenv(name, value)
    run = RunStore(f"{BUCKET}/{prefix}run", True)
    run.write_text("before.txt", "up")
    os.killpg(plane.embedded.process.pid, signal.SIGKILL)
    plane.embedded.process.wait(10)
    outcome: list = []

    def write() -> None:
        try:
            run.write_text("during.txt", "written in the gap")
            outcome.append("ok")
        except Exception as e:
            outcome.append(e)

    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(8)  # pyarrow's default of 3 attempts gives up after ~1 s
    assert not outcome, f"the write did not wait for the store: {outcome}"
    assert plane.supervise() is True
    writer.join(150)
    assert outcome == ["ok"]
    assert run.read_text("during.txt") == "written in the gap"
    plane.revoke("leaseW")
