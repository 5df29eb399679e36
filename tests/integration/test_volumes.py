"""Volumes against a real coordinator, object store and HTTP server (no root needed): the
owner's commands; two sellers' nodes of one lease committing (the last commit wins per
file, untouched files keep what others wrote); an explicit commit from the job; what a
hostile job plants in its volume (links to the seller's secrets, fifos) is not read;
other buyers, their leases and read-only mounts cannot write; a full volume refuses."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from computeswarm.cluster.client import CoordinatorClient
from computeswarm.cluster.errors import ApiError, Conflict, NotFound
from computeswarm.cluster.seller.volumes import LeaseVolumes
from computeswarm.cluster.store.models import Job, Lease, LeaseMember
from computeswarm.jobs import contract
from computeswarm.jobs.spec import parse_job_spec
from tests.integration.conftest import make_head
from tests.integration.http_server import ServerThread
from tests.integration.test_datasets import Buyers, write_tree


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    from computeswarm.cluster.api.app import create_app

    head = make_head(tmp_path_factory.mktemp("volumes-head"))
    head.coordinator.stop_loops()  # the leases below are made by hand: no scheduler
    try:
        with ServerThread(create_app(head.coordinator)) as server:
            yield Buyers(head, server.url)
    finally:
        head.coordinator.stop()


def spec(volumes: dict) -> dict:
    return {
        "kind": "script",
        "name": "writer",
        "entrypoint": "python w.py",
        "pricing": {"max_price_per_gpu_hour": "1.00"},
        "volumes": volumes,
    }


def lease_of(
    swarm, buyer: str, lease_id: str, volumes: dict, sellers: list[str], datasets=None
) -> None:
    """A running lease of `buyer`'s job mounting `volumes` (and reading `datasets`, pins
    as submit makes them), on these sellers."""
    now = swarm.head.clock()
    with swarm.head.coordinator.store.transaction() as db:
        db.add(
            Job(
                id=f"j-{lease_id}",
                account_id=swarm.ids[buyer],
                name="writer",
                kind="script",
                spec=parse_job_spec(spec(volumes)).model_dump(mode="json"),
                state="running",
                lease_id=lease_id,
                datasets=datasets,
                created_at=now,
                started_at=now,
            )
        )
        db.add(
            Lease(
                id=lease_id,
                account_id=swarm.ids[buyer],
                job_id=f"j-{lease_id}",
                state="running",
                token="t",
                port_base=0,
                price_per_hour_micros=1,
                escrow_micros=1,
                created_at=now,
                started_at=now,
                deadline=now + 3600,
            )
        )
        for seller_id in sellers:
            db.add(
                LeaseMember(
                    lease_id=lease_id,
                    seller_id=seller_id,
                    gpus=1,
                    ask_micros=1,
                    price_micros=1,
                    driver=False,
                    state="attached",
                    assigned_at=now,
                    attached_at=now,
                )
            )


def end(swarm, lease_id: str) -> None:
    with swarm.head.coordinator.store.transaction() as db:
        db.get(Lease, lease_id).state = "closed"
        db.get(Lease, lease_id).ended_at = swarm.head.clock()
        db.get(Job, f"j-{lease_id}").state = "succeeded"


def seller(swarm, name: str) -> tuple[str, CoordinatorClient]:
    made = swarm.head.enroll(name)
    return made["seller_id"], CoordinatorClient(swarm.url, made["api_key"], timeout=60)


def contents(client: CoordinatorClient, name: str, tmp_path: Path) -> dict[str, bytes]:
    from computeswarm.data.volume_transfer import pull_from

    out = tmp_path / f"pulled-{os.urandom(4).hex()}"
    pull_from(client, name, "", out)
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def test_the_owner_creates_fills_lists_reads_and_removes_a_volume(swarm, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from computeswarm.cli import app

    swarm.client("ann")
    monkeypatch.setenv("COMPUTESWARM_COORDINATOR", swarm.url)
    monkeypatch.setenv("COMPUTESWARM_API_KEY", swarm.keys["ann"])
    runner = CliRunner()

    def cs(*args: str) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, (args, result.output, result.exception)
        return result.output

    assert "volume cache: 1.0 MiB" in cs("volumes", "create", "cache", "--size", "1MiB")
    src = write_tree(tmp_path / "w", {"a.bin": os.urandom(3000), "sub/.locks": b"x"})
    assert "volume cache: 2 files" in cs("cp", str(src), "vol:cache/models")
    listed = cs("volumes", "ls", "cache/models/sub")
    assert "models/sub/.locks" in listed and "a.bin" not in listed
    assert "cache" in cs("volumes", "list") and "total" in cs("volumes", "du")
    cs("cp", "vol:cache/models", str(tmp_path / "back"))
    assert (tmp_path / "back" / "a.bin").read_bytes() == (src / "a.bin").read_bytes()
    # Another copy adds files; the ones already there stay.
    cs("cp", str(write_tree(tmp_path / "w2", {"b.txt": b"b"})), "vol:cache")
    assert set(contents(swarm.client("ann"), "cache", tmp_path)) == {
        "b.txt",
        "models/a.bin",
        "models/sub/.locks",
    }
    assert "volume cache removed (3 files" in cs("volumes", "rm", "cache", "--yes")
    with pytest.raises(NotFound):
        swarm.client("ann").volume("cache")


def test_other_buyers_see_nothing_and_a_spec_mounts_only_your_volumes(swarm, tmp_path):
    bob, eve = swarm.client("bob"), swarm.client("eve")
    bob.create_volume("private", 10**6)
    with pytest.raises(NotFound):
        eve.volume("private")
    with pytest.raises(NotFound):
        eve.volume_files("private")
    with pytest.raises(NotFound):
        eve.remove_volume("private")
    with pytest.raises(ApiError, match="you have no volume 'private'"):
        eve.submit_job(spec({"/workspace/data": "private"}), None)
    with pytest.raises(ApiError, match="volume mount /etc/x"):
        bob.submit_job(spec({"/etc/x": "private"}), None)
    with pytest.raises(Conflict):
        bob.create_volume("private", 10**6)


def test_two_nodes_commit_the_last_commit_wins_per_file(swarm, tmp_path):
    carl = swarm.client("carl")
    carl.create_volume("shared", 10**6)
    from computeswarm.data.volume_transfer import push_into

    push_into(carl, write_tree(tmp_path / "seed", {"a.txt": b"v0", "keep.txt": b"k"}), "shared")
    (s1, c1), (s2, c2) = seller(swarm, "n1"), seller(swarm, "n2")
    lease_of(swarm, "carl", "l-twowriters", {"/workspace/data": "shared"}, [s1, s2])
    one = LeaseVolumes(c1, tmp_path / "n1")
    two = LeaseVolumes(c2, tmp_path / "n2")
    [m1], [m2] = one.fetch("l-twowriters", None), two.fetch("l-twowriters", None)
    assert m1.mount == "/workspace/data" and (m1.folder / "a.txt").read_bytes() == b"v0"

    (m1.folder / "a.txt").write_bytes(b"one")
    (m1.folder / "b.txt").write_bytes(b"from one")
    (m2.folder / "a.txt").write_bytes(b"two")
    (m2.folder / "c.txt").write_bytes(b"from two")
    one.commit("l-twowriters")
    two.commit("l-twowriters")  # later: its a.txt wins; b.txt (which it never had) stays
    assert contents(carl, "shared", tmp_path) == {
        "a.txt": b"two",
        "b.txt": b"from one",
        "c.txt": b"from two",
        "keep.txt": b"k",
    }
    # Node one deletes b.txt; a.txt it did not touch since its commit keeps node two's.
    (m1.folder / "b.txt").unlink()
    one.commit("l-twowriters")
    assert contents(carl, "shared", tmp_path) == {
        "a.txt": b"two",
        "c.txt": b"from two",
        "keep.txt": b"k",
    }
    assert carl.volume("shared")["commits"] == 4  # the seed, one, two, one again
    # A job that mounts the volume is not finished: it cannot be removed under it.
    with pytest.raises(Conflict, match="j-l-twowriters"):
        carl.remove_volume("shared")

    # The job ends, then the nodes stop: their last commit is still taken, once.
    (m2.folder / "late.txt").write_bytes(b"written at the end")
    end(swarm, "l-twowriters")
    two.finish("l-twowriters")
    one.finish("l-twowriters")
    assert contents(carl, "shared", tmp_path)["late.txt"] == b"written at the end"
    assert not (tmp_path / "n2" / "l-twowriters").exists()
    # A later lease on any seller sees all of it.
    lease_of(swarm, "carl", "l-later", {"/data": {"name": "shared", "readonly": True}}, [s1])
    [again] = LeaseVolumes(c1, tmp_path / "n1b").fetch("l-later", None)
    assert (again.folder / "late.txt").read_bytes() == b"written at the end"
    assert again.readonly
    # Read-only: the coordinator takes no commit from this lease.
    with pytest.raises(NotFound, match="read-write"):
        c1.lease_volume_commit("l-later", "shared", None, {"files": []})


def test_what_a_job_plants_in_its_volume_is_not_followed(swarm, tmp_path):
    dana = swarm.client("dana")
    dana.create_volume("trap", 10**6)
    (s1, c1) = seller(swarm, "n3")
    lease_of(swarm, "dana", "l-trap", {"/workspace/data": "trap"}, [s1])
    node = LeaseVolumes(c1, tmp_path / "n3")
    [m] = node.fetch("l-trap", None)
    secret = tmp_path / "seller-private.key"
    secret.write_bytes(b"the seller's WireGuard key")
    (m.folder / "key").symlink_to(secret)
    (m.folder / "dir").symlink_to(tmp_path)
    os.mkfifo(m.folder / "pipe")  # a reader that opened it would block forever
    (m.folder / "fine.txt").write_bytes(b"ok")
    node.commit("l-trap")
    assert contents(dana, "trap", tmp_path) == {"fine.txt": b"ok"}

    # The job asks for a commit; the answer is never written through a link it planted.
    control = tmp_path / "control"
    control.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    (control / contract.COMMIT_DONE).symlink_to(victim)
    node.every_s = 3600.0
    node.watch("l-trap", control)
    (m.folder / "asked.txt").write_bytes(b"now")
    asked = threading.Thread(
        target=contract.commit_volumes, kwargs={"env": {contract.CONTROL_DIR: str(control)}}
    )
    asked.start()
    asked.join(30)
    assert not asked.is_alive()
    assert victim.read_text() == "untouched"
    assert contents(dana, "trap", tmp_path)["asked.txt"] == b"now"
    node.finish("l-trap")


def test_leases_of_other_jobs_cannot_read_or_write_a_volume(swarm, tmp_path):
    fay, gus = swarm.client("fay"), swarm.client("gus")
    fay.create_volume("mine", 10**6)
    gus.create_volume("other", 10**6)
    (s1, c1), (s2, c2) = seller(swarm, "n4"), seller(swarm, "n5")
    lease_of(swarm, "fay", "l-fay", {"/d": "mine"}, [s1])
    # Gus's job names "mine": on his lease that is his own (absent) volume, never Fay's.
    lease_of(swarm, "gus", "l-gus", {"/d": "mine", "/e": "other"}, [s2])
    with pytest.raises(NotFound):
        c2.lease_volume_commit("l-gus", "mine", None, {"files": []})
    with pytest.raises(NotFound):  # a seller outside Fay's lease
        c2.lease_volumes("l-fay")
    with pytest.raises(NotFound):
        c2.lease_volume_commit("l-fay", "mine", None, {"files": []})
    with pytest.raises(NotFound):  # a volume Fay's job does not mount
        c1.lease_volume_missing("l-fay", "other", [])
    assert fay.volume("mine")["commits"] == 0


def test_a_lease_s_seller_reads_only_the_chunks_of_its_own_job_s_datasets(swarm, tmp_path):
    """A seller serving lease A asks, through lease A, for a chunk of the dataset lease B
    reads (B is another buyer's): 404, though the chunk exists."""
    from computeswarm.data.chunking import scan
    from computeswarm.data.transfer import push

    ida, jon = swarm.client("ida"), swarm.client("jon")
    pins = {}
    for who, name in ((ida, "ida-data"), (jon, "jon-data")):
        src = write_tree(tmp_path / name, {"d.bin": os.urandom(5000)})
        version = push(who, src, name).version
        entry = scan(src).manifest.files[0]
        pins[name] = {
            f"{name}@1": {
                "owner": swarm.ids["ida" if who is ida else "jon"],
                "name": name,
                "version": 1,
                "id": version["id"],
                "path": "d.bin",
                "sha256": entry.sha256,
            }
        }
        pins[name + ":chunk"] = entry.chunks[0].sha256
    (sa, ca), (sb, _) = seller(swarm, "n7"), seller(swarm, "n8")
    lease_of(swarm, "ida", "l-ida", {}, [sa], datasets=pins["ida-data"])
    lease_of(swarm, "jon", "l-jon", {}, [sb], datasets=pins["jon-data"])
    assert ca.lease_chunk("l-ida", pins["ida-data:chunk"])  # its own job's: fine
    with pytest.raises(NotFound):
        ca.lease_chunk("l-ida", pins["jon-data:chunk"])
    with pytest.raises(NotFound):
        ca.lease_chunk("l-jon", pins["jon-data:chunk"])
    assert [d["ref"] for d in ca.lease_datasets("l-ida")] == ["ida-data@1"]


def test_an_agent_killed_mid_job_commits_on_its_next_start(swarm, tmp_path):
    kim = swarm.client("kim")
    kim.create_volume("survives", 10**6)
    (s1, c1) = seller(swarm, "n9")
    lease_of(swarm, "kim", "l-killed", {"/d": "survives"}, [s1])
    [m] = LeaseVolumes(c1, tmp_path / "n9").fetch("l-killed", None)
    (m.folder / "before-the-kill.txt").write_bytes(b"unsaved")
    # The agent is gone (nothing in memory); its successor starts on the same state dir.
    end(swarm, "l-killed")
    LeaseVolumes(c1, tmp_path / "n9").recover()
    assert contents(kim, "survives", tmp_path) == {"before-the-kill.txt": b"unsaved"}
    assert not (tmp_path / "n9" / "l-killed").exists()


def test_a_commit_past_the_volume_s_limit_is_refused_and_shown(swarm, tmp_path):
    hal = swarm.client("hal")
    hal.create_volume("small", 1000)
    (s1, c1) = seller(swarm, "n6")
    lease_of(swarm, "hal", "l-small", {"/d": "small"}, [s1])
    node = LeaseVolumes(c1, tmp_path / "n6")
    [m] = node.fetch("l-small", None)
    (m.folder / "fits.txt").write_bytes(b"x" * 500)
    node.commit("l-small")
    (m.folder / "big.bin").write_bytes(b"y" * 800)
    with pytest.raises(ApiError, match="volume 'small' is full: this commit would hold 1300"):
        node.commit("l-small")
    shown = hal.volume("small")
    assert shown["size_bytes"] == 500 and "is full" in shown["last_error"]
    assert contents(hal, "small", tmp_path) == {"fits.txt": b"x" * 500}


def test_storage_is_billed_in_gb_hours_once_per_period_and_quoted(swarm, tmp_path):
    """Last in the module: it moves the head's clock on by hours."""
    from decimal import Decimal

    from computeswarm.cluster.ledger.storage import StorageMeter, storage_micros
    from computeswarm.data.transfer import push
    from computeswarm.data.volume_transfer import push_into

    ivy = swarm.client("ivy")
    ivy.create_volume("billed", 10**7)
    push_into(ivy, write_tree(tmp_path / "v", {"w.bin": os.urandom(2_000_000)}), "billed")
    push(ivy, write_tree(tmp_path / "d", {"d.bin": os.urandom(1_000_000)}), "ivy-data")
    meter = swarm.head.coordinator.volumes.meter
    meter.price = Decimal("1.5")  # per GB-hour: large enough to see at these sizes
    before = ivy.ledger()["balances_micros"]
    meter.tick()  # first sight of ivy's data: metered from now, nothing billed yet
    assert not [e for e in ivy.ledger()["entries"] if e["kind"] == "storage"]

    held = meter.held(swarm.ids["ivy"])
    assert 3_000_000 <= held < 3_100_000  # the volume's commit and the dataset's chunks
    swarm.head.clock.advance(2 * 3600 + 5)
    meter.tick()
    # A restarted coordinator's meter bills nothing again for the same hours.
    StorageMeter(meter.store, meter.clock, meter.objects, meter.price, meter.every_s).tick()
    charged = [e for e in ivy.ledger()["entries"] if e["kind"] == "storage"]
    assert len(charged) == 1 and charged[0]["amount_micros"] == -storage_micros(
        held, 7200, Decimal("1.5")
    )
    assert charged[0]["amount_micros"] <= -9000  # 3 MB x 2 h x 1.5 per GB-hour
    after = ivy.ledger()["balances_micros"]
    assert sum(after.values()) == sum(before.values()) + charged[0]["amount_micros"]
    whole = swarm.admin.ledger()["entries"]
    assert sum(e["amount_micros"] for e in whole if e["txn"] == charged[0]["txn"]) == 0

    quoted = ivy.quote(spec({"/workspace/data": "billed"}) | {"max_duration": "2h"}, False)
    storage = quoted["storage"]
    assert storage["held_bytes"] == held and storage["price_per_gb_hour"] == "1.5"
    assert storage["during_job"] == f"0.{storage_micros(held, 7200, Decimal('1.5')):06d}"
    assert storage["volumes"]["billed"]["size_limit_bytes"] == 10**7
