"""The live view's pure core: spend so far and its rate, each kind's progress, rows."""

from __future__ import annotations

from computeswarm.cluster.api.views import JobView
from computeswarm.jobs.watch import job_rows, progress, seller_rows, spend_micros


def view(**extra) -> JobView:
    base = {
        "id": "j-1",
        "name": "adder",
        "kind": "lora",
        "state": "running",
        "created_at": 1000.0,
        "started_at": 1010.0,
        "lease": {
            "id": "l-1",
            "state": "running",
            "price_per_hour": "0.720000",
            "escrow": "0.500000",
            "members": [
                {
                    "seller_id": "s-a",
                    "gpus": 2,
                    "state": "attached",
                    "price_per_gpu_hour": "0.360000",
                    "attached_at": 1000.0,
                },
                {
                    "seller_id": "s-b",
                    "gpus": 1,
                    "state": "detached",
                    "price_per_gpu_hour": "0.360000",
                    "attached_at": 1000.0,
                    "detached_at": 1100.0,
                },
            ],
        },
        "training": {"steps": 30, "step": 12, "recent_losses": [2.5, 2.25]},
    }
    return JobView.model_validate(base | extra)


def test_spend_rises_with_attached_time_and_the_settled_cost_replaces_it():
    job = view()
    spent, rate = spend_micros(job, 1000.0 + 3600)
    # s-a: 2 GPUs x 0.36 for an hour; s-b: 1 GPU x 0.36 for 100 s (detached: no rate).
    assert spent == 720_000 + 10_000 and rate == 720_000
    assert spend_micros(job, 1000.0 + 7200)[0] > spent
    assert spend_micros(view(cost="0.123456"), 99999.0) == (123_456, 0)


def test_each_kind_reports_its_progress():
    assert progress(view()) == "step 12/30, loss 2.250"
    sweep = view(
        kind="sweep",
        training=None,
        sweep={"trials": {"completed": 2, "stopped_early": 1, "running": 2},
               "best": {"trial_id": "t1", "metric": 0.4321}, "trials_cost": "0.1"},
    )  # fmt: skip
    assert progress(sweep) == "trials 3/5 done, best 0.4321"
    serve = view(
        kind="serve",
        training=None,
        serve={"endpoint": "/v1/serve/j-1/v1", "ready": True, "requests": 7,
               "completion_tokens": 140},
    )  # fmt: skip
    assert progress(serve) == "ready, 7 requests, 140 tokens out"
    assert progress(view(kind="script", training=None, reason="waiting for supply")) == (
        "waiting for supply"
    )


def test_rows_show_time_sellers_spend_of_escrow_and_rate():
    [row] = job_rows([view()], 1010.0 + 125)
    assert row[:6] == ("j-1", "adder", "lora", "running", "2m05s", "2")
    assert row[7].endswith(" of 0.500000") and row[8] == "0.720000"
    [seller] = seller_rows(
        [{"id": "s-a", "name": "box", "state": "online", "last_heartbeat": 95.0, "rtt_ms": 12.34,
          "gpus": [{"model": "RTX4090", "vram_gb": 24}] * 2,
          "offer": {"price_per_gpu_hour": "0.30"}}],
        100.0,
    )  # fmt: skip
    assert seller == ("box", "online", "2 x RTX4090", "0.30", "12.3", "5s ago")
