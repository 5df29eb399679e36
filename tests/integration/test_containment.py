"""Faults and attacks from the containment review, against the real coordinator and store."""

from __future__ import annotations

import shutil
import subprocess
import time

from computeswarm.cluster.accounts.roles import authenticate
from computeswarm.cluster.leases.heads import ray_temp_dir
from computeswarm.cluster.ledger import journal as ledger
from computeswarm.cluster.nodes.ray_nodes import process_start, session_pids
from computeswarm.cluster.store.models import Lease


def _closed_lease(head, lease_id: str, session: int, started: str | None) -> None:
    now = head.clock()
    with head.coordinator.store.transaction() as db:
        owner = authenticate(db, head.account("buyer")).account_id
        db.add(
            Lease(
                id=lease_id,
                account_id=owner,
                job_id=None,
                state="closed",
                token="t",
                port_base=20000,
                head_session=session,
                head_started=started,
                price_per_hour_micros=1,
                escrow_micros=0,
                created_at=now,
                deadline=now + 60,
            )
        )


def test_a_restart_does_not_kill_a_process_that_reuses_an_old_heads_pid(sqlite_head):
    """H5: restart SIGKILLed any session whose id equalled an old head's PID."""
    head = sqlite_head
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        # The old head had this PID, but it was another process (it started at another time).
        _closed_lease(head, "l-old", bystander.pid, started="1")
        _closed_lease(head, "l-legacy", bystander.pid, started=None)
        assert head.coordinator.scheduler.stop_orphaned_heads() == []
        time.sleep(0.2)
        assert bystander.poll() is None and session_pids(bystander.pid)
    finally:
        bystander.kill()
        bystander.wait()


def test_a_restart_stops_a_head_it_did_start(sqlite_head):
    head = sqlite_head
    orphan = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        _closed_lease(head, "l-orphan", orphan.pid, started=process_start(orphan.pid))
        assert head.coordinator.scheduler.stop_orphaned_heads() == ["l-orphan"]
        orphan.wait(10)
    finally:
        orphan.kill()
        orphan.wait()


def test_a_restart_removes_the_stopped_heads_temp_dir(sqlite_head):
    """A head left by a crashed coordinator was stopped on restart, but its Ray temp dir
    (its sandbox's /tmp, with the lease token) stayed forever."""
    head = sqlite_head
    orphan = subprocess.Popen(["sleep", "60"], start_new_session=True)
    temp = ray_temp_dir("l-orphan-tmp")
    try:
        (temp / "session_latest").mkdir(parents=True)
        (temp / "lease.token").write_text("t")
        _closed_lease(head, "l-orphan-tmp", orphan.pid, started=process_start(orphan.pid))
        assert head.coordinator.scheduler.stop_orphaned_heads() == ["l-orphan-tmp"]
        assert not temp.exists()
    finally:
        orphan.kill()
        orphan.wait()
        shutil.rmtree(temp, ignore_errors=True)


def test_a_heartbeat_claiming_a_running_node_does_not_attach_or_bill(sqlite_head):
    """H4: `workers: {lease: running}` in a heartbeat attached the seller and started its
    billing, with no Ray node, even before the lease's head existed."""
    from sqlalchemy import select

    from computeswarm.cluster.store.models import LeaseMember

    head = sqlite_head
    head.coordinator.stop_loops()
    seller = head.enroll()
    _closed_lease(head, "l-forming", 0, started=None)
    with head.coordinator.store.transaction() as db:
        lease = db.get(Lease, "l-forming")
        lease.state, lease.port_base = "provisioning", 1  # no head answers there
        db.add(
            LeaseMember(
                lease_id="l-forming",
                seller_id=seller["seller_id"],
                gpus=1,
                ask_micros=1,
                price_micros=1,
                driver=True,
                state="assigned",
                assigned_at=head.clock(),
            )
        )
    claim = {
        "gpus": [{"model": "RTX4090", "vram_gb": 24, "simulated": True}],
        "simulated": True,
        "workers": {"l-forming": "running"},
    }
    url = f"/v1/sellers/{seller['seller_id']}/heartbeat"
    response = head.http.post(url, headers=head.auth(seller["api_key"]), json=claim)
    assert response.status_code == 200, response.text
    head.coordinator.scheduler.attach_joined(head.clock())
    with head.coordinator.store.transaction() as db:
        member = db.scalars(select(LeaseMember).where(LeaseMember.lease_id == "l-forming")).one()
        assert (member.state, member.attached_at) == ("assigned", None)


def test_a_held_store_lock_does_not_freeze_the_api(sqlite_head, tmp_path):
    """M1: the heartbeat route ran its SQL on the event loop, so a writer holding SQLite's
    lock for 3 s made /healthz (and the gateway) wait 2.66 s behind it."""
    import sqlite3
    import threading

    import httpx

    from tests.integration.http_server import ServerThread

    head = sqlite_head
    seller = head.enroll()
    with ServerThread(head.http.app) as server:
        base = server.url
        writer = sqlite3.connect(tmp_path / "head" / "coordinator.db", isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")  # hold the write lock
        beat = threading.Thread(
            target=httpx.post,
            args=(f"{base}/v1/sellers/{seller['seller_id']}/heartbeat",),
            kwargs={
                "headers": head.auth(seller["api_key"]),
                "json": {"gpus": [], "simulated": True},
                "timeout": 30,
            },
        )
        beat.start()
        time.sleep(0.5)  # the heartbeat now waits for the lock
        started = time.monotonic()
        assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
        waited = time.monotonic() - started
        time.sleep(2.5)
        writer.execute("COMMIT")
        writer.close()
        beat.join(30)
        assert waited < 1.0, f"/healthz waited {waited:.2f} s behind a held store lock"


def _upload(tmp_path, size: int) -> str:
    import base64
    import os

    from computeswarm.jobs.upload import pack_working_dir

    folder = tmp_path / f"wd-{size}"
    folder.mkdir(exist_ok=True)
    (folder / "data.bin").write_bytes(os.urandom(size))  # random: the zip is as big
    return base64.b64encode(pack_working_dir(folder, 2**20)).decode()


def _script(budget: str = "0.10") -> dict:
    return {
        "kind": "script",
        "name": "upload",
        "entrypoint": "python x.py",
        "runtime_env": {"working_dir": "."},
        "resources": {"gpus": "any:1"},
        "pricing": {"max_price_per_gpu_hour": "1.00", "budget": budget},
    }


def test_uploads_need_funds_fit_a_quota_and_are_deleted_when_the_job_ends(tmp_path):
    """H3: an 80 KiB request unpacked to 60 MiB that stayed on disk forever, even from a
    buyer with no funds; nothing deleted finished jobs' uploads; there was no quota."""
    from computeswarm.cluster.store.models import Job
    from tests.integration.conftest import make_head

    head = make_head(tmp_path, **{"market.upload_quota_bytes": 6000})
    try:
        head.coordinator.stop_loops()
        jobs_dir = tmp_path / "head" / "jobs"
        broke = head.account("buyer", "broke")
        refused = head.http.post(
            "/v1/jobs",
            json={"spec": _script(), "working_dir_zip": _upload(tmp_path, 100)},
            headers=head.auth(broke),
        )
        assert refused.status_code == 400 and "insufficient funds" in refused.json()["detail"]
        assert not jobs_dir.exists() or not any(jobs_dir.iterdir())

        buyer = head.account("buyer", "paying")
        with head.coordinator.store.transaction() as db:
            owner = authenticate(db, buyer).account_id
            ledger.post(db, ledger.deposit(owner, 10**7), head.clock())

        def submit(size: int):
            return head.http.post(
                "/v1/jobs",
                json={"spec": _script(), "working_dir_zip": _upload(tmp_path, size)},
                headers=head.auth(buyer),
            )

        first = submit(4000)
        assert first.status_code == 200, first.text
        over = submit(4000)
        assert over.status_code == 400 and "upload quota" in over.json()["detail"], over.text
        assert len(list(jobs_dir.iterdir())) == 1  # the refused one left nothing

        # The buyer cancels the first; once it has ended, its upload goes and frees the quota.
        job_id = first.json()["id"]
        assert head.http.post(f"/v1/jobs/{job_id}/cancel", headers=head.auth(buyer)).is_success
        head.coordinator.scheduler.tick()
        assert not (jobs_dir / job_id / "working_dir").exists()
        with head.coordinator.store.transaction() as db:
            assert db.get(Job, job_id).upload_bytes == 0
        assert submit(4000).status_code == 200
    finally:
        head.coordinator.stop()


def test_guessing_keys_is_limited_per_client(sqlite_head):
    """L5: failed logins were not limited, so keys could be guessed at the API's rate."""
    head = sqlite_head
    buyer = head.account("buyer")
    forged = buyer[:-6] + "AAAAAA"
    statuses = [head.http.get("/v1/jobs", headers=head.auth(forged)).status_code for _ in range(40)]
    # A burst of 30, then about one a second (the loop is much faster than that).
    assert statuses[:30] == [401] * 30 and statuses.count(429) >= 5, statuses
    # While the client is held back, even a right key (a lucky guess) gets nothing.
    head.coordinator.failed_logins.check("ip:testclient")  # spend what refilled meanwhile
    held = head.http.get("/v1/jobs", headers=head.auth(buyer))
    assert held.status_code == 429 and int(held.headers["retry-after"]) >= 1


def test_followers_of_a_live_log_share_one_fetch(sqlite_head, monkeypatch):
    """M5: every poll fetched the driver's whole log from the lease, each in an API thread."""
    import threading

    scheduler = sqlite_head.coordinator.scheduler
    fetches = []

    def fetch(job_id: str, head) -> str:
        fetches.append(job_id)
        time.sleep(0.3)  # a slow head
        return "line\n"

    monkeypatch.setattr(scheduler.ctx.ray_jobs, "fetch_log", fetch)
    texts = []
    followers = [
        threading.Thread(target=lambda: texts.append(scheduler.job_logs("j-live")))
        for _ in range(8)
    ]
    for follower in followers:
        follower.start()
    for follower in followers:
        follower.join(10)
    assert texts == ["line\n"] * 8 and fetches == ["j-live"]
