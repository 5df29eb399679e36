"""The one-command join for real: a coordinator on the hub host, two sellers on other hosts
(one behind NAT) joining over real WireGuard, heartbeats, a killed agent, a restart, leave."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from computeswarm.tunnel import netns
from computeswarm.tunnel.testbed import Testbed

CS = [sys.executable, "-m", "computeswarm.cli"]
PORT = 8443
INTERVAL_S, TIMEOUT_S = 0.5, 2.0


class Swarm:
    def __init__(self, bed: Testbed, state: Path):
        self.bed = bed
        self.state = state
        self.hub = bed.host("hub")
        self.url = f"http://{self.hub.ip}:{PORT}"
        self.agents: dict[str, object] = {}

    def cli(self, host: str, *args: str) -> str:
        done = netns.run([*CS, *args], netns=self.bed.host(host).netns, check=False, timeout=60)
        if done.returncode != 0:
            raise AssertionError(f"computeswarm {' '.join(args)}: {done.stderr}")
        return done.stdout

    def admin(self, *args: str) -> str:
        return self.cli(
            "hub",
            *args,
            "--coordinator",
            f"http://127.0.0.1:{PORT}",
            "--api-key",
            (self.state / "head" / "admin.key").read_text().strip(),
        )

    def sellers(self) -> dict[str, dict]:
        return {s["name"]: s for s in json.loads(self.admin("sellers", "list", "--all", "--json"))}

    def join(self, name: str, invite: str | None = None):
        argv = [
            *CS,
            "seller",
            "join",
            "--coordinator",
            self.url,
            "--state-dir",
            str(self.state / name),
            "--name",
            name,
            "--simulate-gpus",
            "RTX4090:24GB:2",
            "--price",
            "0.40",
            "--interface",
            self.bed.iface_name(name),
            "--workload-netns",
            f"cs-{self.bed.run_id}-{name}-w",
        ]
        if invite:
            argv += ["--invite", invite]
        process = self.bed.spawn(name, argv, log=self.state / f"{name}.log")
        self.agents[name] = process
        return process

    def wait_for(self, predicate, what: str, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sellers = self.sellers()
            if predicate(sellers):
                return sellers
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}: {self.sellers()}")


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    state = tmp_path_factory.mktemp("swarm")
    with Testbed.create(["hub", "s1", "s3"], nat_hosts=["s2"]) as bed:
        env = {
            "COMPUTESWARM_HEAD__OVERLAY__INTERFACE": bed.iface_name("hub"),
            "COMPUTESWARM_HEAD__HEARTBEAT__INTERVAL_S": str(INTERVAL_S),
            "COMPUTESWARM_HEAD__HEARTBEAT__TIMEOUT_S": str(TIMEOUT_S),
            "COMPUTESWARM_HEAD__PUBLIC_HOST": bed.host("hub").ip,
        }
        os.environ.update(env)  # inherited by the coordinator spawned below
        try:
            bed.spawn(
                "hub",
                [*CS, "head", "up", "--state-dir", str(state / "head"), "--port", str(PORT)],
                log=state / "head.log",
            )
        finally:
            for key in env:
                os.environ.pop(key)
        swarm = Swarm(bed, state)
        for name in ("s1", "s2", "s3"):
            bed.workload_namespace(name)  # the testbed owns (and removes) them
        _until_ready(swarm)
        for name in ("s1", "s2"):
            invite = json.loads(swarm.admin("invite", "create", "--json"))["invite"]
            swarm.join(name, invite)
        swarm.wait_for(
            lambda s: (
                len(s) == 2 and all(x["state"] == "online" and x["offer"] for x in s.values())
            ),
            "both online",
        )
        yield swarm


def _until_ready(swarm: Swarm, timeout: float = 60.0) -> None:
    """The admin key is written before the coordinator answers (the object store and the
    API come up after it): wait for the API itself."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if (swarm.state / "head" / "admin.key").exists():
                swarm.sellers()
                return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError("the coordinator wrote no admin key in time")
        time.sleep(0.2)


def test_both_sellers_join_online_with_offers(swarm):
    sellers = swarm.sellers()
    s1, s2 = sellers["s1"], sellers["s2"]
    assert {s1["address"], s2["address"]} == {"10.90.0.2", "10.90.0.3"}
    assert s1["offer"]["price_per_gpu_hour"] == "0.400000"
    assert s1["gpus_simulated"] and len(s1["gpus"]) == 2
    assert s1["behind_nat"] is False and s1["endpoint"] == f"{swarm.bed.host('s1').ip}:51820"
    assert s2["behind_nat"] is True and s2["endpoint"] is None  # detected: NAT in between
    # The agent measured the overlay path to the hub.
    swarm.wait_for(
        lambda s: all(x["rtt_ms"] and x["bandwidth_mbps"] for x in s.values()), "measurements"
    )


def test_coordinator_api_is_reachable_over_the_overlay(swarm):
    for name in ("s1", "s2"):
        work = f"cs-{swarm.bed.run_id}-{name}-w"
        code = (
            "import httpx,sys; r=httpx.get(sys.argv[1]+'/healthz',timeout=5);print(r.status_code)"
        )
        done = netns.run([sys.executable, "-c", code, f"http://10.90.0.1:{PORT}"], netns=work)
        assert done.stdout.strip() == "200"
        # ...and the workload cannot take the underlay route to it.
        done = netns.run([sys.executable, "-c", code, swarm.url], netns=work, check=False)
        assert done.returncode != 0


def test_the_object_store_answers_on_the_overlay_and_its_port_is_closed_on_the_underlay(swarm):
    """The embedded store listens on the hub's overlay address: a seller's workload reaches
    it through the tunnel; nothing reaches its port from the underlay."""
    store = 9900  # storage.port's default
    code = (
        "import httpx,sys\n"
        "try: print(httpx.get(sys.argv[1] + '/minio/health/live', timeout=3).status_code)\n"
        "except httpx.HTTPError as e: print('unreachable', type(e).__name__)"
    )
    for name in ("s1", "s2"):
        work = f"cs-{swarm.bed.run_id}-{name}-w"
        done = netns.run([sys.executable, "-c", code, f"http://10.90.0.1:{store}"], netns=work)
        assert done.stdout.strip() == "200", done.stdout
    hub = swarm.hub.ip
    seller_box = swarm.bed.host("s1").netns
    # The hub's underlay address, and its overlay address by way of the underlay (the
    # seller's box, outside its workload's namespace, routes it there).
    for url in (f"http://{hub}:{store}", f"http://10.90.0.1:{store}"):
        done = netns.run([sys.executable, "-c", code, url], netns=seller_box)
        assert done.stdout.startswith("unreachable"), (url, done.stdout)
    ready = json.loads(
        netns.run(
            [
                sys.executable,
                "-c",
                "import httpx;print(httpx.get('http://127.0.0.1:8443/readyz').text)",
            ],
            netns=swarm.hub.netns,
        ).stdout
    )
    assert ready["checks"]["objects"] == "ok", ready


def test_killed_agent_goes_offline_and_comes_back_with_the_same_address(swarm):
    count_before = len(swarm.sellers())
    before = swarm.sellers()["s1"]
    agent = swarm.agents["s1"]
    os.killpg(agent.pid, signal.SIGKILL)
    killed = time.monotonic()
    swarm.wait_for(lambda s: s["s1"]["state"] == "offline", "s1 offline", timeout=15)
    took = time.monotonic() - killed
    assert took < TIMEOUT_S + 3, f"offline after {took:.1f} s"
    assert swarm.sellers()["s2"]["state"] == "online"  # the other seller is unaffected

    swarm.join("s1")  # the same one command, no invite: it reconnects
    after = swarm.wait_for(lambda s: s["s1"]["state"] == "online", "s1 back online")["s1"]
    assert after["address"] == before["address"] and after["id"] == before["id"]
    assert len(swarm.sellers()) == count_before, "the box enrolled twice"
    log = (swarm.state / "s1.log").read_text()
    assert "already enrolled" in log and "already up" in log


def test_seller_status_from_the_box(swarm):
    out = json.loads(
        swarm.cli("s1", "seller", "status", "--json", "--state-dir", str(swarm.state / "s1"))
    )
    assert out["seller"]["state"] == "online" and out["tunnel_up"] is True
    assert out["agent"]["pid"] > 0


def test_leave_retires_the_seller_and_its_address(swarm):
    out = swarm.cli("s2", "seller", "leave", "--yes", "--state-dir", str(swarm.state / "s2"))
    assert "will not be reused" in out
    s2 = swarm.sellers()["s2"]
    assert s2["state"] == "offline" and s2["left_at"] is not None
    assert not netns.exists(f"cs-{swarm.bed.run_id}-s2-w")
    assert swarm.agents["s2"].wait(10) is not None  # the agent was stopped
    # It stays offline and is not listed by default.
    names = {s["name"] for s in json.loads(swarm.admin("sellers", "list", "--json"))}
    assert "s2" not in names and "s1" in names


def test_join_script_on_a_box_with_the_package_installed(swarm):
    """cluster/seller/join-cluster.sh: system packages present, ComputeSwarm present (the repo's
    venv as the prefix), so it goes straight to the one join command."""
    script = Path(__file__).parents[2] / "cluster" / "seller" / "join-cluster.sh"
    invite = json.loads(swarm.admin("invite", "create", "--json"))["invite"]
    env = {
        "COMPUTESWARM_PREFIX": str(Path(sys.executable).parents[1]),
        "COMPUTESWARM_SELLER_DIR": str(swarm.state / "s3"),
    }
    argv = [
        "env",
        *(f"{k}={v}" for k, v in env.items()),
        "bash",
        str(script),
        "--coordinator",
        swarm.url,
        "--invite",
        invite,
        "--name",
        "s3",
        "--simulate-gpus",
        "RTX3090:24GB:1",
        "--interface",
        swarm.bed.iface_name("s3"),
        "--workload-netns",
        f"cs-{swarm.bed.run_id}-s3-w",
    ]
    swarm.agents["s3"] = swarm.bed.spawn("s3", argv, log=swarm.state / "s3.log")
    s3 = swarm.wait_for(lambda s: s.get("s3", {}).get("state") == "online", "s3 online")["s3"]
    assert s3["gpus"] == [{"model": "RTX3090", "vram_gb": 24, "simulated": True}]
    assert "installing" not in (swarm.state / "s3.log").read_text()
