"""What a seller has earned, what it is earning, and at what rate: pure, from the ledger's
entries and the seller's stints in leases.

Money is released when a lease settles (its escrow pays the seller); until then what a
running lease has accrued is pending. The rate is the last 15 minutes' average, as Salad
shows it: what a seller would earn in a day or a month if the next ones were like them.
"""

from __future__ import annotations

from dataclasses import dataclass

DAY_S = 86_400
RATE_WINDOW_S = 900.0  # the predicted earnings' window
DAYS_SHOWN = 30


@dataclass(frozen=True)
class Stint:
    """One lease membership of this seller, as far as it has run."""

    lease_id: str
    gpus: int
    ask_micros: int  # per GPU-hour, to the seller
    attached_at: float | None
    until: float | None  # detached, or the lease's end; None: still running
    settled: bool  # its lease has paid out

    def seconds(self, start: float, end: float) -> int:
        """How long the stint ran between `start` and `end`."""
        if self.attached_at is None:
            return 0
        stop = min(end, self.until if self.until is not None else end)
        return int(max(0.0, stop - max(start, self.attached_at)))

    def micros(self, start: float, end: float) -> int:
        """What the stint earns between `start` and `end` (billed by the whole second)."""
        return self.ask_micros * self.gpus * self.seconds(start, end) // 3600


@dataclass(frozen=True)
class Payout:
    """A seller's ledger entry: a settled lease paid `micros` at `at`."""

    lease_id: str
    micros: int
    at: float


def summary(payouts: list[Payout], stints: list[Stint], now: float) -> dict:
    """Released in the last 24 h / 7 days / 30 days, pending, the 15-minute rate, a bar per
    day for the last 30 days (released by the day it settled, pending on today), and the
    running lease (its buyer is not the seller's business: only the lease and its GPUs)."""
    pending = sum(s.micros(0.0, now) for s in stints if not s.settled)
    busy = sum(s.ask_micros * s.gpus * s.seconds(now - RATE_WINDOW_S, now) for s in stints)
    rate = busy / RATE_WINDOW_S  # micros an hour
    today = int(now // DAY_S)
    daily = {today - d: 0 for d in range(DAYS_SHOWN)}
    for p in payouts:
        if int(p.at // DAY_S) in daily:
            daily[int(p.at // DAY_S)] += p.micros
    running = [s for s in stints if s.until is None and s.attached_at is not None]
    return {
        "released_micros": sum(p.micros for p in payouts),
        "released_24h_micros": _since(payouts, now - DAY_S),
        "released_7d_micros": _since(payouts, now - 7 * DAY_S),
        "released_30d_micros": _since(payouts, now - 30 * DAY_S),
        "pending_micros": pending,
        "rate_micros_per_hour": int(rate),
        "predicted_day_micros": int(rate * 24),
        "predicted_month_micros": int(rate * 24 * 30),
        "daily": [{"day": day * DAY_S, "released_micros": daily[day]} for day in sorted(daily)],
        "current": [
            {
                "lease_id": s.lease_id,
                "gpus": s.gpus,
                "since": s.attached_at,
                "ask_micros": s.ask_micros,
                "accrued_micros": s.micros(0.0, now),
            }
            for s in running
        ],
    }


def _since(payouts: list[Payout], start: float) -> int:
    return sum(p.micros for p in payouts if p.at >= start)
