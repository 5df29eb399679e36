"""The pure parts of the training kinds: spec checks before leasing, batch order, sync
cost, checkpoint choice, run identity."""

from __future__ import annotations

import json

import pytest

from computeswarm.jobs.errors import SpecError
from computeswarm.jobs.spec import LoraJob, PipelineJob, check_inputs, parse_job_spec
from computeswarm.jobs.train.lora import (
    COMPLETE,
    deepspeed_config,
    latest_complete_checkpoint,
    lora_targets,
    mark_complete,
    micro_batch,
    sync_bytes_per_step,
)
from computeswarm.jobs.train.runs import ring_allreduce_bytes, run_name, spec_hash


def training_spec(kind: str = "lora", **extra) -> dict:
    return {
        "kind": kind,
        "name": "t",
        "model": "model",
        "dataset": "data.jsonl",
        "runtime_env": {"working_dir": "."},
        "resources": {"gpus": "any:2", "nodes": 2},
        "pricing": {"max_price_per_gpu_hour": "1"},
        **extra,
    }


def refused(data: dict) -> str:
    with pytest.raises(SpecError) as e:
        parse_job_spec(data)
    return str(e.value)


def test_a_lora_spec_gets_defaults_one_worker_per_gpu():
    job = parse_job_spec(training_spec())
    assert isinstance(job, LoraJob)
    assert job.num_workers == 2 and job.lora.rank == 8 and job.deepspeed.zero_stage == 2
    assert job.model_name == "t" and job.low_bandwidth is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"lora": {"rank": 0}}, "lora.rank: Input should be greater than or equal to 1"),
        ({"lora": {"rank": -4}}, "lora.rank"),
        ({"deepspeed": {"zero_stage": 1}}, "deepspeed.zero_stage"),
        ({"workers": 3}, "workers (3) > leased GPUs (2)"),
        ({"dataset": "../secret.jsonl"}, "inside the job's working_dir"),
        ({"runtime_env": {}}, "need runtime_env.working_dir"),
        ({"low_bandwidth": {"sync_every": 1}}, "low_bandwidth.sync_every"),
        ({"init_adapter": "bad name!"}, "init_adapter"),
        ({"lora": {"rnak": 4}}, "did you mean 'rank'"),
    ],
)
def test_bad_lora_specs_are_refused_with_the_reason(extra, message):
    assert message in refused(training_spec(**extra))


def test_a_pipeline_spec_gets_one_stage_per_node():
    job = parse_job_spec(training_spec("pipeline"))
    assert isinstance(job, PipelineJob) and job.num_stages == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"pipeline": {"stages": 3}}, "pipeline.stages (3) > resources.nodes (2)"),
        ({"pipeline": {"stages": 1}}, "ge"),  # at least two stages
        ({"deepspeed": {"zero_stage": 3}}, "ZeRO-3) does not combine with pipeline"),
        ({"resources": {"gpus": "any:1", "nodes": 1}}, "resources.nodes >= 2"),
        ({"resources": {"gpus": "any:4", "nodes": 2}}, "one GPU"),
        ({"pipeline": {"batch_size": 6, "micro_batches": 4}}, "not a multiple"),
    ],
)
def test_bad_pipeline_specs_are_refused_with_the_reason(extra, message):
    assert message in refused(training_spec("pipeline", **extra))


def test_inputs_are_checked_before_leasing(tmp_path):
    job = parse_job_spec(training_spec())
    with pytest.raises(SpecError, match=r"dataset .data\.jsonl. is not a file"):
        check_inputs(job, tmp_path)
    (tmp_path / "data.jsonl").write_text('{"text": "hi"}\n')
    check_inputs(job, tmp_path)  # "model" is not a folder and not path-like: a hub id
    with pytest.raises(SpecError, match=r"model path .\./missing. not found"):
        check_inputs(parse_job_spec(training_spec(model="./missing")), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecError, match=r"has no config\.json"):
        check_inputs(parse_job_spec(training_spec(model="empty")), tmp_path)
    (tmp_path / "empty" / "config.json").write_text("{}")
    check_inputs(parse_job_spec(training_spec(model="empty")), tmp_path)


def test_batches_are_a_pure_function_of_the_step():
    shard = list(range(10))
    assert micro_batch(shard, 0, 0, 2, 3) == [0, 1, 2]
    assert micro_batch(shard, 0, 1, 2, 3) == [3, 4, 5]
    assert micro_batch(shard, 1, 0, 2, 3) == [6, 7, 8]
    assert micro_batch(shard, 1, 1, 2, 3) == [9, 0, 1]  # wraps: the data repeats
    assert micro_batch(shard, 7, 1, 2, 3) == micro_batch(shard, 7, 1, 2, 3)


def test_low_bandwidth_mode_sends_1_over_h_of_the_bytes():
    assert ring_allreduce_bytes(1000, 1) == 0
    assert ring_allreduce_bytes(1000, 2) == 1000
    assert ring_allreduce_bytes(1000, 4) == 1500
    full = sync_bytes_per_step(4096, 2, None)
    assert sync_bytes_per_step(4096, 2, 8) == full / 8


def test_deepspeed_config_follows_the_spec():
    ds = {"zero_stage": 3, "micro_batch": 4, "gradient_accumulation": 8}
    config = deepspeed_config(ds, 0.01, cuda=False)
    assert config["zero_optimization"]["stage"] == 3
    assert config["gradient_accumulation_steps"] == 8
    assert config["train_micro_batch_size_per_gpu"] == 4
    assert config["optimizer"]["params"] == {"lr": 0.01, "torch_adam": True}
    assert (
        config["bf16"]["enabled"] is False and deepspeed_config(ds, 0.01, True)["bf16"]["enabled"]
    )


def test_lora_targets_default_per_architecture():
    assert lora_targets("gpt2", None) == (["c_attn", "c_proj", "c_fc"], True)
    assert lora_targets("llama", None)[0][:2] == ["q_proj", "k_proj"]
    assert lora_targets("llama", ["q_proj"]) == (["q_proj"], False)


class Registered:
    def __init__(self, path):
        self.path = str(path)


def test_only_complete_checkpoints_are_resumed(tmp_path):
    from computeswarm.jobs.run_store import RunStore

    run = RunStore(str(tmp_path), in_store=False)
    for step in (10, 20, 30):
        (tmp_path / f"step-{step:06d}").mkdir()
    mark_complete(run, "step-000010", 10, 2)
    mark_complete(run, "step-000020", 20, 2)
    # step 30 has no marker: a rank died while uploading it.
    assert latest_complete_checkpoint(run, None) == "step-000020"
    registered = Registered("bucket/acct/runs/x/step-000010")
    assert latest_complete_checkpoint(run, registered) == "step-000020"
    assert latest_complete_checkpoint(RunStore(str(tmp_path / "nothing"), False), None) is None
    assert json.loads((tmp_path / "step-000020" / COMPLETE).read_text()) == {
        "step": 20,
        "world": 2,
    }


def test_a_run_is_named_by_what_its_weights_depend_on():
    spec = parse_job_spec(training_spec()).model_dump(mode="json")
    cheaper = {**spec, "pricing": {"max_price_per_gpu_hour": "0.5", "budget": None}}
    assert spec_hash(spec) == spec_hash(cheaper)
    longer = {**spec, "training": {**spec["training"], "steps": 500}}
    assert spec_hash(spec) != spec_hash(longer)
    assert run_name("t", "a", "b") == run_name("t", "a", "b") != run_name("t", "a", "c")
    assert run_name("t", "a", "b").startswith("t-")


def test_epochs_become_the_same_step_count_on_every_rank():
    from computeswarm.jobs.train.lora import total_steps

    assert total_steps({"steps": 7, "epochs": None}, 1000, 2, 8, 1) == 7
    # 2 passes over 1000 samples, 2 workers x 8 samples x 2 micro-steps per step.
    assert total_steps({"steps": 7, "epochs": 2}, 1000, 2, 8, 2) == 63
    assert total_steps({"steps": 7, "epochs": 0.001}, 10, 2, 8, 1) == 1
    assert "training.epochs is for lora" in refused(
        training_spec("pipeline", training={"epochs": 1})
    )


def test_market_quote_shows_the_pipeline_split_over_the_matched_sellers(tmp_path, monkeypatch):
    from transformers import GPT2Config
    from typer.testing import CliRunner

    import computeswarm.jobs.cli as jobs_cli
    from computeswarm.cli import app

    (tmp_path / "model").mkdir()
    config = GPT2Config(n_layer=6, n_embd=64, n_head=4, vocab_size=100, tie_word_embeddings=False)
    (tmp_path / "model" / "config.json").write_text(config.to_json_string())
    (tmp_path / "data.jsonl").write_text('{"text": "1+1=2"}\n')
    spec = training_spec("pipeline", model="model", resources={"gpus": "any:2", "nodes": 2})
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(json.dumps(spec))

    class Matched:
        def quote(self, spec: dict, explain: bool) -> dict:
            sellers = [("s-big", 24), ("s-small", 12)]
            return {
                "matched": True,
                "price_per_hour": "0.8",
                "estimated_cost": "0.8",
                "max_duration_s": 3600,
                "escrow": "0.8",
                "sellers": [
                    {
                        "seller_id": s,
                        "vram_gb": v,
                        "gpus": 1,
                        "ask_per_gpu_hour": "0.4",
                        "price_per_gpu_hour": "0.44",
                    }
                    for s, v in sellers
                ],
            }

    monkeypatch.setattr(jobs_cli, "_client", lambda *_: Matched())
    result = CliRunner().invoke(app, ["market", "quote", str(spec_file)])
    assert result.exit_code == 0, result.output
    # 24 GB and 12 GB: the bigger GPU holds twice the blocks.
    assert "stage 0 on s-big (24 GB): layers 0-3" in result.output
    assert "stage 1 on s-small (12 GB): layers 4-5" in result.output


def test_a_model_path_on_the_coordinators_host_is_refused_and_errors_name_no_host_path(tmp_path):
    """M7: a spec could name any folder with a config.json on the coordinator's host
    (another buyer's upload); L2: errors showed the coordinator's own paths."""
    other = tmp_path / "other-buyer" / "model"
    other.mkdir(parents=True)
    (other / "config.json").write_text("{}")
    (tmp_path / "data.jsonl").write_text('{"text": "hi"}\n')
    for model in (str(other), "~/model"):
        with pytest.raises(SpecError, match="absolute paths are not allowed") as refusal:
            check_inputs(parse_job_spec(training_spec(model=model)), tmp_path)
        assert str(tmp_path) not in str(refusal.value).replace(model, "")
    with pytest.raises(SpecError) as missing:
        check_inputs(parse_job_spec(training_spec(dataset="nope.jsonl")), tmp_path)
    assert str(tmp_path) not in str(missing.value)


def test_an_upload_cannot_choose_its_run_folder_and_drivers_cannot_be_shadowed(tmp_path):
    """C1: a file named `computeswarm-run-dir` in a buyer's upload chose the run folder
    (another buyer's run came back that way), and `python -m` ran a driver module from the
    buyer's working_dir first."""
    from computeswarm.cluster.kinds import serve as serve_jobs
    from computeswarm.cluster.kinds import sweep as sweep_jobs
    from computeswarm.cluster.kinds import training as training_jobs
    from computeswarm.cluster.store.models import Job

    upload = tmp_path / "upload"
    upload.mkdir()
    (upload / "data.jsonl").write_text('{"text": "hi"}\n')
    (upload / "computeswarm-run-dir").write_text(str(tmp_path / "someone-else" / "runs" / "x"))
    spec = parse_job_spec(training_spec())
    job = Job(
        id="j-1",
        account_id="acct-a",
        name="t",
        spec=spec.model_dump(mode="json"),
        upload_path=str(upload),
    )
    from tests.unit.test_run_store import FakeBucket

    chosen = training_jobs.choose_run_prefix(FakeBucket({}), job, spec)
    assert chosen.startswith("acct-a/runs/t-")
    assert job.run_dir == chosen  # recorded by the coordinator, read back from there
    assert training_jobs.choose_run_prefix(FakeBucket({}), job, spec) == chosen
    for module in (training_jobs, sweep_jobs, serve_jobs):
        assert module.ENTRYPOINT.startswith("python -I -m computeswarm.")
