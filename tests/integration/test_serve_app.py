"""A serve job end to end on a local Ray: the real driver (`python -m computeswarm.serve.run`)
deploys a tiny GPT-2 and two LoRA adapters on Ray Serve, and a client talks OpenAI over HTTP.

The test process starts its own Ray cluster (`address="local"`, 2 fake GPUs, loopback) so
it never touches anyone else's Ray on the machine; the driver attaches to it by RAY_ADDRESS,
as a Ray job's driver would, and is stopped by SIGTERM like the swarm stops it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from computeswarm.serve import openai

# The serve driver's own checks (errors, SIGTERM, exit codes) on a local Ray: left out of CI
# for time; the e2e serve test covers the driver's main path through the gateway in CI.
pytestmark = pytest.mark.slow

BASE = "tiny-gpt2"
MAX_TOKENS = 24  # the spec's cap
STARTUP_TIMEOUT_S = 150


@dataclass
class Job:
    url: str
    driver: subprocess.Popen
    run_dir: Path
    job_dir: Path
    log: Path

    def status(self) -> dict:
        return json.loads((self.run_dir / "serve.json").read_text())


def make_models(job_dir: Path) -> dict[str, Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from computeswarm.jobs.train.tiny import make_tiny_model

    base = make_tiny_model(job_dir / BASE, "gpt2", layers=2, width=32)
    adapters = {}
    for name, seed in (("adder", 1), ("other", 2)):
        torch.manual_seed(seed)  # random B: each adapter changes the base's outputs
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(base),
            LoraConfig(
                r=4, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False
            ),
        )
        adapters[name] = job_dir / "adapters" / name
        model.save_pretrained(adapters[name])
    return adapters


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    import ray

    job_dir = tmp_path_factory.mktemp("serve-job")
    adapters = make_models(job_dir)
    spec = {
        "kind": "serve",
        "name": "adder-api",
        "runtime_env": {"working_dir": "."},
        "model": BASE,
        # "adder" is a registered version: the coordinator resolves it (COMPUTESWARM_ADAPTERS).
        "adapters": {"adder": "adder@1", "other": "./adapters/other"},
        "replicas": {"min": 1, "max": 2},
        "max_concurrent_requests": 8,
        "max_tokens": MAX_TOKENS,
        "resources": {"gpus": "any:24GB:2", "nodes": 1},
        "pricing": {"max_price_per_gpu_hour": 1.0},
    }
    (job_dir / "computeswarm-job.json").write_text(json.dumps(spec))
    saved_address = os.environ.get("RAY_ADDRESS")
    temp_dir = tempfile.mkdtemp(prefix="csrv", dir="/tmp")  # short: Unix socket paths
    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=temp_dir,
        object_store_memory=100 * 1024**2,
        configure_logging=False,
    )
    port = free_port()
    run_dir = job_dir / "run"
    log = job_dir / "driver.log"
    env = {
        **os.environ,
        "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
        "COMPUTESWARM_NODE_IP": "127.0.0.1",
        "COMPUTESWARM_ADAPTERS": json.dumps({"adder": str(adapters["adder"])}),
        "COMPUTESWARM_SERVE_HOST": "127.0.0.1",
        "COMPUTESWARM_SERVE_PORT": str(port),
        "COMPUTESWARM_RUN_DIR": str(run_dir),
    }
    with log.open("w") as out:
        driver = subprocess.Popen(
            [sys.executable, "-m", "computeswarm.serve.run", "computeswarm-job.json"],
            cwd=job_dir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killable as one
        )
    job = Job(f"http://127.0.0.1:{port}", driver, run_dir, job_dir, log)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not (run_dir / "serve.json").exists():
            assert driver.poll() is None, f"driver exited {driver.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"not ready in time:\n{log.read_text()}"
            time.sleep(0.5)
        yield job
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGTERM)
            try:
                driver.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(driver.pid, signal.SIGKILL)
                driver.wait()
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
        if saved_address is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = saved_address


@pytest.fixture(scope="module")
def reference(job):
    """Greedy completions straight from PEFT: what the server must reproduce exactly."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(job.job_dir / BASE)
    cache: dict[tuple[str, str, int], tuple[str, int]] = {}

    def complete(model: str, prompt: str, max_tokens: int) -> tuple[str, int]:
        key = (model, prompt, max_tokens)
        if key not in cache:
            net = AutoModelForCausalLM.from_pretrained(job.job_dir / BASE)
            if model != BASE:
                net = PeftModel.from_pretrained(net, job.job_dir / "adapters" / model)
            encoded = tokenizer(prompt, return_tensors="pt")
            output = net.generate(**encoded, do_sample=False, max_new_tokens=max_tokens)
            new = output[0, encoded["input_ids"].shape[1] :]
            cache[key] = (tokenizer.decode(new, skip_special_tokens=True), len(new))
        return cache[key]

    return complete


def post(job: Job, path: str, body: dict) -> httpx.Response:
    return httpx.post(job.url + path, json=body, timeout=60)


def stream_events(job: Job, path: str, body: dict) -> list:
    with httpx.stream("POST", job.url + path, json={**body, "stream": True}, timeout=60) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        return openai.parse_sse(resp.read().decode())


def test_ready_and_lists_base_and_adapters(job):
    status = job.status()
    assert status["state"] == "ready"
    assert status["url"] == job.url
    assert status["models"] == [BASE, "adder", "other"]
    assert status["replicas"]["min"] == 1 and status["replicas"]["max"] == 2
    assert status["replicas"]["running"] >= 1
    assert f"serving {BASE}, adder, other at {job.url}" in job.log.read_text()
    listed = httpx.get(job.url + "/v1/models", timeout=30).json()
    assert listed["object"] == "list"
    assert [m["id"] for m in listed["data"]] == [BASE, "adder", "other"]


def test_greedy_completions_equal_peft_generate(job, reference):
    prompt = "12+34="
    texts = {}
    for model in ("adder", "other", BASE):
        resp = post(
            job,
            "/v1/completions",
            {"model": model, "prompt": prompt, "max_tokens": 12, "temperature": 0},
        )
        assert resp.status_code == 200, resp.text
        body = resp.json()
        expected, count = reference(model, prompt, 12)
        assert body["object"] == "text_completion" and body["model"] == model
        assert body["choices"][0]["text"] == expected
        usage = body["usage"]
        assert usage["prompt_tokens"] == len(prompt)  # one token per character
        assert usage["completion_tokens"] == count
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert usage["gpu_seconds"] > 0
        texts[model] = expected
    assert texts["adder"] != texts["other"]
    assert len(set(texts.values())) == 3


def test_max_tokens_is_capped_by_the_spec(job):
    resp = post(
        job,
        "/v1/completions",
        {"model": "adder", "prompt": "7", "max_tokens": 500, "temperature": 0},
    )
    body = resp.json()
    assert 1 <= body["usage"]["completion_tokens"] <= MAX_TOKENS
    if body["choices"][0]["finish_reason"] == "length":
        assert body["usage"]["completion_tokens"] == MAX_TOKENS


def test_chat_completion(job, reference):
    messages = [{"role": "user", "content": "2+2="}]
    resp = post(
        job,
        "/v1/chat/completions",
        {"model": "other", "messages": messages, "max_tokens": 8, "temperature": 0},
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    expected, count = reference("other", "user: 2+2=\nassistant: ", 8)
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": expected}
    assert body["usage"]["completion_tokens"] == count


def test_streamed_completion_concatenates_to_the_whole_one(job):
    request = {"model": "adder", "prompt": "9+9=", "max_tokens": 10, "temperature": 0}
    whole = post(job, "/v1/completions", request).json()
    events = stream_events(job, "/v1/completions", request)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len(chunks) >= 2
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert last["usage"]["completion_tokens"] == whole["usage"]["completion_tokens"]
    assert last["usage"]["prompt_tokens"] == whole["usage"]["prompt_tokens"]
    assert all("usage" not in c for c in chunks[:-1])
    assert len({c["id"] for c in chunks}) == 1


def test_streamed_chat(job):
    request = {
        "model": BASE,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 6,
        "temperature": 0,
    }
    whole = post(job, "/v1/chat/completions", request).json()
    events = stream_events(job, "/v1/chat/completions", request)
    chunks = events[:-1]
    assert events[-1] == "[DONE]"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["usage"]["total_tokens"] == whole["usage"]["total_tokens"]


def test_unknown_model_and_invalid_requests(job):
    resp = post(job, "/v1/completions", {"model": "nope", "prompt": "x"})
    assert resp.status_code == 404
    error = resp.json()["error"]
    assert error["code"] == "model_not_found" and error["type"] == "invalid_request_error"
    assert "nope" in error["message"]
    resp = post(job, "/v1/chat/completions", {"model": BASE, "messages": []})
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"
    assert "messages" in resp.json()["error"]["message"]
    resp = post(job, "/v1/completions", {"model": BASE, "prompt": "x", "max_tokens": 0})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "max_tokens"


def test_sigterm_shuts_serve_down_and_exits_0(job):
    os.killpg(job.driver.pid, signal.SIGTERM)
    assert job.driver.wait(60) == 0, job.log.read_text()
    assert job.status()["state"] == "stopped"
    with pytest.raises(httpx.HTTPError):
        httpx.get(job.url + "/v1/models", timeout=5)


def test_missing_adapter_folder_exits_2(tmp_path):
    (tmp_path / BASE).mkdir()
    spec = {
        "kind": "serve",
        "name": "x",
        "model": BASE,
        "adapters": {"a": "./adapters/a"},
        "pricing": {"max_price_per_gpu_hour": 1.0},
        "runtime_env": {"working_dir": "."},
    }
    (tmp_path / "job.json").write_text(json.dumps(spec))
    env = {**os.environ, "COMPUTESWARM_RUN_DIR": str(tmp_path / "run"), "RAY_ADDRESS": "none"}
    done = subprocess.run(
        [sys.executable, "-m", "computeswarm.serve.run", "job.json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "adapters.a: no adapter at" in done.stderr
    assert "Traceback" not in done.stderr
