"""Cost-aware launching of sweep trials: costs, estimates and launch decisions, from
injected numbers (no clock, no Ray)."""

from __future__ import annotations

from computeswarm.tune.budget import CostBook, LaunchDecision, TrialSpend, trial_cost_micros
from computeswarm.tune.records import (
    COMPLETED,
    LOST,
    RUNNING,
    SKIPPED_BUDGET,
    STOPPED_EARLY,
    TrialRecord,
    best_trial,
    finish,
    observe_result,
    sweep_status,
)

PRICE = 3_600_000  # 3.6 currency units per GPU-hour = 1_000 micros per GPU-second


def test_trial_cost_floors_seconds_and_micros_like_the_ledger():
    assert trial_cost_micros(0, PRICE) == 0
    assert trial_cost_micros(10.99, PRICE) == 10_000  # whole seconds only
    assert trial_cost_micros(3600, 1_000_000) == 1_000_000
    assert trial_cost_micros(1, 1_000_000) == 277  # 1_000_000 / 3600, floored
    assert trial_cost_micros(-5, PRICE) == 0


def spend(cost, seconds=0.0, iterations=0, finished=True, full=None):
    full = finished and iterations >= 4 if full is None else full
    return TrialSpend(cost, seconds, iterations, finished, full)


def test_without_a_cap_every_launch_is_allowed():
    book = CostBook(None, PRICE, 4, (spend(10**12, 10**9, 4),))
    assert book.may_launch() and book.decide() is LaunchDecision.LAUNCH


def test_before_anything_ran_the_estimate_is_zero_and_the_first_trial_launches():
    book = CostBook(1, PRICE, 4)
    assert book.estimate_micros() == 0
    assert book.decide() is LaunchDecision.LAUNCH


def test_the_estimate_is_the_mean_cost_of_trials_that_ran_to_the_end():
    book = CostBook(
        100_000,
        PRICE,
        4,
        (
            spend(10_000, 10, 4),
            spend(20_001, 20, 4),
            spend(2_000, 2, 1, full=False),  # stopped early: not a full trial
        ),
    )
    assert book.estimate_micros() == 15_001  # ceil(30_001 / 2)
    assert book.spent_micros == 32_001


def test_before_any_finished_the_estimate_extrapolates_running_progress():
    # 6 s for 2 of 4 reports and 4 s for 1 of 4: mean 3.5 s per report -> 14 s per trial.
    book = CostBook(
        100_000,
        PRICE,
        4,
        (spend(6_000, 6.0, 2, finished=False), spend(4_000, 4.0, 1, finished=False)),
    )
    assert book.estimate_micros() == 14_000
    # Remaining: 14_000 - 6_000 and 14_000 - 4_000.
    assert book.remaining_micros() == 18_000


def test_a_trial_launches_only_if_spent_plus_remaining_plus_its_estimate_fit_the_cap():
    trials = (spend(10_000, 10, 4), spend(4_000, 4, 2, finished=False))
    # spent 14_000 + running's remaining 6_000 + next 10_000 = 30_000.
    assert CostBook(30_000, PRICE, 4, trials).decide() is LaunchDecision.LAUNCH
    too_tight = CostBook(29_999, PRICE, 4, trials)
    assert not too_tight.may_launch()
    assert too_tight.decide() is LaunchDecision.WAIT  # the running trial may end early


def test_with_nothing_running_a_launch_that_does_not_fit_stops_the_sweep():
    book = CostBook(25_000, PRICE, 4, (spend(10_000, 10, 4), spend(10_000, 10, 4)))
    decision = book.decide()
    assert decision is LaunchDecision.STOP and decision.is_terminal
    assert not LaunchDecision.WAIT.is_terminal


def test_a_running_trial_over_its_estimate_counts_what_it_spent_not_less():
    book = CostBook(100_000, PRICE, 4, (spend(10_000, 10, 4), spend(30_000, 30, 3, False)))
    assert book.remaining_micros() == 0
    assert book.spent_micros == 40_000


def test_unknown_trial_length_estimates_at_least_what_trials_cost_so_far():
    book = CostBook(100_000, PRICE, None, (spend(7_000, 7, 3, finished=False),))
    assert book.estimate_micros() == 7_000


def record(trial_id="t1", index=0, max_iterations=4):
    return TrialRecord(
        trial_id=trial_id, index=index, params={"lr": 0.1}, max_iterations=max_iterations
    )


def test_observing_results_keeps_history_cost_and_best_metric():
    r = record()
    observe_result(
        r,
        {
            "training_iteration": 1,
            "step": 5,
            "eval_loss": 3.0,
            "trial_seconds": 10.5,
            "node_ip": "10.0.0.2",
            "time_total_s": 99.0,
            "done": False,
        },
        "eval_loss",
        "min",
        PRICE,
    )
    observe_result(
        r,
        {"training_iteration": 2, "step": 10, "eval_loss": 3.5, "trial_seconds": 20.2},
        "eval_loss",
        "min",
        PRICE,
    )
    assert r.history == [
        {"iteration": 1, "step": 5, "eval_loss": 3.0, "trial_seconds": 10.5},
        {"iteration": 2, "step": 10, "eval_loss": 3.5, "trial_seconds": 20.2},
    ]
    assert (r.iterations, r.metric, r.best_metric, r.node_ip) == (2, 3.5, 3.0, "10.0.0.2")
    assert r.gpu_seconds == 20.2 and r.cost_micros == trial_cost_micros(20.2, PRICE)
    # A replayed report after a restore replaces history from its iteration on.
    observe_result(
        r,
        {"training_iteration": 2, "eval_loss": 2.5, "trial_seconds": 25.0},
        "eval_loss",
        "min",
        PRICE,
    )
    assert [h["iteration"] for h in r.history] == [1, 2] and r.best_metric == 2.5


def test_function_trials_without_trial_seconds_bill_tunes_total_time():
    r = record()
    observe_result(
        r, {"training_iteration": 1, "score": 1.0, "time_total_s": 12.0}, "score", "max", PRICE
    )
    assert r.gpu_seconds == 12.0 and r.cost_micros == 12_000


def test_finish_tells_completed_from_stopped_early_and_error():
    full, early, failed = record("a"), record("b"), record("c")
    full.iterations, early.iterations, failed.iterations = 4, 1, 2
    assert finish(full, stopped=True, error=None, now=1.0).state == COMPLETED
    assert finish(early, stopped=True, error=None, now=1.0).state == STOPPED_EARLY
    assert finish(failed, stopped=False, error="boom", now=1.0).state == "error"
    unknown = TrialRecord("d", 3, {}, iterations=7)  # function trial: length unknown
    assert finish(unknown, stopped=True, error=None, now=1.0).state == STOPPED_EARLY


def test_best_trial_and_sweep_status():
    a, b, c, lost = record("a", 0), record("b", 1), record("c", 2), record("x", 3)
    a.state, a.metric, a.cost_micros = COMPLETED, 2.0, 10
    b.state, b.metric, b.cost_micros, b.node_ip = RUNNING, 1.0, 5, "10.0.0.3"
    c.state, c.metric, c.cost_micros = STOPPED_EARLY, 3.0, 2
    lost.state, lost.error, lost.cost_micros = "error", LOST, 1
    skip = TrialRecord("skipped-00004", 4, {}, state=SKIPPED_BUDGET)
    records = [a, b, c, lost, skip]
    assert best_trial(records, "min") is a  # b is still running
    assert best_trial(records, "max") is c
    status = sweep_status(records, planned=6, price_micros=PRICE, cap_micros=20, finished=False)
    assert status == {
        "state": "running",
        "planned": 6,
        "launched": 3,  # a, b, c: the lost one's position relaunches, the skipped never ran
        "finished": 2,
        "launching_done": True,
        "budget_stopped": True,
        "busy_node_ips": ["10.0.0.3"],
        "spent_micros": 18,
        "price_micros": PRICE,
        "cost_cap_micros": 20,
    }


def test_records_round_trip_atomically_and_read_leniently(tmp_path):
    from computeswarm.jobs.run_store import RunStore
    from computeswarm.tune.records import (
        read_json,
        read_trials,
        relative_to_run,
        write_json,
        write_trial,
    )

    run = RunStore(str(tmp_path), False)
    write_trial(run, record("b", 1))
    write_trial(run, record("a", 0))
    data = read_json(run, "trials/a.json") | {"added_later": 1}
    write_json(run, "trials/a.json", data)
    assert not list((tmp_path / "trials").glob("*.partial"))  # whole files, nothing left
    (tmp_path / "trials" / "torn.json").write_text("{not json")
    (tmp_path / "trials" / "c.json.partial").write_text("{}")  # a write in progress
    assert [r.trial_id for r in read_trials(run)] == ["a", "b"]  # plan order
    assert read_json(run, "missing.json") is None
    # Checkpoints are recorded relative to the run: the coordinator accepts nothing else.
    assert relative_to_run(run, f"{tmp_path}/experiment/t1/checkpoint_000002") == (
        "experiment/t1/checkpoint_000002"
    )
    assert relative_to_run(run, f"{tmp_path}/../other/checkpoint") is None
    store = RunStore("computeswarm/acct/runs/r1", True)
    assert relative_to_run(store, "computeswarm/acct/runs/r1/experiment/t/c") == "experiment/t/c"
    assert relative_to_run(store, "computeswarm/acct/runs/r10/x") is None


def test_the_searcher_never_hands_a_plan_position_out_twice_even_if_a_listing_lags(
    tmp_path, monkeypatch
):
    """Seen once in CI: a sweep ran plan position 2 as two trials. A record just written
    may be missing from the next listing of the store; the searcher also remembers what it
    handed out, and that memory travels with Tune's snapshot of it."""
    from computeswarm.jobs.run_store import RunStore
    from computeswarm.tune import records as rec
    from computeswarm.tune.experiment import PlanSearcher
    from computeswarm.tune.run import SweepPlan

    configs = [{"index": i, "params": {"x": i}, "max_iterations": 3} for i in range(3)]
    plan = SweepPlan("function", configs, "loss", "min", {}, 3, None, 3, {})
    searcher = PlanSearcher(plan, RunStore(str(tmp_path / "run"), False), 0)
    monkeypatch.setattr(rec, "read_trials", lambda run: [])  # the listing lags
    first, second = searcher.suggest("t1"), searcher.suggest("t2")
    assert (first["index"], second["index"]) == (0, 1)
    restored = PlanSearcher(plan, RunStore(str(tmp_path / "run"), False), 0)
    restored.set_state(searcher.get_state())
    assert restored.suggest("t3")["index"] == 2
    assert restored.suggest("t4") is restored.FINISHED
