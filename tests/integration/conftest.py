"""Integration fixtures: a real coordinator (real store, real HTTP stack) on the `none`
tunnel backend, so these run without root. The store tests run on SQLite and, where
COMPUTESWARM_TEST_POSTGRES_URL points at a server (CI starts one), on PostgreSQL too."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from computeswarm.cluster.api.app import create_app
from computeswarm.cluster.config import load_config
from computeswarm.cluster.coordinator import Coordinator
from computeswarm.tunnel.backends.none import NoneBackend
from computeswarm.tunnel.keys import KeyPair, possession_proof

POSTGRES_URL = os.environ.get("COMPUTESWARM_TEST_POSTGRES_URL")


@dataclass
class FakeClock:
    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Head:
    """A running coordinator and an HTTP client for it."""

    coordinator: Coordinator
    http: TestClient
    clock: FakeClock
    admin_key: str
    keys: dict[str, KeyPair] = field(default_factory=dict)

    def auth(self, key: str) -> dict:
        return {"Authorization": f"Bearer {key}"}

    @property
    def admin(self) -> dict:
        return self.auth(self.admin_key)

    def invite(self, **body) -> str:
        response = self.http.post("/v1/invites", json=body, headers=self.admin)
        assert response.status_code == 200, response.text
        return response.json()["invite"]

    def enroll_request(
        self, invite: str, keys: KeyPair | None = None, name: str = "box", **extra
    ) -> dict:
        keys = keys or KeyPair.generate()
        hub_key = self.coordinator.hub_keys.public
        return {
            "invite": invite,
            "public_key": keys.public,
            "proof": possession_proof(keys, hub_key, invite),
            "name": name,
            **extra,
        }

    def enroll(self, name: str = "box") -> dict:
        keys = KeyPair.generate()
        response = self.http.post("/v1/enroll", json=self.enroll_request(self.invite(), keys, name))
        assert response.status_code == 200, response.text
        body = response.json()
        self.keys[body["seller_id"]] = keys
        return body

    def account(self, role: str, name: str | None = None) -> str:
        response = self.http.post(
            "/v1/accounts",
            headers=self.admin,
            json={"name": name or f"{role}-{secrets.token_hex(3)}", "role": role},
        )
        assert response.status_code == 200, response.text
        return response.json()["api_key"]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip("PostgreSQL store tests need COMPUTESWARM_TEST_POSTGRES_URL (CI sets it)")
    name = f"cs_test_{secrets.token_hex(4)}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    url = POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


def make_head(tmp_path: Path, database_url: str | None = None, **overrides) -> Head:
    clock = FakeClock()
    config = load_config(
        env={},
        overrides={
            "state_dir": str(tmp_path / "head"),
            "database_url": database_url,
            "overlay.interface": "cstest",
            "storage.port": 0,  # tests' heads may overlap; a real head keeps its 9900
            **overrides,
        },
    )
    coordinator = Coordinator(config, clock=clock, backend=NoneBackend())
    coordinator.start()
    admin_key = coordinator.admin_key_path.read_text().strip()
    return Head(coordinator, TestClient(create_app(coordinator)), clock, admin_key)


@pytest.fixture
def head(tmp_path, database_url):
    head = make_head(tmp_path, database_url)
    yield head
    head.coordinator.stop()


@pytest.fixture
def sqlite_head(tmp_path):
    head = make_head(tmp_path)
    yield head
    head.coordinator.stop()
