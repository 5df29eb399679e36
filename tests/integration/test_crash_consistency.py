"""The coordinator killed with SIGKILL in the middle of a burst of joins and heartbeats
restarts with a consistent store: no half-enrolled seller, no duplicated address, and no
enrollment that a client saw succeed is lost."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
from sqlalchemy import select, text

from computeswarm.cluster.store.db import Store
from computeswarm.cluster.store.models import Account, ApiKey, Invite, Seller
from computeswarm.tunnel.keys import KeyPair, possession_proof

WORKERS = 8
INVITES = 80


def test_sigkill_mid_burst_leaves_a_consistent_store(tmp_path, database_url):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    head = _start(tmp_path, port, database_url)
    try:
        admin = {"Authorization": f"Bearer {(tmp_path / 'admin.key').read_text().strip()}"}
        invites = [
            httpx.post(f"{url}/v1/invites", json={}, headers=admin).json()["invite"]
            for _ in range(INVITES)
        ]
        hub_key = httpx.get(f"{url}/v1/hub").json()["public_key"]
        succeeded: list[str] = []  # seller ids the clients were told about
        stop = threading.Event()
        workers = [
            threading.Thread(
                target=_burst, args=(url, hub_key, invites[i::WORKERS], succeeded, stop)
            )
            for i in range(WORKERS)
        ]
        for w in workers:
            w.start()
        deadline = time.monotonic() + 30
        while len(succeeded) < INVITES // 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        head.send_signal(signal.SIGKILL)  # mid-burst: enrollments and heartbeats in flight
        head.wait(10)
        stop.set()
        for w in workers:
            w.join(30)
        assert INVITES // 4 <= len(succeeded) < INVITES, "the kill did not land mid-burst"

        head = _start(tmp_path, port, database_url)
        _check_store(database_url, succeeded)
        # The hub was rebuilt from the store: one peer per seller.
        metrics = httpx.get(f"{url}/metrics", headers=admin).text
        peers = next(
            line for line in metrics.splitlines() if line.startswith("computeswarm_tunnel_peers{")
        )
        assert float(peers.rsplit(" ", 1)[1]) == _seller_count(database_url)
        # And enrollment carries on above every address ever issued.
        keys = KeyPair.generate()
        invite = httpx.post(f"{url}/v1/invites", json={}, headers=admin).json()["invite"]
        new = httpx.post(
            f"{url}/v1/enroll",
            json={
                "invite": invite,
                "public_key": keys.public,
                "name": "after",
                "proof": possession_proof(keys, hub_key, invite),
            },
        ).json()
        store = Store(database_url)
        with store.transaction() as db:
            highest = max(
                s.address_int for s in db.scalars(select(Seller)) if s.id != new["seller_id"]
            )
        store.close()
        assert int(ipaddress.IPv4Address(new["address"])) == highest + 1
    finally:
        _stop(head)


def _burst(
    url: str, hub_key: str, invites: list[str], succeeded: list[str], stop: threading.Event
) -> None:
    with httpx.Client(base_url=url, timeout=5) as client:
        for invite in invites:
            if stop.is_set():
                return
            keys = KeyPair.generate()
            try:
                response = client.post(
                    "/v1/enroll",
                    json={
                        "invite": invite,
                        "public_key": keys.public,
                        "name": "burst",
                        "proof": possession_proof(keys, hub_key, invite),
                    },
                )
                if response.status_code != 200:
                    continue
                body = response.json()
                succeeded.append(body["seller_id"])
                auth = {"Authorization": f"Bearer {body['api_key']}"}
                for _ in range(3):
                    client.post(
                        f"/v1/sellers/{body['seller_id']}/heartbeat",
                        headers=auth,
                        json={"gpus": [], "simulated": True},
                    )
            except httpx.TransportError:
                return  # the coordinator is gone


def _check_store(database_url: str, succeeded: list[str]) -> None:
    store = Store(database_url)
    try:
        with store.transaction() as db:
            if database_url.startswith("sqlite"):
                assert db.execute(text("PRAGMA integrity_check")).scalar() == "ok"
            sellers = {s.id: s for s in db.scalars(select(Seller))}
            invites = list(db.scalars(select(Invite).where(Invite.redeemed_at.is_not(None))))
            assert set(succeeded) <= set(sellers), "a committed enrollment was lost"
            # No half-enrolled seller: account, key and redeemed invite for each one.
            by_seller = {i.seller_id: i for i in invites}
            assert set(by_seller) == set(sellers)
            for seller in sellers.values():
                assert db.get(Account, seller.account_id) is not None
                assert (
                    db.scalars(select(ApiKey).where(ApiKey.account_id == seller.account_id)).first()
                    is not None
                )
                assert by_seller[seller.id].redeemed_by_key == seller.public_key
                assert int(ipaddress.IPv4Address(seller.address)) == seller.address_int
            addresses = [s.address for s in sellers.values()]
            assert len(addresses) == len(set(addresses))
    finally:
        store.close()


def _seller_count(database_url: str) -> int:
    store = Store(database_url)
    try:
        with store.transaction() as db:
            return len(db.scalars(select(Seller.id)).all())
    finally:
        store.close()


def _start(state_dir, port: int, database_url: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "COMPUTESWARM_HEAD__LIMITS__REQUESTS_PER_SECOND": "100000",
        "COMPUTESWARM_HEAD__LIMITS__BURST": "100000",
        "COMPUTESWARM_HEAD__OVERLAY__INTERFACE": f"csc{port}",
    }
    argv = [
        sys.executable,
        "-m",
        "computeswarm.cli",
        "head",
        "up",
        "--state-dir",
        str(state_dir),
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--backend",
        "none",
        "--database-url",
        database_url,
    ]
    with open(state_dir / "head.log", "ab") as log:  # the child keeps its own copy
        process = subprocess.Popen(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError((state_dir / "head.log").read_text()[-3000:])
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
    _stop(process)
    raise AssertionError("coordinator did not become ready")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
