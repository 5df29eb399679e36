"""What the seller's dashboard says it earned: released by settled leases, pending on the
running ones, the last 15 minutes' rate, and 30 days by day."""

from computeswarm.cluster.sellers.earnings import DAY_S, RATE_WINDOW_S, Payout, Stint, summary

NOW = 100 * DAY_S + 12 * 3600.0  # noon of day 100
ASK = 400_000  # 0.40 per GPU-hour


def test_released_is_what_settled_leases_paid_by_window():
    payouts = [
        Payout("old", 5_000, NOW - 40 * DAY_S),  # outside 30 days: in the total only
        Payout("month", 3_000, NOW - 10 * DAY_S),
        Payout("week", 2_000, NOW - 3 * DAY_S),
        Payout("today", 1_000, NOW - 600),
    ]
    out = summary(payouts, [], NOW)
    assert out["released_micros"] == 11_000
    assert out["released_24h_micros"] == 1_000
    assert out["released_7d_micros"] == 3_000
    assert out["released_30d_micros"] == 6_000
    assert out["pending_micros"] == 0 and out["rate_micros_per_hour"] == 0
    assert len(out["daily"]) == 30 and out["daily"][-1]["day"] == 100 * DAY_S
    assert [d["released_micros"] for d in out["daily"]][-1] == 1_000
    assert sum(d["released_micros"] for d in out["daily"]) == 6_000


def test_a_running_lease_is_pending_and_sets_the_rate():
    running = Stint("l-run", 2, ASK, NOW - 1800, None, settled=False)  # 30 min, 2 GPUs
    out = summary([], [running], NOW)
    assert out["pending_micros"] == ASK * 2 // 2  # half an hour of two GPUs
    assert out["rate_micros_per_hour"] == ASK * 2  # busy the whole window
    assert out["predicted_day_micros"] == ASK * 2 * 24
    assert out["predicted_month_micros"] == ASK * 2 * 24 * 30
    (current,) = out["current"]
    assert current == {
        "lease_id": "l-run",
        "gpus": 2,
        "since": NOW - 1800,
        "ask_micros": ASK,
        "accrued_micros": ASK,
    }
    assert "account" not in str(current)  # the buyer is not the seller's business


def test_the_rate_counts_only_the_last_15_minutes_of_each_stint():
    # Settled 5 minutes ago after an hour: 10 of the window's 15 minutes were busy.
    ended = Stint("l-done", 1, ASK, NOW - 3900, NOW - 300, settled=True)
    # Releasing (not settled yet): pending up to its end, not to now.
    releasing = Stint("l-rel", 1, ASK, NOW - 1200, NOW - 600, settled=False)
    out = summary([Payout("l-done", ASK, NOW - 300)], [ended, releasing], NOW)
    busy_s = (RATE_WINDOW_S - 300) + (RATE_WINDOW_S - 600)
    assert out["rate_micros_per_hour"] == int(ASK * busy_s / RATE_WINDOW_S)
    assert out["pending_micros"] == ASK * 600 // 3600
    assert out["current"] == []


def test_a_member_that_never_attached_earns_nothing():
    out = summary([], [Stint("l-x", 1, ASK, None, None, settled=False)], NOW)
    assert out["pending_micros"] == 0 and out["current"] == []
