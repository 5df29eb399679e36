"""Training kinds on real leases, on one machine without root: a coordinator and three
sellers on loopback (the `none` backend), real Ray clusters, Ray Train + DeepSpeed + PEFT.

A `lora` job fine-tunes a tiny model on a task with a learnable signal across two sellers,
its adapter is registered and loads through peft; a seller killed mid-training is replaced
and the run resumes from its last checkpoint without redoing checkpointed steps. Every run
folder is a prefix in the object store: these tests read it there, through the root key,
and check that nothing of it is on the coordinator's disk.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from computeswarm.cluster.objects.runs import StoredRun
from computeswarm.jobs.states import JobState
from computeswarm.jobs.train.data import synthetic_addition
from computeswarm.jobs.train.tiny import make_tiny_model
from computeswarm.jobs.upload import pack_working_dir
from tests.integration.test_leases_loopback import (
    _settled,
    _state,
    _until,
    loopback_swarm,
)
from tests.integration.tmux import Terminal

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Ray lease nodes need Linux")
SELLERS = {"s1": "0.30", "s2": "0.35", "s3": "0.40"}


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    root = tmp_path_factory.mktemp("training-swarm")
    sellers = {name: ("RTX4090:24GB:1", price) for name, price in SELLERS.items()}
    # 6 s: on a 2-core CI box under DeepSpeed load, all three agents once went 3 s
    # without a heartbeat getting through (every seller "offline" at once; none had died).
    yield from loopback_swarm(root, sellers, "trainer", 6)


@pytest.fixture(autouse=True)
def no_job_left_running(swarm):
    """A test that fails mid-job must not hold the sellers the next tests need: its jobs
    are cancelled and their sellers freed before the next test starts."""
    yield
    left = [j for j in swarm.buyer.jobs() if not JobState(j["state"]).is_terminal]
    for job in left:
        swarm.buyer.cancel_job(job["id"])
    if left:
        _until(
            lambda: not any(s["state"] == "leased" for s in swarm.admin.sellers()),
            "no seller leased",
            120,
        )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lora-job")
    make_tiny_model(folder / "model", "gpt2")
    synthetic_addition(folder / "data.jsonl", n=600)
    return folder


def lora(name: str, steps: int, **extra) -> dict:
    return {
        "kind": "lora",
        "name": name,
        "model": "model",
        "dataset": "data.jsonl",
        "runtime_env": {"working_dir": "."},
        "resources": {"gpus": "RTX4090:24GB:2", "nodes": 2, "memory_gb_per_node": 1.5},
        "pricing": {"max_price_per_gpu_hour": "0.60"},
        "max_duration": "15m",
        "training": {
            "steps": steps,
            "learning_rate": 0.003,
            "eval_every": 10,
            "checkpoint_every": 10,
            "max_seq_len": 16,
        },
        "deepspeed": {"zero_stage": 2, "micro_batch": 8},
        **extra,
    }


@pytest.fixture(scope="module")
def sums(swarm, workdir, tmp_path_factory):
    """The training data pushed as dataset `sums@1`, and a working_dir with the model only:
    a version reaches a lease as chunks through the coordinator into each seller's cache,
    outside the sandbox, never through the upload."""
    import shutil

    from computeswarm.data.transfer import push

    root = tmp_path_factory.mktemp("sums")
    (root / "ds").mkdir()
    shutil.copy(workdir / "data.jsonl", root / "ds" / "data.jsonl")
    shutil.copytree(workdir / "model", root / "code" / "model")
    return push(swarm.buyer, root / "ds", "sums"), root / "code"


def fetched(swarm) -> dict[str, int]:
    """Dataset bytes each seller's agent has fetched, from its status file."""
    status = {n: json.loads((swarm.root / n / "agent-status.json").read_text()) for n in SELLERS}
    return {n: (s.get("datasets") or {}).get("bytes_fetched", 0) for n, s in status.items()}


def run_folder(swarm, job_id: str) -> StoredRun:
    run = _runs(swarm, swarm.buyer.job(job_id)["name"])
    assert run is not None
    return run


def test_a_lora_job_learns_registers_its_adapter_and_it_loads_in_peft(
    swarm, workdir, sums, tmp_path
):
    pushed, code = sums
    before = fetched(swarm)
    # Low-bandwidth mode: each seller trains alone, adapters are averaged every 5 steps.
    # `dataset: sums` is pinned at submit to the newest version.
    spec = lora("adder", 30, dataset="sums", low_bandwidth={"sync_every": 5})
    submitted = swarm.buyer.submit_job(spec, pack_working_dir(code, 2**22))
    assert submitted["datasets"] == {"sums@1": pushed.version["id"]}
    done = _until(lambda: _state(swarm, submitted["id"], "succeeded", "failed"), "end", 400)
    assert done["state"] == "succeeded", (done, swarm.buyer.job_logs(submitted["id"])["text"])
    assert {m["seller_id"] for m in done["lease"]["members"]} == {
        swarm.ids["s1"],
        swarm.ids["s2"],
    }
    # Each seller fetched the version once, into its own cache.
    after = _until(lambda: (f := fetched(swarm)) and f["s1"] > before["s1"] and f, "fetched")
    assert {n: after[n] - before[n] for n in SELLERS} == {
        "s1": pushed.bytes_total,
        "s2": pushed.bytes_total,
        "s3": 0,
    }
    run = run_folder(swarm, submitted["id"])
    result = json.loads(run.read_text("result.json"))
    metrics = result["metrics"]
    # The base's loss on the held-out sums is ~ln(vocab); the adapter must beat it clearly.
    assert metrics["eval_loss"] < metrics["base_eval_loss"] - 0.3, metrics
    assert metrics["token_accuracy"] > metrics["base_token_accuracy"] + 0.1, metrics
    adapter_bytes = sum(
        o.size
        for o in run.store.list(f"{run.prefix}{result['adapter']}/")
        if o.key.endswith(".safetensors")
    )
    # A ring all-reduce of the fp32 adapter between 2 workers, once every 5 steps.
    assert metrics["sync_bytes_per_step"] == pytest.approx(adapter_bytes / 5, rel=0.05)

    job = _until(lambda: (j := swarm.buyer.job(submitted["id"]))["model_version"] and j, "model")
    assert job["model_version"] == "adder@1"
    version = swarm.buyer.model_version("adder", 1)
    assert version["base_model"] == "model" and version["job_id"] == submitted["id"]
    assert version["dataset"].startswith("sums@1/data.jsonl (id ")
    assert version["checkpoint"] == f"{run.prefix}step-000030"
    # Sellers and coordinator are separate machines: the run never touched its disk.
    assert not list((swarm.root / "head" / "storage").glob("*/runs/adder-*"))
    adapter = swarm.buyer.download_model("adder", 1, tmp_path / "adder")

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(workdir / "model")
    tuned = PeftModel.from_pretrained(base, adapter)
    tokenizer = AutoTokenizer.from_pretrained(workdir / "model")
    ids = torch.tensor([tokenizer.encode("12+7=")])
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(workdir / "model")(input_ids=ids).logits
        adapted = tuned(input_ids=ids).logits
    assert not torch.allclose(plain, adapted), "the downloaded adapter changed nothing"

    logs = swarm.buyer.job_logs(submitted["id"])["text"]
    assert "step 30 loss" in logs and "training finished" in logs


def test_a_later_job_starts_from_a_registered_version(swarm, workdir, sums):
    first = swarm.buyer.model_version("adder", 1)  # from the test above
    with pytest.raises(Exception, match="no version 9"):
        swarm.buyer.submit_job(
            lora("adder", 5, init_adapter="adder@9"), pack_working_dir(workdir, 2**22)
        )
    _, code = sums
    before = fetched(swarm)
    # Low-bandwidth mode (no DeepSpeed: its start costs minutes on a loaded CI box; the
    # killed-seller test and the WireGuard e2e run DeepSpeed).
    spec = lora(
        "adder", 5, init_adapter="adder@1", dataset="sums@1", low_bandwidth={"sync_every": 5}
    )
    submitted = swarm.buyer.submit_job(spec, pack_working_dir(code, 2**22))
    done = _until(lambda: _state(swarm, submitted["id"], "succeeded", "failed"), "end", 400)
    assert done["state"] == "succeeded", swarm.buyer.job_logs(submitted["id"])["text"][-3000:]
    # The same sellers had the version cached: nothing was fetched again.
    assert {m["seller_id"] for m in done["lease"]["members"]} == {swarm.ids["s1"], swarm.ids["s2"]}
    assert fetched(swarm) == before, "a cached version was fetched again"
    second = _until(
        lambda: (j := swarm.buyer.job(submitted["id"]))["model_version"] and j, "registered"
    )
    assert second["model_version"] == "adder@2"
    version = swarm.buyer.model_version("adder", 2)
    assert version["parent"] == first["id"]
    # It started where version 1 ended: its "base" is version 1's held-out loss.
    metrics = version["metrics"]
    assert metrics["base_eval_loss"] == pytest.approx(first["metrics"]["eval_loss"], rel=1e-3)


def test_a_registered_version_is_served_through_the_store(swarm, workdir):
    """Sellers are other machines: a serve job's registered adapter reaches its replica as
    objects in the store (published once, read with the lease's key), not as a folder on
    the coordinator's disk."""
    import httpx

    spec = {
        "kind": "serve",
        "name": "registered-api",
        "runtime_env": {"working_dir": "."},
        "model": "model",
        "adapters": {"adder": "adder@2"},  # from the test above
        "replicas": {"min": 1, "max": 1},
        "max_tokens": 8,
        "resources": {"gpus": "RTX4090:24GB:1", "nodes": 1, "memory_gb_per_node": 0.5},
        "pricing": {"max_price_per_gpu_hour": "0.60"},
        "max_duration": "10m",
    }
    job_id = swarm.buyer.submit_job(spec, pack_working_dir(workdir, 2**22))["id"]
    try:
        ready = _until(lambda: (j := swarm.buyer.job(job_id))["serve"]["ready"] and j, "ready", 240)
        assert "adder" in ready["serve"]["models"]
        answer = httpx.post(
            f"{swarm.url}/v1/serve/{job_id}/v1/completions",
            json={"model": "adder", "prompt": "1+2=", "max_tokens": 3, "temperature": 0},
            headers={"Authorization": f"Bearer {swarm.buyer_key}"},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        assert isinstance(answer.json()["choices"][0]["text"], str)
    finally:
        swarm.buyer.cancel_job(job_id)
    keys = {
        o.key.split("/models/adder/2/")[1]
        for o in swarm.objects().list("")
        if "/models/adder/2/" in o.key
    }
    assert {"adapter_config.json", ".published"} <= keys, keys
    _until(lambda: _state(swarm, job_id, "cancelled", "succeeded", "failed"), "the end", 120)


# Its waits add up to more than the default 300 s on a slow machine (a lease to form, 14
# DeepSpeed steps, a replacement to join, 16 more steps).
@pytest.mark.timeout(900)
def test_a_killed_seller_is_replaced_and_training_resumes_from_the_last_checkpoint(swarm, workdir):
    _until(lambda: sum(s["state"] == "online" for s in swarm.admin.sellers()) == 3, "online")
    spec = lora("resumer", 30, training=lora("x", 30)["training"] | {"checkpoint_every": 10})
    submitted = swarm.buyer.submit_job(spec, pack_working_dir(workdir, 2**22))
    running = _until(lambda: _state(swarm, submitted["id"], "running"), "running", 200)
    folder = _until(lambda: _runs(swarm, "resumer"), "the run folder", 200)
    _until(lambda: _steps_done(folder) >= 14, "training past its first checkpoint", 300)
    victim = next(m for m in running["lease"]["members"] if not m["driver"])
    name = next(n for n, i in swarm.ids.items() if i == victim["seller_id"])
    swarm.vanish(name)

    done = _until(lambda: _state(swarm, submitted["id"], "succeeded", "failed"), "end", 500)
    logs = swarm.buyer.job_logs(submitted["id"])["text"]
    assert done["state"] == "succeeded", (done, logs[-3000:])
    steps = [int(line.split()[0]) for line in folder.read_text("steps.log").splitlines()]
    events = folder.read_text("events.log").split()
    assert events[0] == "resumed" and len(events) == 3, events  # one restart, from a checkpoint
    resumed = int(events[1])
    assert resumed >= 10 and resumed % 10 == 0 and events[2] == f"step-{resumed:06d}", events
    # Every step up to the checkpoint it resumed from ran exactly once; all 30 ran.
    assert sorted(s for s in steps if s <= resumed) == list(range(1, resumed + 1))
    assert set(steps) == set(range(1, 31))

    billed = _settled(swarm, submitted["id"])
    members = {m["seller_id"]: m for m in billed["lease"]["members"]}
    assert members[victim["seller_id"]]["state"] == "dropped"
    replacement = swarm.ids["s3"]
    assert members[replacement]["attached_at"] is not None
    # The lost seller is paid until it was lost, not to the end of the lease.
    lost = members[victim["seller_id"]]
    assert lost["attached_at"] < lost["detached_at"] < members[replacement]["detached_at"]


def _runs(swarm, name: str) -> StoredRun | None:
    """The run folder in the store of the buyer's run called `name`."""
    store = swarm.objects()
    run = re.compile(rf"[^/]+/runs/{re.escape(name)}-[0-9a-f]{{12}}/")
    prefixes = {m.group(0) for o in store.list("") if (m := run.match(o.key))}
    assert len(prefixes) <= 1, prefixes
    return StoredRun(store, prefixes.pop()) if prefixes else None


def _steps_done(folder: StoredRun) -> int:
    return len((folder.read_text("steps.log") or "").splitlines())


def test_a_pipeline_job_runs_one_stage_per_seller_and_matches_a_single_process(swarm, tmp_path):
    from computeswarm.jobs.train.pipeline import reference_losses

    folder = tmp_path / "pipe"
    make_tiny_model(folder / "model", "llama")
    synthetic_addition(folder / "data.jsonl", n=300)
    _until(lambda: sum(s["state"] == "online" for s in swarm.admin.sellers()) >= 2, "online")
    spec = lora("piper", 8) | {"kind": "pipeline"}
    del spec["deepspeed"]
    spec["training"] |= {"eval_every": 4}
    spec["pipeline"] = {"micro_batches": 4, "batch_size": 8}
    submitted = swarm.buyer.submit_job(spec, pack_working_dir(folder, 2**22))
    running = _until(lambda: _state(swarm, submitted["id"], "running"), "running", 200)
    stages = swarm.buyer.job(submitted["id"])["training"]["stages"]
    members = {m["seller_id"] for m in running["lease"]["members"]}
    assert {s["seller_id"] for s in stages} == members and len(stages) == 2
    assert [s["layers"] for s in stages] == ["0-1", "2-3"]  # equal VRAM: an even split

    done = _until(lambda: _state(swarm, submitted["id"], "succeeded", "failed"), "end", 400)
    logs = swarm.buyer.job_logs(submitted["id"])["text"]
    assert done["state"] == "succeeded", (done, logs[-3000:])
    result = json.loads(run_folder(swarm, submitted["id"]).read_text("result.json"))
    placement = result["metrics"]["placement"]
    addresses = {s["id"]: s["address"] for s in swarm.admin.sellers()}
    from computeswarm.tunnel.backends.none import loopback_address

    assert {p["node_ip"] for p in placement} == {loopback_address(addresses[m]) for m in members}, (
        placement
    )
    steps_log = run_folder(swarm, submitted["id"]).read_text("steps.log").split()
    losses = {int(n): float(x) for n, x in zip(steps_log[::2], steps_log[1::2], strict=True)}
    training = spec["training"] | {"eval_fraction": 0.1, "seed": 0}
    expected = reference_losses(folder / "model", folder / "data.jsonl", training, 8, 5)
    # Same model, data and optimizer split over two sellers: the same losses to 1e-4.
    for step, want in enumerate(expected, 1):
        assert losses[step] == pytest.approx(want, rel=1e-4), (step, losses, expected)


def test_a_cancelled_run_resubmitted_resumes_from_its_last_checkpoint(swarm, workdir):
    _until(lambda: sum(s["state"] == "online" for s in swarm.admin.sellers()) >= 2, "online")
    # Low-bandwidth mode: the resume path without DeepSpeed (adapter + per-rank optimizer
    # state); the killed-seller test above resumes a DeepSpeed run.
    spec = lora("again", 30, low_bandwidth={"sync_every": 5})
    first = swarm.buyer.submit_job(spec, pack_working_dir(workdir, 2**22))
    _until(lambda: _state(swarm, first["id"], "running"), "running", 200)
    folder = _until(lambda: _runs(swarm, "again"), "the run folder", 200)
    # The buyer watches it live in a terminal: its step climbs and its spend rises.
    watch = [sys.executable, "-m", "computeswarm.cli", "jobs", "watch", first["id"]]
    with Terminal([*watch, "--coordinator", swarm.url, "--api-key", swarm.buyer_key]) as term:
        seen = term.wait_for(
            lambda shown: _watched(shown, first["id"]) is not None or "[exited" in shown, 60
        )
        assert "[exited" not in seen, seen.strip()
        step, spent = _watched(seen, first["id"])
        _until(lambda: _steps_done(folder) >= 14, "training past its first checkpoint", 300)
        later = term.wait_for(
            lambda shown: (w := _watched(shown, first["id"])) and w[0] > step and w[1] > spent
        )
        assert "running" in later and "q quits" in later, later
        term.press("q")
        _until(lambda: term.exit_status() is not None, "the view to quit on q", 10)
        assert term.exit_status() == 0, term.screen()
    assert swarm.buyer.cancel_job(first["id"])["state"] == "cancelled"
    _settled(swarm, first["id"])
    assert folder.read_text("result.json") is None

    # The same spec and data: the same run folder, resumed rather than started over.
    second = swarm.buyer.submit_job(spec, pack_working_dir(workdir, 2**22))
    done = _until(lambda: _state(swarm, second["id"], "succeeded", "failed"), "end", 400)
    assert done["state"] == "succeeded", swarm.buyer.job_logs(second["id"])["text"][-3000:]
    assert _runs(swarm, "again").prefix == folder.prefix and folder.exists("result.json")
    events = folder.read_text("events.log").split()
    assert events[0] == "resumed" and int(events[1]) >= 10, events
    resumed = int(events[1])
    steps = [int(line.split()[0]) for line in folder.read_text("steps.log").splitlines()]
    assert sorted(s for s in steps if s <= resumed) == list(range(1, resumed + 1))
    assert set(steps) == set(range(1, 31))


def _watched(screen: str, job_id: str) -> tuple[int, float] | None:
    """(step, spent) on the job's row of `jobs watch`."""
    for line in screen.splitlines():
        step = re.search(r"step (\d+)/", line)
        spent = re.search(r"(\d+\.\d{6}) of", line)
        if job_id in line and step and spent:
            return int(step[1]), float(spent[1])
    return None


@pytest.mark.timeout(900)
def test_the_quickstart_notebook_runs_end_to_end_with_a_real_kernel(swarm, tmp_path, monkeypatch):
    """configs/examples/notebooks/quickstart.ipynb, executed by a real Jupyter kernel
    against this swarm: quote, LoRA training with its loss plotted, the adapter
    downloaded, served, and asked through `job.openai()`."""
    nbformat = pytest.importorskip("nbformat", reason="pip install -e .[test]")
    nbclient = pytest.importorskip("nbclient", reason="pip install -e .[test]")
    from tests.integration.browser import ARTIFACTS

    path = Path(__file__).resolve().parents[2] / "configs/examples/notebooks/quickstart.ipynb"
    notebook = nbformat.read(path, as_version=4)
    monkeypatch.setenv("COMPUTESWARM_COORDINATOR", swarm.url)
    monkeypatch.setenv("COMPUTESWARM_API_KEY", swarm.buyer_key)
    monkeypatch.setenv("COMPUTESWARM_HOME", str(tmp_path / "home"))  # no profile of the box's
    monkeypatch.setenv("QUICKSTART_DIR", str(tmp_path / "work"))
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        client.execute()
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, ARTIFACTS / "quickstart.executed.ipynb")
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert any("image/png" in o.get("data", {}) for o in outputs), "no loss plot"
    assert "succeeded cost" in text and "registered adder@" in text, text
    assert "adapter_config.json" in text, text
    answer = re.search(r"^'(.*)'$", text, re.M)
    assert answer is not None, text  # what the served adapter answered (a string)
    assert "cancelled cost" in text, text
