"""The API's thin routes over fake services: response models keep every key a service
sends, kind sections appear only for their kind, and the OpenAPI spec documents them."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from computeswarm.cluster.accounts.roles import Caller, Role
from computeswarm.cluster.api.app import api_app
from computeswarm.cluster.api.deps import ApiServices, Gate
from computeswarm.cluster.api.ratelimit import RateLimiter
from computeswarm.cluster.errors import Unauthorized
from computeswarm.jobs.money import money_text

pytestmark = pytest.mark.unit

BUYER = Caller("acct-b", Role.BUYER, "key-b")
BASE = {
    "name": "hello",
    "state": "running",
    "reason": "",
    "created_at": 1.0,
    "started_at": 2.0,
    "ended_at": None,
    "cost": None,
    "model_version": None,
}
LEASE = {
    "id": "l-1",
    "state": "running",
    "reason": "",
    "price_per_hour": "0.880000",
    "escrow": "0.880000",
    "members": [
        {
            "seller_id": "s-1",
            "gpus": 2,
            "state": "attached",
            "driver": True,
            "price_per_gpu_hour": "0.440000",
            "attached_at": 3.0,
            "detached_at": None,
        }
    ],
}
JOBS = {
    "j-script": {**BASE, "id": "j-script", "kind": "script", "lease": LEASE},
    "j-serve": {
        **BASE,
        "id": "j-serve",
        "kind": "serve",
        "lease": None,
        "serve": {
            "endpoint": "/v1/serve/j-serve/v1",
            "ready": True,
            "models": ["base", "adder"],
            "replicas": {"running": 1, "min": 1, "max": 2},
            "requests": 3,
            "prompt_tokens": 30,
            "completion_tokens": 12,
            "metered_micros": 7,
        },
    },
    "j-lora": {
        **BASE,
        "id": "j-lora",
        "kind": "lora",
        "lease": None,
        "training": {"steps": 10, "step": 4, "recent_losses": [2.5, 2.25], "metrics": None},
    },
}
NO_MATCH = {
    "escrow": "0.500000",
    "max_duration_s": 1800.0,
    "matched": False,
    "reason": "needs 1 seller(s) offering 1x any GPU at <= 1.000000/GPU-h; 0 available now",
    "rejected": {},
}


class FakeKeys:
    def knows(self, presented: str | None) -> bool:
        return presented == "buyer-key"

    def authenticate(self, presented: str | None) -> Caller:
        if presented != "buyer-key":
            raise Unauthorized("invalid API key")
        return BUYER


class FakeJobs:
    def view(self, caller: Caller, job_id: str) -> dict:
        return JOBS[job_id]

    def list(self, caller: Caller) -> list[dict]:
        return list(JOBS.values())

    def quote(self, caller: Caller, spec: dict, explain: bool) -> dict:
        return NO_MATCH


@pytest.fixture
def http() -> TestClient:
    limiter = RateLimiter(1000, 1000, lambda: 0.0)
    services = ApiServices(
        gate=Gate(FakeKeys(), limiter, RateLimiter(1000, 1000, lambda: 0.0)),
        sellers=None,
        accounts=None,
        models=None,
        jobs=FakeJobs(),
        datasets=None,
        volumes=None,
        readiness=lambda: {"store": "ok", "hub": "hub not started"},
        metrics=None,
    )
    client = TestClient(api_app(services))
    client.headers["Authorization"] = "Bearer buyer-key"
    return client


@pytest.mark.parametrize("job_id", sorted(JOBS))
def test_a_job_view_is_the_services_view_with_only_its_kinds_section(http, job_id):
    response = http.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    assert response.json() == JOBS[job_id]


def test_the_job_list_keeps_each_jobs_own_sections(http):
    listed = {j["id"]: j for j in http.get("/v1/jobs").json()}
    assert listed == JOBS
    assert "serve" not in listed["j-script"] and "training" not in listed["j-serve"]


def test_a_quote_without_a_match_has_no_price_keys(http):
    response = http.post("/v1/market/quote", json={"spec": {}})
    assert response.json() == NO_MATCH


def test_not_ready_is_a_503_with_the_checks(http):
    response = http.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"ready": False, "checks": {"store": "ok", "hub": "hub not started"}}


def test_a_wrong_key_is_refused_before_any_service(http):
    response = http.get("/v1/jobs", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized", "detail": "invalid API key"}


def test_every_json_answer_is_documented_by_a_model(http):
    spec = http.get("/openapi.json").json()
    undocumented = [
        f"{method.upper()} {path}"
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if "application/json" in operation["responses"].get("200", {}).get("content", {})
        and not operation["responses"]["200"]["content"]["application/json"]["schema"]
    ]
    assert not undocumented
    schemas = spec["components"]["schemas"]
    job = schemas.get("JobView") or schemas["JobView-Output"]
    assert {"id", "state", "lease", "cost"} <= set(job["required"])
    assert not {"training", "sweep", "serve"} & set(job["required"])


def test_money_has_one_format_six_places_everywhere():
    assert money_text(440_000) == "0.440000"
    assert money_text(-1_000_000) == "-1.000000"
    assert money_text(1_100_002) == "1.100002"
    assert money_text(1) == "0.000001"
