"""Datasets against a real coordinator, object store and HTTP server (no root needed):
pushes send only missing chunks (a killed push resumes), versions are immutable and
checked end to end, other buyers see nothing until shared, hostile chunks and manifests
store nothing, the quota refuses up front, and a spec's dataset is pinned at submit."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from computeswarm.cluster.client import CoordinatorClient
from computeswarm.cluster.errors import ApiError, Forbidden, NotFound
from computeswarm.cluster.objects.layout import dataset_prefix
from computeswarm.data.chunking import scan
from computeswarm.data.refs import parse_ref
from computeswarm.data.transfer import pull, push
from computeswarm.jobs.upload import pack_working_dir
from tests.integration.conftest import make_head
from tests.integration.http_server import ServerThread

CS = [sys.executable, "-m", "computeswarm.cli"]


class Buyers:
    def __init__(self, head, url: str):
        self.head, self.url = head, url
        self.admin = CoordinatorClient(url, head.admin_key)
        self.keys: dict[str, str] = {}
        self.ids: dict[str, str] = {}

    def client(self, name: str) -> CoordinatorClient:
        if name not in self.keys:
            made = self.admin.create_account(name, "buyer")
            self.keys[name], self.ids[name] = made["api_key"], made["account_id"]
            self.admin.deposit(made["account_id"], "10")
        return CoordinatorClient(self.url, self.keys[name], timeout=60)


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    from computeswarm.cluster.api.app import create_app

    head = make_head(tmp_path_factory.mktemp("datasets-head"))
    try:
        with ServerThread(create_app(head.coordinator)) as server:
            yield Buyers(head, server.url)
    finally:
        head.coordinator.stop()


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def noise(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def stored_chunks(swarm, account: str, name: str) -> set[str]:
    prefix = dataset_prefix(swarm.ids[account], name) + "chunks/"
    return {o.key.rsplit("/", 1)[1] for o in swarm.head.coordinator.objects.store.list(prefix)}


def settled(read, quiet_s: float = 1.0, timeout_s: float = 30.0):
    """`read()` once it has stopped changing for `quiet_s`."""
    deadline = time.monotonic() + timeout_s
    last, since = read(), time.monotonic()
    while time.monotonic() - since < quiet_s and time.monotonic() < deadline:
        time.sleep(0.1)
        if (now := read()) != last:
            last, since = now, time.monotonic()
    return last


def test_a_pushed_folder_pulls_back_byte_for_byte_and_a_repush_sends_nothing(swarm, tmp_path):
    alice = swarm.client("alice")
    src = write_tree(
        tmp_path / "src",
        {"train.jsonl": b'{"text": "1+1=2"}\n' * 1000, "eval/part-0.bin": noise(3 * 2**20, 1)},
    )
    first = push(alice, src, "numbers")
    assert first.version["ref"] == "numbers@1" and first.version["files"] == 2
    assert (
        first.bytes_sent
        == first.bytes_total
        == sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    )
    again = push(alice, src, "numbers")
    assert (
        again.version["ref"] == "numbers@1" and again.chunks_sent == 0
    )  # same bytes, same version
    (src / "extra.txt").write_text("one more file")
    second = push(alice, src, "numbers")
    assert second.version["ref"] == "numbers@2" and second.chunks_sent == 1

    got = pull(alice, parse_ref("numbers@1"), tmp_path / "out")
    assert got.bytes_fetched == first.bytes_total
    assert (tmp_path / "out" / "eval" / "part-0.bin").read_bytes() == (
        src / "eval" / "part-0.bin"
    ).read_bytes()
    assert not (tmp_path / "out" / "extra.txt").exists()  # version 1 never changes
    listed = {d["ref"]: d for d in alice.datasets()}
    assert listed["numbers@2"]["versions"] == 2
    shown = alice.dataset("numbers")
    assert [v["ref"] for v in shown["versions"]] == ["numbers@1", "numbers@2"]
    assert shown["versions"][0]["id"] == scan(tmp_path / "out").manifest.id
    with pytest.raises(NotFound, match="no version 7; its newest is numbers@2"):
        alice.dataset_version("numbers", 7)


def test_a_killed_push_resumes_with_only_the_missing_chunks_and_one_changed_byte_sends_one(
    swarm, tmp_path
):
    bob = swarm.client("bob")
    data = noise(100 * 2**20, 7)
    src = write_tree(tmp_path / "big", {"weights.bin": data})
    total_chunks = len(scan(src).pieces)
    env = {**os.environ, "COMPUTESWARM_HOME": str(tmp_path / "home")}
    command = [*CS, "datasets", "push", str(src), "--name", "big", "--streams", "2"]
    command += ["--coordinator", swarm.url, "--api-key", swarm.keys["bob"]]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while len(stored_chunks(swarm, "bob", "big")) < total_chunks // 2:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "the push made no progress"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    before = settled(lambda: stored_chunks(swarm, "bob", "big"))  # (requests in flight land)
    assert total_chunks // 2 <= len(before) < total_chunks
    with pytest.raises(NotFound):
        bob.dataset("big")  # no version until every chunk is in

    resumed = push(bob, src, "big")
    assert resumed.version["ref"] == "big@1"
    assert resumed.chunks_sent == total_chunks - len(before)
    sizes = {c.sha256: c.size for c in scan(src).manifest.chunks()}
    assert resumed.bytes_sent == sum(size for sha, size in sizes.items() if sha not in before)

    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    (src / "weights.bin").write_bytes(bytes(flipped))
    changed = push(bob, src, "big")
    assert changed.version["ref"] == "big@2"
    assert changed.chunks_sent == 1 and changed.bytes_sent <= 4 * 2**20


def test_other_buyers_see_nothing_until_shared_then_read_only(swarm, tmp_path):
    carol, dave = swarm.client("carol"), swarm.client("dave")
    src = write_tree(tmp_path / "src", {"data.jsonl": b'{"text": "secret"}\n'})
    push(carol, src, "private")
    for attempt in (
        lambda: dave.dataset("private", owner="carol"),
        lambda: dave.dataset_manifest("private", 1, owner="carol"),
        lambda: dave.chunk("private", scan(src).manifest.files[0].chunks[0].sha256, owner="carol"),
    ):
        with pytest.raises(NotFound):
            attempt()
    carol.share_dataset("private", "dave")
    assert carol.dataset("private")["shared_with"] == ["dave"]
    got = pull(dave, parse_ref("carol/private@1"), tmp_path / "dave")
    assert (tmp_path / "dave" / "data.jsonl").read_bytes() == b'{"text": "secret"}\n'
    assert got.files == 1
    assert "carol/private@1" in {d["ref"] for d in dave.datasets()}
    # Read-only: dave's push of that name makes his own dataset, never a version of carol's.
    assert push(dave, src, "private").version["ref"] == "private@1"
    assert [v["ref"] for v in carol.dataset("private")["versions"]] == ["private@1"]
    with pytest.raises(NotFound):
        dave.share_dataset("private", "dave")  # not his to share with himself
    carol.share_dataset("private", "dave", revoke=True)
    with pytest.raises(NotFound):
        dave.dataset_manifest("private", 1, owner="carol")


def test_forged_chunks_and_lying_manifests_store_nothing(swarm, tmp_path):
    erin = swarm.client("erin")
    real = b"real bytes"
    sha = __import__("hashlib").sha256(real).hexdigest()
    with pytest.raises(ApiError, match="do not hash to its name"):
        erin.put_chunk("forged", sha, b"other bytes")
    with pytest.raises(ApiError, match="not a sha256"):
        erin.put_chunk("forged", "A" * 64, real)
    with pytest.raises(ApiError):  # (the path never reaches a route that writes)
        erin.put_chunk("forged", "../../admin", real)
    assert stored_chunks(swarm, "erin", "forged") == set()
    manifest = {
        "files": [
            {
                "path": "a.txt",
                "size": len(real),
                "sha256": sha,
                "chunks": [{"sha256": sha, "size": len(real)}],
            }
        ]
    }
    with pytest.raises(ApiError, match="not in the store yet"):
        erin.commit_dataset("forged", manifest)
    erin.put_chunk("forged", sha, real)
    for path in ("../escape", "/etc/passwd", "a/../../b"):
        bad = {"files": [{**manifest["files"][0], "path": path}]}
        with pytest.raises(ApiError, match="not a valid manifest"):
            erin.commit_dataset("forged", bad)
    with pytest.raises(ApiError, match="dataset name"):
        erin.missing_chunks("a..b", [(sha, len(real))])
    assert erin.commit_dataset("forged", manifest)["ref"] == "forged@1"
    assert erin.put_chunk("forged", sha, real) is False  # there already


def test_a_push_past_the_quota_is_refused_before_a_byte_is_sent(swarm, tmp_path):
    frank = swarm.client("frank")
    service = swarm.head.coordinator.datasets
    src = write_tree(tmp_path / "src", {"x.bin": noise(2 * 2**20, 9)})
    quota, service.quota_bytes = service.quota_bytes, 2**20
    try:
        with pytest.raises(ApiError, match="storage quota"):
            push(frank, src, "toolarge")
    finally:
        service.quota_bytes = quota
    assert stored_chunks(swarm, "frank", "toolarge") == set()


def test_a_lease_s_chunks_are_for_its_sellers_only(swarm, tmp_path):
    grace = swarm.client("grace")
    src = write_tree(tmp_path / "src", {"d.jsonl": b"{}\n"})
    push(grace, src, "g")
    sha = scan(src).manifest.files[0].chunks[0].sha256
    with pytest.raises(Forbidden, match="seller"):
        grace.lease_chunk("l-000000000000", sha)
    seller = swarm.head.enroll("outsider")
    outsider = CoordinatorClient(swarm.url, seller["api_key"])
    with pytest.raises(NotFound):
        outsider.lease_datasets("l-000000000000")
    with pytest.raises(NotFound):
        outsider.lease_chunk("l-000000000000", sha)


def test_a_spec_s_dataset_is_pinned_to_a_version_at_submit(swarm, tmp_path):
    henry = swarm.client("henry")
    write_tree(tmp_path / "v", {"train.jsonl": b'{"text": "a"}\n'})
    push(henry, tmp_path / "v", "corpus")
    write_tree(tmp_path / "v", {"train.jsonl": b'{"text": "b"}\n'})
    second = push(henry, tmp_path / "v", "corpus").version
    work = write_tree(tmp_path / "work", {"model/config.json": b"{}"})
    spec = {
        "kind": "lora",
        "name": "pinned",
        "model": "model",
        "dataset": "corpus",
        "runtime_env": {"working_dir": "."},
        "resources": {"gpus": "RTX4090:24GB:1", "nodes": 1},
        "pricing": {"max_price_per_gpu_hour": "0.60", "budget": "0.10"},
    }
    job = henry.submit_job(spec, pack_working_dir(work, 2**20))
    try:
        assert job["datasets"] == {"corpus@2": second["id"]}
        with swarm.head.coordinator.store.transaction() as db:
            from computeswarm.cluster.store.models import Job

            stored = db.get(Job, job["id"])
            assert stored.spec["dataset"] == "corpus@2/train.jsonl"
    finally:
        henry.cancel_job(job["id"])
    for dataset, message in (
        ("corpus@9", "no version 9"),
        ("nothing", "neither a file in the working_dir nor one of your datasets"),
        ("missing.jsonl", "not a file in the working_dir"),
        ("corpus@1/other.jsonl", "has no file 'other.jsonl'"),
        ("someone/corpus@1", "no dataset someone/corpus"),
    ):
        with pytest.raises(ApiError, match=message):
            henry.submit_job(spec | {"dataset": dataset}, pack_working_dir(work, 2**20))
    write_tree(tmp_path / "two", {"a.jsonl": b"{}\n", "b.jsonl": b"{}\n"})
    push(henry, tmp_path / "two", "pair")
    with pytest.raises(ApiError, match="holds 2 files"):
        henry.submit_job(spec | {"dataset": "pair@1"}, pack_working_dir(work, 2**20))


def test_the_cli_pushes_shows_and_copies(swarm, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from computeswarm.cli import app
    from computeswarm.data import cli as datasets_cli

    ivy = swarm.client("ivy")
    monkeypatch.setattr(datasets_cli, "_client", lambda *_: ivy)
    src = write_tree(tmp_path / "src", {"a.jsonl": b'{"text": "x"}\n', "b/c.bin": noise(5000, 3)})
    runner = CliRunner()
    pushed = runner.invoke(app, ["datasets", "push", str(src), "--name", "cli-data"])
    assert pushed.exit_code == 0, pushed.output
    assert "cli-data@1: 2 files" in pushed.output and "sent 2 of 2 chunks" in pushed.output
    again = runner.invoke(app, ["cp", str(src), "ds:cli-data"])
    assert again.exit_code == 0 and "cli-data@1: sent 0 B" in again.output, again.output
    shown = runner.invoke(app, ["datasets", "show", "cli-data@1"])
    assert shown.exit_code == 0 and "b/c.bin" in shown.output, shown.output
    got = runner.invoke(app, ["cp", "ds:cli-data@1/b/c.bin", str(tmp_path / "one")])
    assert got.exit_code == 0, got.output
    assert (tmp_path / "one" / "b" / "c.bin").read_bytes() == (src / "b" / "c.bin").read_bytes()
    assert not (tmp_path / "one" / "a.jsonl").exists()
    listed = runner.invoke(app, ["datasets", "list"])
    assert listed.exit_code == 0 and "cli-data@1" in listed.output
    refused = runner.invoke(app, ["cp", "vol:x/y", "ds:cli-data"])
    assert refused.exit_code != 0 and "one side is local" in refused.output
