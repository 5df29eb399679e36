"""Cost-aware launching: a sweep starts its next trial only while the cost cap allows it.

Money is integer micro-units (1 currency unit = 1_000_000 micros), as in the ledger. The
decision is a pure function of numbers (`CostBook.decide`); the driver's searcher builds a
book from the trial records and acts on the answer. Pure Python: no Ray.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

SECONDS_PER_HOUR = 3600


def trial_cost_micros(gpu_seconds: float, price_micros_per_gpu_hour: int) -> int:
    """What `gpu_seconds` of GPU time cost, billed like the ledger bills a lease: whole
    seconds (floored) times the price per GPU-hour, integer-divided by 3600 (floored).
    `gpu_seconds` already sums over the trial's GPUs (a sweep trial holds one)."""
    return int(max(gpu_seconds, 0.0)) * int(price_micros_per_gpu_hour) // SECONDS_PER_HOUR


class LaunchDecision(enum.Enum):
    """What the searcher does with a free slot."""

    LAUNCH = "launch"  # start the next planned trial
    WAIT = "wait"  # it would not fit now, but running trials may end cheaper than estimated
    STOP = "stop"  # it does not fit and nothing is running: the plan's rest is skipped

    @property
    def is_terminal(self) -> bool:
        return self is LaunchDecision.STOP


@dataclass(frozen=True)
class TrialSpend:
    """One launched trial, as the book sees it.

    `cost_micros` is what it has cost so far (final once `finished`); `iterations` the
    reports it made; `full` whether it ran to the planned number of reports (a trial that
    ASHA stopped early or that failed is finished but not full).
    """

    cost_micros: int = 0
    gpu_seconds: float = 0.0
    iterations: int = 0
    finished: bool = False
    full: bool = False


@dataclass(frozen=True)
class CostBook:
    """The cap, the price and every launched trial's spend: enough to decide a launch.

    A trial's estimated cost is the mean cost of the trials that ran to the end; before any
    did, the mean seconds per report of the trials seen so far times `max_iterations`;
    before any report at all, 0 (the first trials are always allowed).
    """

    cap_micros: int | None
    price_micros: int
    max_iterations: int | None = None
    trials: tuple[TrialSpend, ...] = field(default_factory=tuple)

    @property
    def spent_micros(self) -> int:
        """Finished trials' final costs plus running trials' costs so far."""
        return sum(t.cost_micros for t in self.trials)

    def estimate_micros(self) -> int:
        """What one more whole trial is expected to cost."""
        full = [t.cost_micros for t in self.trials if t.full]
        if full:
            return -(-sum(full) // len(full))  # ceiling: round estimates against the buyer's risk
        progressed = [t for t in self.trials if t.iterations > 0]
        if not progressed:
            return 0
        if self.max_iterations is None:  # no known length: what they cost so far, at least
            return max(t.cost_micros for t in progressed)
        per_report = sum(t.gpu_seconds / t.iterations for t in progressed) / len(progressed)
        return trial_cost_micros(per_report * self.max_iterations, self.price_micros)

    def remaining_micros(self) -> int:
        """What the running trials are expected to cost from now until they end."""
        estimate = self.estimate_micros()
        return sum(max(estimate - t.cost_micros, 0) for t in self.trials if not t.finished)

    def may_launch(self) -> bool:
        """True if spent + running trials' remaining estimates + one more trial's estimate
        stays within the cap (always, without a cap)."""
        if self.cap_micros is None:
            return True
        committed = self.spent_micros + self.remaining_micros() + self.estimate_micros()
        return committed <= self.cap_micros

    def decide(self) -> LaunchDecision:
        if self.may_launch():
            return LaunchDecision.LAUNCH
        if any(not t.finished for t in self.trials):
            return LaunchDecision.WAIT
        return LaunchDecision.STOP
