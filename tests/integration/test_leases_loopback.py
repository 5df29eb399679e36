"""The whole buyer path on one machine without root: a coordinator and three sellers on
loopback addresses (the `none` backend), real Ray lease clusters, real jobs, the bill.

The same path over real WireGuard, with fencing, is tests/e2e/test_leases.py.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass

import httpx
import pytest

from computeswarm.cluster.client import CoordinatorClient
from computeswarm.cluster.errors import ApiError
from computeswarm.cluster.leases.heads import RAY_TEMP_ROOT
from computeswarm.cluster.nodes.ray_nodes import session_pids, stop_session
from computeswarm.serve.openai import parse_sse
from computeswarm.tunnel.backends.none import loopback_address

CS = [sys.executable, "-m", "computeswarm.cli"]
SELLERS = {
    "s1": ("RTX4090:24GB:1", "0.40"),
    "s2": ("RTX4090:24GB:1", "0.45"),
    "s3": ("RTX3090:24GB:1", "0.30"),
}


class Swarm:
    def __init__(self, root, port: int):
        self.root, self.port = root, port
        self.url = f"http://127.0.0.1:{port}"
        self.sessions: dict[str, int] = {}

    def objects(self):
        """The coordinator's store through its root key, as an operator would read it."""
        from computeswarm.cluster.objects.client import ObjectStore
        from computeswarm.cluster.objects.server import Credentials

        root = json.loads((self.root / "head" / "objects" / "root.json").read_text())
        endpoint = next(
            line.split("object store up at ")[1].split()[0]
            for line in (self.root / "head.log").read_text().splitlines()
            if "object store up at" in line
        )
        return ObjectStore(endpoint, Credentials(**root), "computeswarm")

    def spawn(self, name: str, argv: list[str], env: dict | None = None) -> None:
        with open(self.root / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )
        self.sessions[name] = process.pid

    def join(self, name: str, gpus: str, price: str) -> None:
        """A seller box joins with the one command (loopback: the `none` backend)."""
        invite = self.admin.create_invite()["invite"]
        self.spawn(
            name,
            [
                *CS,
                "seller",
                "join",
                "--coordinator",
                self.url,
                "--invite",
                invite,
                "--state-dir",
                str(self.root / name),
                "--name",
                name,
                "--simulate-gpus",
                gpus,
                "--price",
                price,
                "--backend",
                "none",
            ],
        )

    def vanish(self, name: str) -> None:
        """The seller disappears at once: its agent and its Ray node are killed."""
        os.kill(int((self.root / name / "agent.pid").read_text()), signal.SIGKILL)
        sessions = json.loads((self.root / name / "worker-sessions.json").read_text())
        for session in sessions.values():
            stop_session(session, grace_s=0)

    def stop(self) -> None:
        for pid in self.sessions.values():  # agents stop their Ray nodes, the head its heads
            for member in session_pids(pid):
                os.kill(member, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(session_pids(s) for s in self.sessions.values()):
            time.sleep(0.2)
        for pid in self.sessions.values():
            stop_session(pid, grace_s=2)
        heads = self.root / "head" / "coordinator.db"  # heads of a coordinator killed hard
        if heads.exists():
            import sqlite3

            with sqlite3.connect(heads) as db:
                for (session,) in db.execute("SELECT head_session FROM leases"):
                    if session and session_pids(session):
                        stop_session(session, grace_s=2)
        for name in [*SELLERS, "s4"]:  # nodes of an agent killed by a test
            path = self.root / name / "worker-sessions.json"
            if path.exists():
                for session in json.loads(path.read_text()).values():
                    stop_session(session, grace_s=2)


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    yield from loopback_swarm(tmp_path_factory.mktemp("loopback-swarm"), SELLERS, "buyer", 2)


def loopback_swarm(root, sellers: dict[str, tuple[str, str]], buyer: str, timeout_s: float):
    """A coordinator (heartbeats every 0.5 s, a seller lost after `timeout_s`), `sellers`
    {name: (gpus, price)} joined with the one command, and a buyer with 10 deposited: a
    generator for module fixtures, yielding the swarm, then stopping all of it."""
    swarm = Swarm(root, _free_port())
    env = {
        "COMPUTESWARM_HEAD__HEARTBEAT__INTERVAL_S": "0.5",
        "COMPUTESWARM_HEAD__HEARTBEAT__TIMEOUT_S": str(timeout_s),
        "COMPUTESWARM_HEAD__OVERLAY__INTERFACE": f"csl{swarm.port}",
        "COMPUTESWARM_HEAD__STORAGE__PORT": "0",
    }
    head = [*CS, "head", "up", "--state-dir", str(root / "head"), "--port", str(swarm.port)]
    try:
        swarm.spawn("head", [*head, "--host", "0.0.0.0", "--backend", "none"], env)
        swarm.admin = CoordinatorClient(swarm.url, _admin_key(root, swarm.url))
        for name, (gpus, price) in sellers.items():
            swarm.join(name, gpus, price)
        account = swarm.admin.create_account(buyer, "buyer")
        swarm.admin.deposit(account["account_id"], "10")
        swarm.buyer = CoordinatorClient(swarm.url, account["api_key"], timeout=60)
        swarm.buyer_key = account["api_key"]
        _until(
            lambda: (
                sum(s["state"] == "online" and bool(s["offer"]) for s in swarm.admin.sellers())
                == len(sellers)
            ),
            "sellers online",
        )
        swarm.ids = {s["name"]: s["id"] for s in swarm.admin.sellers()}
        yield swarm
    finally:
        swarm.stop()


def job(name: str, entrypoint: str, gpus: str, nodes: int, **extra) -> dict:
    return {
        "kind": "script",
        "name": name,
        "entrypoint": entrypoint,
        "resources": {"gpus": gpus, "nodes": nodes, "memory_gb_per_node": 0.5},
        "pricing": {"max_price_per_gpu_hour": "0.60"},
        "max_duration": "10m",
        **extra,
    }


def test_bad_specs_are_refused_before_anything_is_leased(swarm):
    for bad, message in [
        ({"kind": "train", "name": "x"}, "unknown kind"),
        (
            job("x", "python x.py", "any:1", 1) | {"pricing": {"max_price_per_gpu_hour": "-1"}},
            "greater than 0",
        ),
        (job("x", "python x.py", "any:3", 2), "cannot be split evenly"),
        (job("x", "python x.py", "any:1", 1) | {"entrypont": "x"}, "did you mean"),
    ]:
        with pytest.raises(ApiError, match=message):
            swarm.buyer.submit_job(bad)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("../escape.py", "print('gotcha')")
    with pytest.raises(ApiError, match="escapes the folder"):
        swarm.buyer._call(
            "POST",
            "/v1/jobs",
            json={
                "spec": job("x", "python x.py", "any:1", 1) | {"runtime_env": {"working_dir": "."}},
                "working_dir_zip": base64.b64encode(archive.getvalue()).decode(),
            },
        )
    assert swarm.buyer.jobs() == [], "a refused spec left a job behind"

    # Impossible constraints: fail fast when asked, else wait in the queue with the reason.
    fast = swarm.buyer.submit_job(job("h100", "true", "H100:80GB:1", 1, queue=False))
    failed = _until(lambda: _state(swarm, fast["id"], "failed"), "fail fast")
    assert "no match" in failed["reason"] and failed["lease"] is None
    queued = swarm.buyer.submit_job(job("h100q", "true", "H100:80GB:1", 1))
    waiting = _until(
        lambda: _state(swarm, queued["id"], "pending", reason="waiting for supply"), "queue"
    )
    assert "H100" in waiting["reason"]
    assert swarm.buyer.cancel_job(queued["id"])["state"] == "cancelled"


def test_a_job_runs_on_the_two_cheapest_matching_sellers_and_is_billed(swarm):
    code = (
        "import ray, os; ray.init(); "
        "print('ON', sorted(n['NodeManagerAddress'] for n in ray.nodes() "
        "if n['Alive'] and n['Resources'].get('GPU')), flush=True)"
    )
    submitted = swarm.buyer.submit_job(job("two", f'python -c "{code}"', "RTX4090:24GB:2", 2))
    _until(lambda: _state(swarm, submitted["id"], "succeeded", "failed"), "job end", timeout=150)
    done = _settled(swarm, submitted["id"])
    assert done["state"] == "succeeded", done
    members = done["lease"]["members"]
    assert {m["seller_id"] for m in members} == {swarm.ids["s1"], swarm.ids["s2"]}
    logs = _until(
        lambda: (chunk := swarm.buyer.job_logs(submitted["id"]))["done"] and chunk, "the saved logs"
    )
    addresses = {s["id"]: s["address"] for s in swarm.admin.sellers()}
    on = sorted(loopback_address(addresses[swarm.ids[n]]) for n in ("s1", "s2"))
    assert f"ON {on}" in logs["text"]
    # The bill: each seller its ask x seconds, the platform the fee, to the micro-unit.
    expected = 0
    for m in members:
        seconds = int(m["detached_at"] - m["attached_at"])
        ask = 400_000 if m["seller_id"] == swarm.ids["s1"] else 450_000
        price = ask + ask // 10
        expected += ask * seconds // 3600 + (price - ask) * seconds // 3600
    assert round(float(done["cost"]) * 1_000_000) == expected
    view = swarm.admin.ledger()
    totals: dict[str, int] = {}
    for entry in view["entries"]:
        totals[entry["txn"]] = totals.get(entry["txn"], 0) + entry["amount_micros"]
    assert set(totals.values()) == {0}


WRITER = """
import os, pathlib
from computeswarm.jobs import contract
here = contract.volume_path("/workspace/data")
sandboxed = os.environ[contract.VOLUMES].endswith('"/workspace/data"}')
print("SANDBOXED", sandboxed, "SEES", sorted(p.name for p in here.iterdir()), flush=True)
(here / "models").mkdir(exist_ok=True)
(here / "models" / "weights.bin").write_bytes(bytes(range(256)) * 4096)
contract.commit_volumes()
print("COMMITTED", flush=True)
(here / "after.txt").write_text("written after the explicit commit")
"""
READER = """
import pathlib
from computeswarm.jobs import contract
here = contract.volume_path("/data")
print("READ", (here / "after.txt").read_text(), len((here / "models" / "weights.bin").read_bytes()))
try:
    (here / "x").write_text("no")
    print("WROTE")
except OSError as e:
    print("READONLY", e.errno)
"""


def test_a_volume_keeps_what_one_job_wrote_for_the_next_on_another_seller(swarm, tmp_path):
    """The seller's agent fetches the volume before the node starts, binds it at the mount
    path in the sandbox, commits when the job asks and once more after the node stops;
    the folder on the seller goes with the lease."""
    swarm.buyer.create_volume("cache", 10 * 2**20)
    (tmp_path / "w.py").write_text(WRITER)
    (tmp_path / "r.py").write_text(READER)
    from computeswarm.jobs.upload import pack_working_dir

    writer = job(
        "writer",
        "python w.py",
        "RTX4090:24GB:1",
        1,
        runtime_env={"working_dir": "."},
        volumes={"/workspace/data": "cache"},
    )
    first = swarm.buyer.submit_job(writer, pack_working_dir(tmp_path, 2**20))
    _until(lambda: _state(swarm, first["id"], "succeeded", "failed"), "writer", timeout=150)
    done = _settled(swarm, first["id"])
    logs = swarm.buyer.job_logs(first["id"])["text"]
    assert done["state"] == "succeeded", (done, logs[-3000:])
    assert "SEES []" in logs and "COMMITTED" in logs, logs[-3000:]
    assert ("SANDBOXED True" in logs) == (os.geteuid() == 0), logs[-3000:]
    # The last commit comes after the node stopped: a moment after the lease settled.
    files = _until(
        lambda: (
            (f := {x["path"]: x["size"] for x in swarm.buyer.volume_files("cache")})
            and "after.txt" in f
            and f
        ),
        "the last commit",
    )
    assert files == {"after.txt": 33, "models/weights.bin": 256 * 4096}
    assert swarm.buyer.volume("cache")["commits"] == 2
    seller = next(n for n in SELLERS if swarm.ids[n] == done["lease"]["members"][0]["seller_id"])
    _until(lambda: not (swarm.root / seller / "volumes" / done["lease"]["id"]).exists(), "gone")

    # The next job reads it, read-only, on whichever seller the market picks.
    reader = job(
        "reader",
        "python r.py",
        "RTX4090:24GB:1",
        1,
        runtime_env={"working_dir": "."},
        volumes={"/data": {"name": "cache", "readonly": True}},
    )
    second = swarm.buyer.submit_job(reader, pack_working_dir(tmp_path, 2**20))
    _until(lambda: _state(swarm, second["id"], "succeeded", "failed"), "reader", timeout=150)
    _settled(swarm, second["id"])
    logs = _until(lambda: (c := swarm.buyer.job_logs(second["id"]))["done"] and c, "logs")["text"]
    assert f"READ written after the explicit commit {256 * 4096}" in logs, logs[-3000:]
    if os.geteuid() == 0:  # sandboxed: the mount itself is read-only
        assert "READONLY 30" in logs, logs[-3000:]
    assert swarm.buyer.volume("cache")["commits"] == 2


def test_prometheus_scrapes_the_coordinator_and_each_lease_s_ray_nodes_by_label(swarm, tmp_path):
    """The real Prometheus binary with `configs/prometheus.yml`, the coordinator's file-SD
    targets: while a 2-seller job runs, PromQL finds its head's and both workers' Ray
    series under the lease's label, and the coordinator's own."""
    import shutil

    from computeswarm.cluster.local import metrics

    if shutil.which("prometheus") is None:
        pytest.skip("prometheus not installed (apt-get install prometheus; setup.sh does)")
    held = swarm.buyer.submit_job(
        job("held", 'python -c "import time; time.sleep(90)"', "RTX4090:24GB:2", 2)
    )
    running = _until(lambda: _state(swarm, held["id"], "running"), "running", 150)
    lease = running["lease"]["id"]
    port = _free_port()
    admin_key = swarm.admin.http.headers["Authorization"].split()[1]
    prom = metrics.start(
        tmp_path / "prom",
        swarm.url.split("//")[1],
        admin_key,
        swarm.root / "head",
        f"127.0.0.1:{port}",
        scrape_s=1,
    )
    api = f"http://127.0.0.1:{port}/api/v1/query"

    def query(promql: str) -> list[dict]:
        try:
            answer = httpx.get(api, params={"query": promql}, timeout=5).json()
        except (httpx.HTTPError, ValueError):
            return []
        return answer.get("data", {}).get("result", [])

    try:
        up = _until(
            lambda: len(r := query(f'up{{lease="{lease}"}} == 1')) == 3 and r,
            "the lease's 3 nodes scraped",
            90,
        )
        members = {m["seller_id"] for m in running["lease"]["members"]}
        assert {r["metric"]["seller"] for r in up} == {"head", *members}, up
        assert {r["metric"]["job"] for r in up} == {held["id"]}
        ray = _until(
            lambda: (
                len(r := query(f'count by (seller) ({{lease="{lease}", __name__=~"ray_.+"}})')) == 3
                and r
            ),
            "Ray's own series from every node",
            90,
        )
        assert {r["metric"]["seller"] for r in ray} == {"head", *members}
        targets = f"http://127.0.0.1:{port}/api/v1/targets"
        assert _until(lambda: query('up{job="coordinator"} == 1'), "the coordinator scraped", 30), [
            (t["labels"], t["lastError"])
            for t in httpx.get(targets).json()["data"]["activeTargets"]
        ]
        # The operator's figures, from the coordinator: this lease's 2 GPUs are leased.
        assert float(query("computeswarm_gpus_leased")[0]["value"][1]) >= 2
        assert float(query('computeswarm_leases{state="running"}')[0]["value"][1]) >= 1
        assert query("computeswarm_queue_jobs")
        assert float(query("computeswarm_match_wait_seconds_count")[0]["value"][1]) >= 1
    finally:
        stop_session(prom.pid, grace_s=5)
        swarm.buyer.cancel_job(held["id"])
        _settled(swarm, held["id"])


@pytest.mark.browser
def test_the_lease_s_ray_dashboard_opens_through_the_coordinator_in_chromium(swarm):
    """`jobs dashboard`'s link in real headless Chromium: the Cluster page lists the
    lease's nodes, the Jobs page its job, the driver's log streams, and the page never
    holds the lease's token; a stranger, a spent link and a closed lease get 404."""
    from tests.integration.browser import chromium, fetch_json, shoot, until_text

    page = chromium()
    ticking = "import time\nfor i in range(600): print(f'tick {i}', flush=True); time.sleep(0.5)"
    held = swarm.buyer.submit_job(
        job("dash", f"python -c {shlex.quote(ticking)}", "RTX4090:24GB:2", 2)
    )
    try:
        running = _until(lambda: _state(swarm, held["id"], "running"), "running", 150)
        lease = running["lease"]
        submission = f"{held['id']}-{lease['id']}"
        done = subprocess.run(
            [
                *CS,
                "jobs",
                "dashboard",
                held["id"],
                "--coordinator",
                swarm.url,
                "--api-key",
                swarm.buyer_key,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        link = done.stdout.strip()
        home = f"{swarm.url}/dashboards/{lease['id']}/"
        assert link.startswith(f"{home}?ticket=")
        page.get(link)
        assert page.current_url.split("#")[0] == home, "the ticket stays out of the address bar"
        until_text(page, lambda t: "Cluster" in t and "Jobs" in t, "Ray's Overview page")
        assert httpx.get(link, timeout=10).status_code == 404, "a spent link opens nothing"
        assert httpx.get(home, timeout=10).status_code == 404, "no session, no dashboard"

        # Cluster: the head and both sellers' nodes, each by its address.
        nodes = _until(
            lambda: (
                len(
                    r := fetch_json(page, "api/v0/nodes?detail=true&limit=100")
                    .get("data", {})
                    .get("result", {})
                    .get("result", [])
                )
                >= 3
                and r
            ),
            "the lease's 3 nodes in Ray's API",
            60,
        )
        sellers = {(n.get("labels") or {}).get("cs-seller") for n in nodes}
        assert {m["seller_id"] for m in lease["members"]} <= sellers, nodes
        page.get(home + "#/cluster")
        until_text(page, lambda t: all(n["node_ip"] in t for n in nodes), "every node's address")
        shoot(page, "dashboard-cluster")
        page.get(home + "#/jobs")
        until_text(page, lambda t: submission in t, "the job on the Jobs page")
        shoot(page, "dashboard-jobs")
        driver = fetch_json(page, f"api/jobs/{submission}")["driver_node_id"]
        assert driver in {n["node_id"] for n in nodes}
        log_file = f"job-driver-{submission}.log"
        page.get(home + f"#/logs/?nodeId={driver}&fileName={log_file}")
        until_text(page, lambda t: log_file in t, "the driver's log file on its node")
        page.find_element("link text", log_file).click()
        first = until_text(page, lambda t: "tick " in t, "the driver's log")
        seen = max(int(w) for w in re.findall(r"tick (\d+)", first))
        time.sleep(3)
        page.execute_script(
            "[...document.querySelectorAll('button')]"
            ".find(b => b.textContent.trim().toLowerCase() === 'refresh').click()"
        )
        until_text(page, lambda t: f"tick {seen + 4}" in t, "the log going on", 30)
        # And followed: Ray's log stream, chunk by chunk as the driver prints, through
        # the proxy's streamed response (the browser reads the body as it arrives).
        streamed = page.execute_async_script(
            "const done = arguments[arguments.length - 1], got = [], t0 = Date.now();"
            "fetch(arguments[0]).then(async r => {"
            "  const reader = r.body.getReader(), text = new TextDecoder();"
            "  setTimeout(() => reader.cancel(), 5000);"
            "  try { for (;;) { const {value, done: end} = await reader.read(); if (end) break;"
            "    got.push([Date.now() - t0, text.decode(value)]); } } catch (e) {}"
            "  done({status: r.status, got});"
            "}, e => done({error: String(e)}));",
            f"api/v0/logs/stream?node_id={driver}&filename={log_file}&lines=1",
        )
        ticks = [
            (ms, w) for ms, chunk in streamed.get("got", []) for w in re.findall(r"tick \d+", chunk)
        ]
        assert len(ticks) >= 4 and ticks[-1][0] - ticks[0][0] > 1000, streamed
        shoot(page, "dashboard-log")
        assert swarm_token(swarm, lease["id"]) not in page.page_source

        # Another buyer's key finds no such job (and without a session, no dashboard: above).
        other = swarm.admin.create_account("dash-stranger", "buyer")
        stranger = CoordinatorClient(swarm.url, other["api_key"])
        with pytest.raises(ApiError) as refused:
            stranger.dashboard_link(held["id"])
        assert refused.value.status == 404
        swarm.buyer.cancel_job(held["id"])
        _settled(swarm, held["id"])
        page.refresh()
        assert "no such dashboard" in page.page_source, "a closed lease's dashboard is gone"
    finally:
        page.quit()  # the browser and its driver, by their own PIDs
        if swarm.buyer.job(held["id"])["state"] == "running":
            swarm.buyer.cancel_job(held["id"])
        _settled(swarm, held["id"])


def swarm_token(swarm, lease_id: str) -> str:
    import sqlite3

    with sqlite3.connect(swarm.root / "head" / "coordinator.db") as db:
        return db.execute("SELECT token FROM leases WHERE id = ?", (lease_id,)).fetchone()[0]


def test_the_sdk_submits_follows_and_waits_for_a_job(swarm, tmp_path):
    from computeswarm.sdk import NotFound, connect

    buyer = connect(swarm.url, swarm.buyer_key)
    (tmp_path / "main.py").write_text("print('hello from the sdk', flush=True)\n")
    spec = job("sdk", "python main.py", "RTX4090:24GB:1", 1, runtime_env={"working_dir": "."})
    submitted = buyer.submit(spec, working_dir=tmp_path)
    assert buyer.quote(spec).matched
    assert "hello from the sdk" in list(submitted.logs(follow=True))
    final = submitted.wait(timeout=120, check=True)
    assert final.state == "succeeded" and submitted.cost == final.cost is not None
    assert submitted.id in {j.id for j in buyer.jobs()}
    with pytest.raises(NotFound):
        buyer.job("j-000000000000")


def test_a_seller_s_local_dashboard_shows_its_ledger_and_changes_its_price_in_chromium(swarm):
    """The dashboard the agent serves on the seller's 127.0.0.1, in real headless
    Chromium: it refuses requests without the token, its earnings are the ledger's, its
    charts are drawn, and a confirmed price change is the offer the coordinator shows."""
    from decimal import Decimal

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.integration.browser import chromium, fetch_json, shoot, until_text

    paid = swarm.buyer.submit_job(job("paid", "python -c 'print(1)'", "RTX4090:24GB:1", 1))
    ended = _until(lambda: _state(swarm, paid["id"], "succeeded", "failed"), "the end", 150)
    assert ended["state"] == "succeeded", ended
    seller_id = _settled(swarm, paid["id"])["lease"]["members"][0]["seller_id"]
    name = next(n for n, i in swarm.ids.items() if i == seller_id)
    printed = subprocess.run(
        [*CS, "seller", "dashboard", "--state-dir", str(swarm.root / name)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert printed.returncode == 0, printed.stderr
    link = printed.stdout.strip()
    home = link.split("login?")[0]
    assert home.startswith("http://127.0.0.1:"), link
    for path in ("", "api/state", "app.js"):
        assert httpx.get(home + path, timeout=10).status_code == 401, path
    assert httpx.get(home + "login?token=x", timeout=10).status_code == 401

    account = f"seller:{seller_id}"
    released = swarm.admin.ledger(account)["balances_micros"][account]
    assert released > 0
    with pytest.raises(ApiError, match="no seller"):  # a buyer learns nothing of earnings
        swarm.buyer.seller_earnings(seller_id)
    original = swarm.admin.seller(seller_id)["offer"]["price_per_gpu_hour"]
    page = chromium()
    try:
        page.get(link)
        shown = f"${released / 1e6:.4f}"
        until_text(page, lambda t: name in t and shown in t, "the ledger's earnings")
        state = fetch_json(page, "/api/state")
        assert state["earnings"]["released_micros"] == released
        assert page.find_element(By.ID, "released-total").text == shown
        assert page.find_element(By.ID, "released-24h").text == shown  # all of it today
        bars = page.find_elements(By.CSS_SELECTOR, "#earnings-chart rect")
        assert len(bars) == 30 and float(bars[-1].get_attribute("height")) > 0
        uptime = page.find_elements(By.CSS_SELECTOR, "#uptime-chart rect")
        assert len(uptime) == 30 and float(uptime[-1].get_attribute("height")) > 0
        assert state["uptime"][-1]["up_minutes"] >= 1  # the agent has heartbeated today
        assert "account" not in json.dumps(state["earnings"])  # no buyer in a seller's view
        shoot(page, "seller-dashboard")

        def ask(price: str, accept: bool) -> None:
            field = page.find_element(By.ID, "new-price")
            field.clear()
            field.send_keys(price)
            page.find_element(By.ID, "set-price").click()
            alert = WebDriverWait(page, 10).until(expected_conditions.alert_is_present())
            assert price in alert.text and original in alert.text
            alert.accept() if accept else alert.dismiss()

        ask("0.31", accept=False)  # not confirmed: nothing changes
        time.sleep(1)
        assert swarm.admin.seller(seller_id)["offer"]["price_per_gpu_hour"] == original
        ask("0.37", accept=True)
        until_text(page, lambda t: "Now offered at $0.37" in t, "the new price")
        market = {s["id"]: s["offer"] for s in swarm.buyer.sellers()}
        assert Decimal(market[seller_id]["price_per_gpu_hour"]) == Decimal("0.37")  # buyers see
        assert (
            json.loads((swarm.root / name / "enrollment.json").read_text())["price_per_gpu_hour"]
            == "0.37"
        )  # and what a restarted agent offers
        shoot(page, "seller-dashboard-price")
    finally:
        page.quit()
        token = (swarm.root / name / "dashboard-token").read_text().strip()
        httpx.post(
            home + "api/price",
            headers={"Authorization": f"Bearer {token}"},
            json={"price": original},
            timeout=30,
        ).raise_for_status()
    assert Decimal(swarm.admin.seller(seller_id)["offer"]["price_per_gpu_hour"]) == Decimal(
        original
    )


def test_a_closed_lease_leaves_no_temp_dir_of_its_head_or_its_workers(swarm):
    """Each lease node's Ray temp dir (its sandbox's /tmp: Ray's sessions, the lease token)
    goes with the node once the lease has settled."""
    submitted = swarm.buyer.submit_job(job("tidy", "python -c pass", "RTX4090:24GB:1", 1))
    lease = _until(lambda: swarm.buyer.job(submitted["id"])["lease"], "a lease")["id"]
    _until(lambda: list(RAY_TEMP_ROOT.glob(f"{lease}*")), "the lease's temp dirs", timeout=60)
    done = _settled(swarm, submitted["id"])
    assert done["state"] == "succeeded", done
    left = _until_none(lambda: list(RAY_TEMP_ROOT.glob(f"{lease}*")), timeout=30)
    assert left == [], f"left behind: {left}"


STORE_PROBE = """
import os, boto3, botocore
s3 = boto3.client("s3", config=botocore.config.Config(s3={"addressing_style": "path"}))
bucket, prefix = os.environ["COMPUTESWARM_S3_BUCKET"], os.environ["COMPUTESWARM_S3_PREFIX"]
s3.put_object(Bucket=bucket, Key=prefix + "result.txt", Body=b"written on a seller")
for key in ("other-buyer/jobs/x/secret.txt", prefix.split("/")[0] + "/jobs/other-job/x"):
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
        print("WROTE", key)
    except botocore.exceptions.ClientError as e:
        print("REFUSED", e.response["Error"]["Code"])
print("KEY", os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"], prefix)
"""


def test_a_lease_writes_its_own_prefix_in_the_store_and_its_key_dies_with_it(swarm, tmp_path):
    """Each lease gets an access key of its own: the job writes under its prefix, is refused
    elsewhere (another buyer's, or its buyer's other jobs), and the key is revoked once
    the lease is over. The root key never reaches a lease."""
    from botocore.exceptions import ClientError

    from computeswarm.cluster.objects.client import s3_client
    from computeswarm.cluster.objects.server import Credentials
    from computeswarm.jobs.upload import pack_working_dir

    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "probe.py").write_text(STORE_PROBE)
    spec = job("store", "python probe.py", "RTX4090:24GB:1", 1) | {
        "runtime_env": {"working_dir": ".", "env_vars": {"AWS_ACCESS_KEY_ID": "spoofed"}}
    }
    submitted = swarm.buyer.submit_job(spec, pack_working_dir(tmp_path / "job", 2**22))
    done = _settled(
        swarm,
        _until(lambda: _state(swarm, submitted["id"], "succeeded", "failed"), "end", 150)["id"],
    )
    logs = _until(lambda: (c := swarm.buyer.job_logs(done["id"]))["done"] and c, "logs")["text"]
    assert done["state"] == "succeeded", logs[-2000:]
    assert logs.count("REFUSED AccessDenied") == 2 and "WROTE" not in logs, logs[-2000:]
    _, access, secret, prefix = next(
        line for line in logs.splitlines() if line.startswith("KEY")
    ).split()
    root = json.loads((swarm.root / "head" / "objects" / "root.json").read_text())
    assert access == f"lease-{done['lease']['id']}" and secret != root["secret_key"]
    assert prefix.split("/")[1:] == ["jobs", done["id"], ""], prefix

    store = swarm.objects()
    assert store.get_bytes(prefix + "result.txt") == b"written on a seller"
    dead = s3_client(store.endpoint, Credentials(access, secret))
    with pytest.raises(ClientError, match="InvalidAccessKeyId"):
        dead.get_object(Bucket="computeswarm", Key=prefix + "result.txt")


def _until_none(probe, timeout: float):
    """`probe()` once it is empty, or its last value when time is up."""
    deadline = time.monotonic() + timeout
    while (value := probe()) and time.monotonic() < deadline:
        time.sleep(0.3)
    return value


def test_a_vanished_seller_fails_the_job_with_a_reason_and_stops_its_billing(swarm):
    sleeper = job("sleeper", 'python -c "import time; time.sleep(120)"', "RTX4090:24GB:2", 2)
    submitted = swarm.buyer.submit_job(sleeper)
    running = _until(lambda: _state(swarm, submitted["id"], "running"), "running", timeout=150)
    victim = next(m for m in running["lease"]["members"] if not m["driver"])
    name = next(n for n, i in swarm.ids.items() if i == victim["seller_id"])
    # The seller vanishes: its agent and its Ray node die at once.
    swarm.vanish(name)
    killed = time.time()
    ended = _until(lambda: _state(swarm, submitted["id"], "failed"), "job failed", timeout=30)
    assert time.time() - killed < 15, "loss not noticed in seconds"
    assert "lost" in ended["reason"] and victim["seller_id"] in ended["reason"], ended
    lost = next(m for m in ended["lease"]["members"] if m["seller_id"] == victim["seller_id"])
    assert lost["state"] in ("lost", "dropped")
    assert lost["detached_at"] <= killed + 1.0, "billing ran past the loss"
    revive(swarm, name)


def _settled(swarm, job_id: str) -> dict:
    """The job once its lease is closed and billed (a moment after the job ends)."""
    return _until(
        lambda: (job := swarm.buyer.job(job_id))["cost"] is not None and job,
        "the lease settled",
        timeout=60,
    )


def revive(swarm, name: str) -> None:
    """The vanished seller's box comes back: `seller run` reconnects it (same address)."""
    swarm.spawn(f"{name}-again", [*CS, "seller", "run", "--state-dir", str(swarm.root / name)])
    seller_id = swarm.ids[name]
    _until(
        lambda: any(s["id"] == seller_id and s["state"] == "online" for s in swarm.admin.sellers()),
        f"{name} online again",
        timeout=60,
    )


def _all_online(swarm) -> bool:
    """The module's sellers are online (an earlier test may have added s4)."""
    online = {s["name"] for s in swarm.admin.sellers() if s["state"] == "online"}
    return online >= set(SELLERS)


def _state(swarm, job_id: str, *states: str, reason: str = "") -> dict | None:
    current = swarm.buyer.job(job_id)
    return current if current["state"] in states and reason in current["reason"] else None


def _until(predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _admin_key(root, url: str) -> str:
    def ready() -> str | None:
        path = root / "head" / "admin.key"
        try:
            ok = httpx.get(f"{url}/readyz", timeout=1).status_code == 200
        except httpx.TransportError:
            ok = False
        return path.read_text().strip() if ok and path.exists() else None

    return _until(ready, "the coordinator")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_spent_budget_ends_the_lease_and_the_buyer_pays_no_more(swarm):
    # 0.001 at 0.88/h for two GPUs lasts about 4 seconds of the 120 the job wants.
    sleeper = job("thrifty", 'python -c "import time; time.sleep(120)"', "RTX4090:24GB:2", 2)
    sleeper["pricing"]["budget"] = "0.001"
    submitted = swarm.buyer.submit_job(sleeper)
    ended = _until(
        lambda: _state(swarm, submitted["id"], "failed", "succeeded"), "budget end", timeout=150
    )
    assert ended["state"] == "failed" and ended["reason"] == "budget spent", ended
    ended = _settled(swarm, submitted["id"])
    assert ended["lease"]["escrow"] == "0.001000"
    assert float(ended["cost"]) <= 0.001
    admin = {"Authorization": f"Bearer {_admin_key(swarm.root, swarm.url)}"}
    metrics = httpx.get(f"{swarm.url}/metrics", headers=admin).text
    sold = next(
        line
        for line in metrics.splitlines()
        if line.startswith("computeswarm_gpu_seconds_sold_total")
    )
    assert float(sold.rsplit(" ", 1)[1]) > 0


def test_supply_that_appears_later_is_matched_in_queue_order(swarm):
    first = swarm.buyer.submit_job(job("first", "python -c \"print('one')\"", "H100:80GB:1", 1))
    second = swarm.buyer.submit_job(job("second", "python -c \"print('two')\"", "H100:80GB:1", 1))
    for queued in (first, second):
        _until(
            lambda q=queued: _state(swarm, q["id"], "pending", reason="waiting for supply"),
            "queued",
        )
    # An H100 seller joins: the first job gets it, the second waits its turn, then runs.
    swarm.join("s4", "H100:80GB:1", "0.50")
    # A new seller's first node can take a while on a loaded box (once it failed to join
    # and was started again): its job's end, then its bill.
    _until(lambda: _state(swarm, first["id"], "succeeded", "failed"), "the first job", 180)
    done_first = _settled(swarm, first["id"])
    done_second = _settled(swarm, second["id"])
    assert done_first["state"] == done_second["state"] == "succeeded"
    assert done_first["started_at"] < done_second["started_at"]
    assert done_second["started_at"] >= done_first["ended_at"]


@pytest.mark.slow  # ~2 min; a replacement's Ray node once timed out joining (see the note)
def test_a_serve_lease_scales_with_load_and_replaces_a_lost_replicas_seller(swarm, tmp_path):
    """Serve on a 2-seller lease: load adds the second replica; the seller under one
    replica vanishes mid-request; requests in flight end with a retryable error, not a
    hang; the lease takes the spare seller and Serve puts the replica back on it."""
    from typer.testing import CliRunner

    from computeswarm.cli import app
    from computeswarm.jobs.upload import pack_working_dir
    from tests.integration.test_serve_app import make_models

    _until(lambda: _all_online(swarm), "s1, s2 and s3 online")
    make_models(tmp_path / "job")  # tiny-gpt2 and adapters/adder
    spec = {
        "kind": "serve",
        "name": "repairable-api",
        "runtime_env": {"working_dir": "."},
        "model": "tiny-gpt2",
        "adapters": {"adder": "./adapters/adder"},
        "replicas": {"min": 1, "max": 2},
        "max_concurrent_requests": 2,  # target 1 request in flight per replica
        "max_tokens": 200,
        "rate_limits": {"requests_per_second": 1000, "tokens_per_second": 1_000_000},
        "resources": {"gpus": "any:24GB:2", "nodes": 2, "memory_gb_per_node": 0.5},
        "pricing": {"max_price_per_gpu_hour": "0.60"},
        "max_duration": "10m",
    }
    job_id = swarm.buyer.submit_job(spec, pack_working_dir(tmp_path / "job", 2**22))["id"]
    url = f"{swarm.url}/v1/serve/{job_id}/v1/completions"
    auth = {"Authorization": f"Bearer {swarm.buyer_key}"}

    def replicas(running: int):
        current = swarm.buyer.job(job_id)
        assert current["state"] not in ("succeeded", "failed", "cancelled"), current
        serve = current["serve"]
        ok = serve["ready"] and (serve["replicas"] or {}).get("running") == running
        return current if ok else None

    def scaling_up() -> bool:
        counts = swarm.buyer.job(job_id)["serve"]["replicas"] or {}
        return counts.get("running") == 1 and counts.get("pending") == 1

    name = None  # the vanished seller's
    try:
        started = _until(lambda: replicas(1), "the serve job ready on 1 replica", timeout=240)
        load = Load(url, auth, threads=3)
        with load:
            _until(lambda: scaling_up() or replicas(2), "Serve adding a replica", timeout=30)
            load.clients = 0  # leave the cores to the new replica's start
            _until(lambda: replicas(2), "a second replica running", timeout=90)
            load.clients = 3
            victim = next(m for m in started["lease"]["members"] if not m["driver"])
            name = next(n for n, i in swarm.ids.items() if i == victim["seller_id"])
            time.sleep(1.0)  # both replicas busy: each request takes about a second
            killed = time.monotonic()
            swarm.vanish(name)

            def repaired():
                current = replicas(2)
                if current is None:
                    return None
                attached = {
                    m["seller_id"] for m in current["lease"]["members"] if m["state"] == "attached"
                }
                return len(attached) == 2 and victim["seller_id"] not in attached and current

            # The replica's process outlives its raylet by seconds: requests keep meeting
            # it until it dies under one of them.
            _until(lambda: not replicas(2), "Serve noticing the lost replica", timeout=30)
            load.clients = 0  # the replacement starts sooner
            back = _until(repaired, "the lost replica back on a replacement", timeout=150)
            restored = time.monotonic()
            load.clients = 3
            time.sleep(3.0)  # requests served by the replacement too
        who = ["--coordinator", swarm.url, "--api-key", swarm.buyer_key]
        shown = CliRunner().invoke(app, ["jobs", "status", job_id, *who])
        assert "replicas: 2 running, 0 pending (autoscaling 1-2)" in shown.output, shown.output
        noticed = [r for r in load.results if r.ended > killed and r.started < restored]
        in_flight = [r for r in load.results if r.started < killed < r.ended]
        after = [r for r in load.results if r.started > restored]
        assert {r.outcome for r in load.results} <= {"ok", "retryable"}, load.other()
        assert "retryable" in {r.outcome for r in noticed}, noticed
        assert all(r.ended - killed < 65 for r in in_flight), "a request hung on the lost replica"
        assert after and all(r.outcome == "ok" for r in after), after
        assert back["state"] == "running" and back["lease"]["id"] == started["lease"]["id"]
        lost = next(m for m in back["lease"]["members"] if m["seller_id"] == victim["seller_id"])
        assert lost["state"] in ("lost", "dropped")
    finally:
        swarm.buyer.cancel_job(job_id)
        if name:
            revive(swarm, name)
    _until(
        lambda: swarm.buyer.job(job_id)["lease"]["state"] in ("closed", "failed"),
        "lease released",
        timeout=60,
    )


@dataclass
class Outcome:
    started: float
    ended: float
    outcome: str  # ok | retryable | what else happened
    status: int


class Load:
    """Streaming completions from `clients` clients back to back until the block ends
    (`clients` may be lowered on the way: the others pause)."""

    def __init__(self, url: str, headers: dict, threads: int):
        self.url, self.headers, self.clients = url, headers, threads
        self.results: list[Outcome] = []
        self.stop = threading.Event()
        self.workers = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def __enter__(self) -> Load:
        for worker in self.workers:
            worker.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for worker in self.workers:
            worker.join(timeout=120)
        assert not any(w.is_alive() for w in self.workers), "a client hung past 120 s"

    def other(self) -> list[Outcome]:
        return [r for r in self.results if r.outcome not in ("ok", "retryable")]

    def _run(self, index: int) -> None:
        body = {"model": "adder", "prompt": "1+2=", "max_tokens": 200, "temperature": 0}
        with httpx.Client(timeout=90, headers=self.headers) as http:
            while not self.stop.is_set():
                if index >= self.clients:
                    time.sleep(0.1)
                    continue
                started = time.monotonic()
                try:
                    with http.stream("POST", self.url, json=body | {"stream": True}) as r:
                        text = r.read().decode()
                        outcome = _stream_outcome(r.status_code, text)
                        status = r.status_code
                except httpx.HTTPError as e:
                    outcome, status = f"client error {e!r}", 0
                self.results.append(Outcome(started, time.monotonic(), outcome, status))
                if outcome == "retryable":
                    time.sleep(1.0)  # as Retry-After says


def _stream_outcome(status: int, text: str) -> str:
    if status == 503:
        return "retryable" if json.loads(text).get("retryable") else f"503 {text[:200]}"
    if status != 200:
        return f"{status} {text[:200]}"
    events = parse_sse(text)
    errors = [e for e in events if isinstance(e, dict) and "error" in e]
    if errors:
        return "retryable" if errors[-1]["error"].get("retryable") else f"error {errors[-1]}"
    return "ok" if events and events[-1] == "[DONE]" else f"unfinished {text[-200:]}"


@pytest.mark.slow  # CI covers the requeue and Tuner.restore through the e2e coordinator crash
def test_a_sweep_whose_driver_seller_vanishes_resumes_on_a_new_lease(swarm, tmp_path):
    """The seller running a sweep's driver vanishes: the job goes back to the queue, a new
    lease restores the Tune experiment, and no trial finished before the loss runs again."""
    from computeswarm.jobs.train.data import synthetic_addition
    from computeswarm.jobs.train.tiny import make_tiny_model
    from computeswarm.jobs.upload import pack_working_dir
    from tests.e2e.test_sweep_and_serve import FINISHED, sweep_spec

    _until(lambda: _all_online(swarm), "s1, s2 and s3 online")
    make_tiny_model(tmp_path / "job" / "model", "gpt2", layers=2, width=32)
    synthetic_addition(tmp_path / "job" / "data.jsonl", n=300)
    trials = 4
    spec = sweep_spec(trials) | {
        "name": "vanishing-sweep",
        "resources": {"gpus": "any:24GB:2", "nodes": 2, "memory_gb_per_node": 1.0},
        "max_duration": "10m",
    }
    spec["trial"]["lora"]["training"]["steps"] = 100
    job_id = swarm.buyer.submit_job(spec, pack_working_dir(tmp_path / "job", 2**22))["id"]

    def finished() -> dict:
        board = swarm.buyer.sweep(job_id)
        return {t["trial_id"]: t for t in board["trials"] if t["state"] in FINISHED}

    before = _until(lambda: finished(), "a finished trial", timeout=400)
    assert len(before) < trials, "the sweep ended before the loss: nothing was tested"
    first = swarm.buyer.job(job_id)
    driver = next(m for m in first["lease"]["members"] if m["driver"])
    name = next(n for n, i in swarm.ids.items() if i == driver["seller_id"])
    swarm.vanish(name)
    try:
        requeued = _until(
            lambda: _state(swarm, job_id, "pending", "running", reason="requeued"),
            "the sweep requeued",
            timeout=30,
        )
        assert driver["seller_id"] in requeued["reason"], requeued
        done = _until(
            lambda: _state(swarm, job_id, "succeeded", "failed", "cancelled"), "the end", 500
        )
        board = swarm.buyer.sweep(job_id)
        assert done["state"] == "succeeded", (done, swarm.buyer.job_logs(job_id)["text"][-3000:])
    finally:
        revive(swarm, name)
    kept = {t["trial_id"]: t for t in board["trials"] if t["state"] != "error"}
    assert sorted(t["index"] for t in kept.values()) == list(range(trials)), board["trials"]
    for trial_id, old in before.items():  # finished before the loss: not run again
        new = kept[trial_id]
        assert (new["iterations"], new["history"], new["state"], new["lease_id"]) == (
            old["iterations"],
            old["history"],
            old["state"],
            first["lease"]["id"],
        ), f"finished trial {trial_id} changed after the loss"
    leases = {t["lease_id"] for t in kept.values()}
    assert len(leases) == 2 and done["lease"]["id"] != first["lease"]["id"], kept
    # The experiment lived in the object store, not on the lost seller's disk or the head's.
    keys = [o.key for o in swarm.objects().list("") if "/runs/vanishing-sweep" in o.key]
    stored = {k.rsplit("/", 1)[1] for k in keys if "/trials/" in k}
    assert {f"{t}.json" for t in kept} <= stored, keys
    assert any(k.endswith("/sweep.json") for k in keys) and any("/experiment/" in k for k in keys)
    assert not list((swarm.root / "head").glob("storage/*/sweeps")), "a sweep folder on disk"
