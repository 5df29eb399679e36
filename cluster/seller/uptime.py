"""This box's uptime as its agent saw it: the minutes of each day in which a heartbeat
reached the coordinator, kept for 30 days in the seller's state dir (`uptime.json`).

A minute with no answered heartbeat counts as down, whatever the cause (the box off, the
agent stopped, the tunnel or the coordinator unreachable): what a buyer would have seen.
"""

from __future__ import annotations

import json
from pathlib import Path

DAY_S = 86_400
DAYS_KEPT = 30
UPTIME_FILE = "uptime.json"


def beat(record: dict, now: float) -> dict:
    """`record` after a heartbeat answered at `now` (a minute counts once)."""
    minute = int(now // 60)
    if record.get("last_minute") == minute:
        return record
    today = int(now // DAY_S)
    minutes = {d: n for d, n in record.get("minutes", {}).items() if int(d) > today - DAYS_KEPT}
    minutes[str(today)] = minutes.get(str(today), 0) + 1
    return {"last_minute": minute, "minutes": minutes}


def daily(record: dict, now: float) -> list[dict]:
    """The last 30 days, oldest first: each day's share of minutes up (today's of the
    minutes so far)."""
    today = int(now // DAY_S)
    out = []
    for day in range(today - DAYS_KEPT + 1, today + 1):
        up = record.get("minutes", {}).get(str(day), 0)
        elapsed = 1440 if day < today else max(1, int(now % DAY_S // 60) + 1)
        out.append({"day": day * DAY_S, "up_minutes": up, "uptime": min(1.0, up / elapsed)})
    return out


class UptimeLog:
    """The record on disk, written when a new minute is up (not at every heartbeat)."""

    def __init__(self, state_dir: Path):
        self.path = state_dir / UPTIME_FILE
        self.record = load(state_dir)

    def beat(self, now: float) -> None:
        updated = beat(self.record, now)
        if updated is not self.record:
            self.record = updated
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(updated))
            tmp.replace(self.path)


def load(state_dir: Path) -> dict:
    try:
        record = json.loads((state_dir / UPTIME_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}
