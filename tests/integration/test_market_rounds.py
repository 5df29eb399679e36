"""The scheduler matches the jobs waiting in one tick as a round, against the real store."""

from __future__ import annotations

from sqlalchemy import select

from computeswarm.cluster.accounts.roles import authenticate
from computeswarm.cluster.leases import match
from computeswarm.cluster.ledger import journal as ledger
from computeswarm.cluster.store.models import Job, LeaseMember
from tests.integration.conftest import make_head
from tests.integration.test_containment import _upload


def _seller(head, name: str, model: str, price: str) -> str:
    seller = head.enroll(name)
    auth = head.auth(seller["api_key"])
    url = f"/v1/sellers/{seller['seller_id']}"
    assert head.http.put(f"{url}/offer", headers=auth, json={"price_per_gpu_hour": price})
    gpus = [{"model": model, "vram_gb": 40, "simulated": True}]
    assert head.http.post(f"{url}/heartbeat", headers=auth, json={"gpus": gpus}).is_success
    return seller["seller_id"]


def _job(model: str) -> dict:
    return {
        "kind": "script",
        "name": f"wants-{model}",
        "entrypoint": "python x.py",
        "runtime_env": {"working_dir": "."},
        "resources": {"gpus": f"{model}:1"},
        "pricing": {"max_price_per_gpu_hour": "1.00", "budget": "0.10"},
    }


def test_a_tick_matches_its_waiting_jobs_together_so_none_is_stranded(tmp_path):
    """In arrival order the any-GPU job took the cheaper A100, the only GPU the second
    job could use, and the second waited though a seller it did not need was free."""
    head = make_head(tmp_path)
    try:
        head.coordinator.stop_loops()  # one matching step at a known time, nothing else
        a100 = _seller(head, "a100-box", "A100", "0.40")
        rtx = _seller(head, "rtx-box", "RTX4090", "0.50")
        buyer = head.account("buyer")
        with head.coordinator.store.transaction() as db:
            ledger.post(db, ledger.deposit(authenticate(db, buyer).account_id, 10**7), head.clock())
        ids = []
        for model in ("any", "A100"):
            body = {"spec": _job(model), "working_dir_zip": _upload(tmp_path, 100)}
            response = head.http.post("/v1/jobs", json=body, headers=head.auth(buyer))
            assert response.status_code == 200, response.text
            ids.append(response.json()["id"])
        match.match_pending(head.coordinator.scheduler.ctx, head.clock())
        with head.coordinator.store.transaction() as db:
            seller_of = {}
            for job_id in ids:
                job = db.get(Job, job_id)
                assert job.lease_id, (job.state, job.reason)
                (member,) = db.scalars(
                    select(LeaseMember).where(LeaseMember.lease_id == job.lease_id)
                ).all()
                seller_of[job_id] = member.seller_id
        assert seller_of == {ids[0]: rtx, ids[1]: a100}
    finally:
        head.coordinator.stop()
