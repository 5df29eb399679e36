"""The model registry on the real store (SQLite, and PostgreSQL where CI has one) and API."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect, select
from typer.testing import CliRunner

from computeswarm.cluster.accounts.roles import authenticate
from computeswarm.cluster.client import CoordinatorClient
from computeswarm.cluster.errors import ApiError, Conflict, NotFound
from computeswarm.cluster.ledger import journal as ledger
from computeswarm.cluster.models import registry as model_registry
from computeswarm.cluster.store.models import ModelVersion
from computeswarm.errors import UserError


def make_adapter(root: Path, seed: str) -> Path:
    """A folder shaped like a PEFT LoRA adapter, with content that depends on `seed`."""
    root.mkdir(parents=True)
    (root / "adapter_config.json").write_text(f'{{"r": 8, "seed": "{seed}"}}')
    (root / "adapter_model.safetensors").write_bytes(os.urandom(64 * 1024) + seed.encode())
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "vocab.txt").write_text(f"hello\nworld\n{seed}\n")
    return root


def tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def account_of(head, key: str) -> str:
    with head.coordinator.store.transaction() as db:
        return authenticate(db, key).account_id


def client_for(head, key: str) -> CoordinatorClient:
    """The SDK client, speaking HTTP to the in-process app through a TestClient."""
    client = CoordinatorClient("http://testserver", key)
    client.http.close()
    client.http = TestClient(head.http.app, headers={"Authorization": f"Bearer {key}"})
    return client


def register(head, account_id: str, name: str, source: Path, **extra) -> ModelVersion:
    with head.coordinator.store.transaction() as db:
        return model_registry.register(db, **_fields(head, account_id, name, source, **extra))


def _fields(head, account_id: str, name: str, source: Path, **extra) -> dict:
    return {
        "account_id": account_id,
        "name": name,
        "source_dir": source,
        "base_model": "Qwen/Qwen2.5-0.5B",
        "spec_hash": "s" * 64,
        "data_hash": "d" * 64,
        "metrics": {"eval_loss": 1.25},
        "checkpoint": "ckpt/step-100",
        "job_id": "j-000000000001",
        "parent": None,
        "now": head.clock(),
        "models_root": head.coordinator.models_root,
        **extra,
    }


@pytest.fixture
def buyer(head):
    key = head.account("buyer")
    return key, account_of(head, key)


def test_the_migration_creates_the_table_with_its_constraint(head):
    table = inspect(head.coordinator.store.engine)
    assert "model_versions" in table.get_table_names()
    unique = table.get_unique_constraints("model_versions")
    assert {"account_id", "name", "version"} == set(unique[0]["column_names"])


def test_versions_round_trip_through_list_show_and_download(head, buyer, tmp_path):
    key, account = buyer
    first = make_adapter(tmp_path / "run1", "one")
    second = make_adapter(tmp_path / "run2", "two")
    v1 = register(head, account, "qwen-lora", first)
    head.clock.advance(60)
    v2 = register(head, account, "qwen-lora", second, parent=v1.id, checkpoint="ckpt/step-200")
    assert (v1.version, v2.version) == (1, 2)
    home = head.coordinator.models_root / account / "qwen-lora"
    assert sorted(p.name for p in home.iterdir()) == ["1", "2"]  # no staging left behind
    assert tree(home / "1") == tree(first)
    assert v1.size_bytes == sum(len(b) for b in tree(first).values())

    client = client_for(head, key)
    assert [v["ref"] for v in client.models()] == ["qwen-lora@1", "qwen-lora@2"]
    assert [v["version"] for v in client.model("qwen-lora")["versions"]] == [1, 2]
    latest = client.model_version("qwen-lora")
    assert latest["version"] == 2 and latest["parent"] == v1.id
    assert latest["checkpoint"] == "ckpt/step-200"
    shown = client.model_version("qwen-lora", 1)
    assert shown["metrics"] == {"eval_loss": 1.25} and shown["kind"] == "lora-adapter"
    assert shown["base_model"] == "Qwen/Qwen2.5-0.5B" and shown["job_id"] == "j-000000000001"
    assert "artifact_path" not in shown  # where files live on the coordinator stays private

    assert tree(client.download_model("qwen-lora", 1, tmp_path / "got1")) == tree(first)
    assert tree(client.download_model("qwen-lora", "latest", tmp_path / "got2")) == tree(second)
    with pytest.raises(UserError, match="not an empty folder"):
        client.download_model("qwen-lora", 1, tmp_path / "got1")
    with head.coordinator.store.transaction() as db:
        assert model_registry.resolve(db, account, "qwen-lora").id == v2.id
        assert model_registry.resolve(db, account, "qwen-lora@1").id == v1.id


def test_unknown_names_and_versions_say_what_exists(head, buyer, tmp_path):
    key, account = buyer
    register(head, account, "adapter", make_adapter(tmp_path / "run", "x"))
    client = client_for(head, key)
    with pytest.raises(NotFound, match="no model named 'nope'"):
        client.model("nope")
    with pytest.raises(NotFound, match="no model named 'nope'"):
        client.model_version("nope", 1)
    with pytest.raises(NotFound, match="no version 7; its latest is adapter@1"):
        client.model_version("adapter", 7)
    with pytest.raises(NotFound):
        client.download_model("adapter", 7, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    for bad in ("0", "-1", "two"):
        with pytest.raises(ApiError, match="not NAME or NAME@N") as caught:
            client.model_version("adapter", bad)
        assert caught.value.status == 400
    with head.coordinator.store.transaction() as db:
        for ref in ("adapter@", "adapter@x", "@1", "../x", "a/b@1", ""):
            with pytest.raises(ApiError, match="not NAME or NAME@N"):
                model_registry.resolve(db, account, ref)


def test_other_buyers_get_404_and_admins_see_everything(head, buyer, tmp_path):
    key, account = buyer
    register(head, account, "mine", make_adapter(tmp_path / "a", "a"))
    other_key = head.account("buyer")
    other = client_for(head, other_key)
    assert other.models() == []
    with pytest.raises(NotFound):
        other.model("mine")
    with pytest.raises(NotFound):
        other.model_version("mine", 1)
    with pytest.raises(NotFound):
        other.download_model("mine", 1, tmp_path / "stolen")
    assert not (tmp_path / "stolen").exists()
    # Raw HTTP too: a 404, not a 403, and `?account=` means nothing for buyers.
    response = head.http.get(
        "/v1/models/mine/versions/1/download",
        params={"account": account},
        headers=head.auth(other_key),
    )
    assert response.status_code == 404 and response.json()["error"] == "not_found"

    # The same name in another account is another model, numbered from 1.
    theirs = register(head, account_of(head, other_key), "mine", make_adapter(tmp_path / "b", "b"))
    assert theirs.version == 1
    assert [v["account_id"] for v in client_for(head, key).models()] == [account]

    admin = client_for(head, head.admin_key)
    assert len(admin.models()) == 2
    with pytest.raises(Conflict, match="several accounts"):
        admin.model_version("mine", 1)
    one = head.http.get(
        "/v1/models/mine/versions/1", params={"account": account}, headers=head.admin
    )
    assert one.status_code == 200 and one.json()["account_id"] == account


def test_concurrent_registrations_of_one_name_get_distinct_versions(head, buyer, tmp_path):
    _, account = buyer
    sources = [make_adapter(tmp_path / f"run{i}", f"seed{i}") for i in range(4)]
    start = threading.Barrier(len(sources))
    made: dict[str, int] = {}
    failures: list[BaseException] = []

    def run(source: Path) -> None:
        try:
            start.wait()
            made[source.name] = register(head, account, "raced", source).version
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=run, args=(s,)) for s in sources]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures
    assert sorted(made.values()) == [1, 2, 3, 4]
    home = head.coordinator.models_root / account / "raced"
    for source in sources:  # each number holds the files of the run that got it
        assert tree(home / str(made[source.name])) == tree(source)
    assert sorted(p.name for p in home.iterdir()) == ["1", "2", "3", "4"]


def test_a_failed_copy_leaves_no_row_and_no_folder(head, buyer, tmp_path, monkeypatch):
    _, account = buyer
    source = make_adapter(tmp_path / "run", "x")

    def copy_then_fail(src, dst, *args, **kwargs):
        Path(dst).mkdir(parents=True)
        (Path(dst) / "adapter_config.json").write_text("{}")  # half written
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(shutil, "copytree", copy_then_fail)
        with pytest.raises(OSError, match="No space left"):
            register(head, account, "broken", source)
    home = head.coordinator.models_root / account / "broken"
    assert list(home.iterdir()) == []
    with head.coordinator.store.transaction() as db:
        assert db.scalars(select(ModelVersion)).all() == []
    assert register(head, account, "broken", source).version == 1  # the number was not used


def test_a_rolled_back_registration_removes_its_folder(head, buyer, tmp_path):
    _, account = buyer
    source = make_adapter(tmp_path / "run", "x")
    home = head.coordinator.models_root / account / "undone"
    with (
        pytest.raises(RuntimeError, match="later step failed"),
        head.coordinator.store.transaction() as db,
    ):
        version = model_registry.register(db, **_fields(head, account, "undone", source))
        assert (home / str(version.version)).is_dir()
        raise RuntimeError("a later step failed")
    assert list(home.iterdir()) == []
    with head.coordinator.store.transaction() as db:
        assert db.scalars(select(ModelVersion)).all() == []
    # A folder left by a crash between rename and commit is replaced, not merged into.
    (home / "1").mkdir()
    (home / "1" / "stale.bin").write_bytes(b"old")
    assert register(head, account, "undone", source).version == 1
    assert tree(home / "1") == tree(source)


def test_sources_that_could_leak_coordinator_files_are_refused(head, buyer, tmp_path):
    _, account = buyer
    source = make_adapter(tmp_path / "run", "x")
    (source / "secret").symlink_to(head.coordinator.admin_key_path)
    with pytest.raises(UserError, match="is a symlink"):
        register(head, account, "leaky", source)
    with pytest.raises(UserError, match="not a folder"):
        register(head, account, "missing", tmp_path / "nothing-here")
    with pytest.raises(ApiError, match="model name"):
        register(head, account, "../escape", make_adapter(tmp_path / "run2", "y"))
    with pytest.raises(NotFound, match="no model version"):
        register(head, account, "orphan", make_adapter(tmp_path / "run3", "z"), parent="mv-x")
    assert not (head.coordinator.models_root / account / "leaky").exists()
    assert list((head.coordinator.models_root / account / "orphan").iterdir()) == []


def test_cli_lists_shows_and_downloads(sqlite_head, tmp_path, monkeypatch):
    from computeswarm.cli import app
    from computeswarm.cluster.cli import models as models_cli

    head = sqlite_head
    key = head.account("buyer")
    source = make_adapter(tmp_path / "run", "cli")
    register(head, account_of(head, key), "cli-model", source)
    monkeypatch.setattr(models_cli, "_client", lambda *_: client_for(head, key))
    runner = CliRunner()

    listed = runner.invoke(app, ["models", "list"])
    assert listed.exit_code == 0 and "cli-model@1" in listed.output
    shown = runner.invoke(app, ["models", "show", "cli-model"])
    assert shown.exit_code == 0 and "ckpt/step-100" in shown.output
    assert "eval_loss: 1.25" in shown.output
    got = runner.invoke(app, ["models", "download", "cli-model@1", "--to", str(tmp_path / "o")])
    assert got.exit_code == 0, got.output
    assert tree(tmp_path / "o") == tree(source)
    bad = runner.invoke(app, ["models", "show", "cli-model@zero"])
    assert bad.exit_code != 0 and "not NAME or NAME@N" in str(bad.exception)


def test_a_serve_job_serves_only_its_owners_versions(sqlite_head, tmp_path):
    """Adapters named by version resolve for the job's owner at submit; another buyer's
    name is refused before anything is stored or leased."""
    from computeswarm.cluster.kinds import serve as serve_jobs
    from computeswarm.cluster.store.models import Job
    from computeswarm.jobs.upload import pack_working_dir

    head = sqlite_head
    owner_key, other_key = head.account("buyer"), head.account("buyer")
    version = register(
        head, account_of(head, owner_key), "adder", make_adapter(tmp_path / "a", "a")
    )
    folder = tmp_path / "job"
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "config.json").write_text("{}")
    make_adapter(folder / "adapters" / "local", "local")
    spec = {
        "kind": "serve",
        "name": "api",
        "runtime_env": {"working_dir": "."},
        "model": "model",
        "adapters": {"adder": "adder@1", "local": "./adapters/local"},
        "pricing": {"max_price_per_gpu_hour": "1.0"},
    }
    upload = pack_working_dir(folder, 2**20)
    with head.coordinator.store.transaction() as db:  # both can fund it (no upload otherwise)
        for key in (owner_key, other_key):
            ledger.post(db, ledger.deposit(account_of(head, key), 100 * 10**6), head.clock())
    with pytest.raises(NotFound, match="adder"):
        client_for(head, other_key).submit_job(spec, upload)
    with head.coordinator.store.transaction() as db:
        assert db.query(Job).count() == 0
    job = client_for(head, owner_key).submit_job(spec, upload)
    store = head.coordinator.objects.store
    with head.coordinator.store.transaction() as db:
        row = db.get(Job, job["id"])
        folders = serve_jobs.adapter_folders(db, row, parse(spec), store)
        grant = serve_jobs.ServeKind().object_grant(
            db, row, parse(spec), head.coordinator.scheduler.ctx.where()
        )
    # A registered version reaches the lease through the store (sellers are other
    # machines), under its own prefix, which the lease's key may read and nothing more.
    prefix = f"{version.account_id}/models/adder/1/"
    assert folders["adder"] == f"store:{prefix}" and grant.read == (prefix,)
    # A folder of the upload by its place in the working dir, never the coordinator's path.
    assert folders["local"] == "./adapters/local"
    stored = {o.key[len(prefix) :] for o in store.list(prefix)}
    assert stored == {*tree(Path(version.artifact_path)), ".published"}


def test_a_published_version_is_fetched_with_a_lease_key_once_per_node(
    sqlite_head, tmp_path, monkeypatch
):
    from computeswarm.cluster.models import published
    from computeswarm.cluster.objects.layout import Grant, job_prefix
    from computeswarm.jobs import artifacts

    head = sqlite_head
    owner = account_of(head, head.account("buyer"))
    version = register(head, owner, "adder", make_adapter(tmp_path / "a", "a"))
    other = register(head, owner, "other", make_adapter(tmp_path / "b", "b"))
    plane = head.coordinator.objects
    ref = published.publish(plane.store, version)
    published.publish(plane.store, other)
    assert published.publish(plane.store, version) == ref  # once: it is already whole
    env = plane.issue(
        "l-fetch", Grant(read=(published.prefix_of(version),), write=(job_prefix(owner, "j"),))
    )
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        folder = artifacts.local_folder(ref, cache=tmp_path / "node")
        assert tree(folder) == tree(Path(version.artifact_path))
        assert artifacts.local_folder(ref, cache=tmp_path / "node") == folder  # cached
        with pytest.raises(OSError):  # another version: not this lease's to read
            artifacts.local_folder(f"store:{published.prefix_of(other)}", cache=tmp_path / "n2")
        assert not [p for p in (tmp_path / "n2").rglob("*") if p.is_file()]
    finally:
        plane.revoke("l-fetch")


def parse(spec: dict):
    from computeswarm.jobs.spec import parse_job_spec

    return parse_job_spec(spec)
