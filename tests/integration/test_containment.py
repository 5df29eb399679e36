"""Faults and attacks from the containment review, against the real coordinator and store."""

from __future__ import annotations

import subprocess
import time

from computeswarm.cluster.accounts import authenticate
from computeswarm.cluster.ray_nodes import process_start, session_pids
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
