"""The seller's uptime record: minutes with an answered heartbeat, 30 days."""

from computeswarm.cluster.seller.uptime import DAY_S, UptimeLog, beat, daily, load

DAY = 200 * DAY_S


def test_a_minute_counts_once_however_many_heartbeats_it_has():
    record = {}
    for second in range(0, 120, 2):  # two minutes of heartbeats every 2 s
        record = beat(record, DAY + second)
    assert record["minutes"] == {str(DAY // DAY_S): 2}


def test_days_are_shares_of_their_minutes_and_old_days_are_dropped():
    record = {"last_minute": 0, "minutes": {str(DAY // DAY_S - 40): 5, str(DAY // DAY_S - 1): 720}}
    now = DAY + 599  # ten minutes into today
    for minute in range(5):
        record = beat(record, DAY + 60 * minute)
    assert str(DAY // DAY_S - 40) not in record["minutes"]
    days = daily(record, now)
    assert len(days) == 30 and days[-1]["day"] == DAY
    assert days[-2]["uptime"] == 0.5  # 720 of 1440 minutes yesterday
    assert days[-1]["uptime"] == 0.5  # 5 of the 10 minutes so far today
    assert days[0]["uptime"] == 0.0


def test_the_log_survives_a_restart_and_ignores_a_broken_file(tmp_path):
    log = UptimeLog(tmp_path)
    log.beat(DAY)
    log.beat(DAY + 61)
    assert UptimeLog(tmp_path).record["minutes"] == {str(DAY // DAY_S): 2}
    (tmp_path / "uptime.json").write_text("{not json")
    assert load(tmp_path) == {}
