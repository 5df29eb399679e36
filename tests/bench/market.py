"""Benchmark: market decisions per second with `OrderBook`, vs the naive `match`; and what
placing bids in arrival order costs buyers, vs the cost-optimal assignment.

Two figures, each the median of `--runs` runs (run i uses seed `--seed` + i, so the runs see
different synthetic books; every number is reproducible from the seed):

1. Speed. `--bids` bids (10,000) are placed in order with `OrderBook.place` against `--asks`
   asks (50,000). The asks: a few GPU models, 8-48 GB VRAM, 1-8 free GPUs, an ask of
   0.10-2.00 per GPU-hour, reliability 0.5-1.0, some with a short max lease or an
   availability window. The bids: a model (or any, one in five), a VRAM floor, 1-4 nodes of
   1-2 GPUs, a max price of 0.15-2.50 per GPU-hour (around the asks' buyer prices, so some
   bids cannot be served), a reliability floor and a duration. Each `place` is timed on its
   own (the garbage collector off while timing): decisions/s is bids / total time, with the
   p50 and p99 of one decision; building the book is timed apart. The baseline, in the same
   run: the naive `match`, which checks every ask, for a sample of `--naive-bids` (200) of
   the same bids against the full list of asks; the ratio is mean naive decision time /
   mean `OrderBook` decision time.

2. Cost. `--opt-bids` single-node, single-GPU bids (2,000) against `--opt-asks` single-GPU
   asks (3,000, no lease or availability limits): each bid is derived from a distinct ask it
   fits, so an assignment serving every bid exists. The greedy figure is what `OrderBook`
   charges buyers when the bids arrive in (random) order, each taking the cheapest ask left;
   the optimum is scipy's `linear_sum_assignment` on the buyer-price matrix (a pair that
   `explain` refuses costs `BIG`). Greedy can leave a bid unserved that the optimum serves, so
   the ratio compares like with like: greedy's total over the bids it placed / the optimal
   total for those same bids (>= 1; 1 means greedy lost nothing). The optimal total serving
   all bids is printed too.

scipy and numpy come with the project (the market's rounds use scipy). `make bench`
runs it; CI does not:

    .venv/bin/python -m computeswarm.tests.bench.market [--asks N] [--bids N] [--runs N] ...
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from computeswarm.cluster.market.book import Ask, Bid, Match, OrderBook, buyer_price, explain, match

NOW = 1_700_000_000.0
HOUR = 3600.0
MODELS = ("RTX3090", "RTX4090", "A100", "H100")
VRAMS = (8, 12, 16, 24, 32, 40, 48)
RELIABILITY_FLOORS = (0.0, 0.5, 0.8, 0.9, 0.95)
BIG = 10**15  # the cost of an infeasible pair: more than any assignment of feasible ones


@dataclass
class SpeedRun:
    build_s: float
    latencies_ns: list[int]
    matched: int
    naive_latencies_ns: list[int]

    @property
    def rate(self) -> float:
        return len(self.latencies_ns) / (sum(self.latencies_ns) / 1e9)

    @property
    def naive_rate(self) -> float:
        return len(self.naive_latencies_ns) / (sum(self.naive_latencies_ns) / 1e9)

    def percentile_us(self, q: float, naive: bool = False) -> float:
        ordered = sorted(self.naive_latencies_ns if naive else self.latencies_ns)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000


@dataclass
class CostRun:
    bids: int
    placed: int
    greedy_micros: int  # what buyers pay per hour, over the bids greedy placed
    optimal_same_micros: int  # the optimum for those same bids
    optimal_all_micros: int  # the optimum serving every bid

    @property
    def ratio(self) -> float:
        return self.greedy_micros / self.optimal_same_micros


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--asks", type=int, default=50_000, help="asks in the book")
    parser.add_argument("--bids", type=int, default=10_000, help="bids placed in order")
    parser.add_argument("--naive-bids", type=int, default=200, help="bids for the baseline")
    parser.add_argument("--opt-asks", type=int, default=3_000, help="asks for the cost figure")
    parser.add_argument("--opt-bids", type=int, default=2_000, help="bids for the cost figure")
    parser.add_argument("--runs", type=int, default=3, help="runs; medians reported")
    parser.add_argument("--seed", type=int, default=20240601, help="run i uses seed + i")
    args = parser.parse_args()
    if args.opt_bids > args.opt_asks:
        parser.error("--opt-bids must not exceed --opt-asks (each bid comes from its own ask)")

    speed = [bench_speed(args, random.Random(args.seed + i)) for i in range(args.runs)]
    report_speed(speed, args)
    cost = [bench_cost(args, random.Random(args.seed + i)) for i in range(args.runs)]
    report_cost(cost, args)


# --- the synthetic market ----------------------------------------------------------------------


def make_asks(n: int, rng: random.Random) -> list[Ask]:
    return [
        Ask(
            seller_id=f"s{i:06d}",
            gpu_model=rng.choice(MODELS),
            vram_gb=rng.choice(VRAMS),
            free_gpus=rng.randint(1, 8),
            ask_micros=rng.randint(100_000, 2_000_000),
            reliability=round(rng.uniform(0.5, 1.0), 3),
            max_lease_s=rng.choice((6 * HOUR, 24 * HOUR, 24 * HOUR, 7 * 24 * HOUR)),
            available_until=None if rng.random() < 0.7 else NOW + rng.uniform(HOUR, 48 * HOUR),
        )
        for i in range(n)
    ]


def make_bids(n: int, rng: random.Random) -> list[Bid]:
    return [
        Bid(
            job_id=f"j{i:06d}",
            gpu_model=None if rng.random() < 0.2 else rng.choice(MODELS),
            min_vram_gb=rng.choice((0, 8, 16, 24, 32, 48)),
            nodes=rng.randint(1, 4),
            gpus_per_node=rng.randint(1, 2),
            max_price_micros=rng.randint(150_000, 2_500_000),
            min_reliability=rng.choice(RELIABILITY_FLOORS),
            duration_s=rng.choice((0.5 * HOUR, HOUR, 4 * HOUR, 12 * HOUR)),
        )
        for i in range(n)
    ]


# --- 1. speed ------------------------------------------------------------------------------


def bench_speed(args, rng: random.Random) -> SpeedRun:
    asks = make_asks(args.asks, rng)
    bids = make_bids(args.bids, rng)
    sample = rng.sample(bids, min(args.naive_bids, len(bids)))

    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter()
        book = OrderBook(asks, NOW)
        build_s = time.perf_counter() - started
        latencies, matched = [], 0
        for bid in bids:
            t0 = time.perf_counter_ns()
            result = book.place(bid)
            latencies.append(time.perf_counter_ns() - t0)
            matched += isinstance(result, Match)
        naive = []
        for bid in sample:
            t0 = time.perf_counter_ns()
            match(bid, asks, NOW)
            naive.append(time.perf_counter_ns() - t0)
    finally:
        gc.enable()
    return SpeedRun(build_s, latencies, matched, naive)


def report_speed(runs: list[SpeedRun], args) -> None:
    def med(values) -> float:
        return statistics.median(values)

    print(
        f"\nMarket decisions: {args.bids} bids placed in order against {args.asks} asks;"
        f" median of {args.runs} runs:"
    )
    print(f"  {'':<22} {'decisions/s':>12} {'p50 us':>9} {'p99 us':>9}   runs (decisions/s)")
    print(
        f"  {'OrderBook.place':<22} {med(r.rate for r in runs):12.0f}"
        f" {med(r.percentile_us(0.5) for r in runs):9.1f}"
        f" {med(r.percentile_us(0.99) for r in runs):9.1f}   "
        + ", ".join(f"{r.rate:.0f}" for r in runs)
    )
    label = f"naive match ({args.naive_bids})"
    print(
        f"  {label:<22} {med(r.naive_rate for r in runs):12.1f}"
        f" {med(r.percentile_us(0.5, True) for r in runs):9.1f}"
        f" {med(r.percentile_us(0.99, True) for r in runs):9.1f}   "
        + ", ".join(f"{r.naive_rate:.1f}" for r in runs)
    )
    print(
        f"\n  OrderBook / naive match speed ratio = {med(r.rate / r.naive_rate for r in runs):.0f}x"
        f"   (building the book: {med(r.build_s for r in runs):.2f} s;"
        f" bids matched: {med(r.matched for r in runs) / args.bids:.0%})"
    )


# --- 2. cost vs the optimum ----------------------------------------------------------------


def make_cost_market(args, rng: random.Random) -> tuple[list[Ask], list[Bid]]:
    asks = [
        Ask(
            seller_id=f"s{i:06d}",
            gpu_model=rng.choice(MODELS),
            vram_gb=rng.choice(VRAMS),
            free_gpus=1,
            ask_micros=rng.randint(100_000, 2_000_000),
            reliability=round(rng.uniform(0.5, 1.0), 3),
            max_lease_s=30 * 24 * HOUR,
        )
        for i in range(args.opt_asks)
    ]
    bids = []
    for i, origin in enumerate(rng.sample(asks, args.opt_bids)):  # distinct asks, random order
        bids.append(
            Bid(
                job_id=f"j{i:06d}",
                gpu_model=None if rng.random() < 0.2 else origin.gpu_model,
                min_vram_gb=rng.choice([v for v in (0, *VRAMS) if v <= origin.vram_gb]),
                nodes=1,
                gpus_per_node=1,
                max_price_micros=buyer_price(origin.ask_micros) + rng.randint(0, 500_000),
                min_reliability=rng.choice(
                    [r for r in RELIABILITY_FLOORS if r <= origin.reliability]
                ),
                duration_s=HOUR,
            )
        )
    return asks, bids


def cost_matrix(asks: list[Ask], bids: list[Bid]) -> np.ndarray:
    """Buyer price per GPU-hour of each (bid, ask) pair; BIG where `explain` refuses it."""
    model_index = {m: i for i, m in enumerate(MODELS)}
    a_model = np.array([model_index[a.gpu_model] for a in asks])
    a_vram = np.array([a.vram_gb for a in asks])
    a_rel = np.array([a.reliability for a in asks])
    a_price = np.array([buyer_price(a.ask_micros) for a in asks], dtype=np.int64)
    b_model = np.array([-1 if b.gpu_model is None else model_index[b.gpu_model] for b in bids])
    b_vram = np.array([b.min_vram_gb for b in bids])
    b_rel = np.array([b.min_reliability for b in bids])
    b_max = np.array([b.max_price_micros for b in bids], dtype=np.int64)
    feasible = (
        ((b_model[:, None] == -1) | (b_model[:, None] == a_model[None, :]))
        & (a_vram[None, :] >= b_vram[:, None])
        & (a_rel[None, :] >= b_rel[:, None])
        & (a_price[None, :] <= b_max[:, None])
    )
    return np.where(feasible, a_price[None, :], BIG)


def bench_cost(args, rng: random.Random) -> CostRun:
    asks, bids = make_cost_market(args, rng)
    cost = cost_matrix(asks, bids)
    # The vectorised feasibility must be `explain`'s (these asks have no lease/window limits).
    for _ in range(2_000):
        i, j = rng.randrange(len(bids)), rng.randrange(len(asks))
        assert (cost[i, j] < BIG) == (explain(bids[i], asks[j], NOW) is None), (i, j)

    book = OrderBook(asks, NOW)
    column = {a.seller_id: j for j, a in enumerate(asks)}
    placed, greedy = [], 0
    for i, bid in enumerate(bids):
        result = book.place(bid)
        if isinstance(result, Match):
            (alloc,) = result.allocations
            assert cost[i, column[alloc.seller_id]] == alloc.price_micros
            placed.append(i)
            greedy += alloc.price_micros

    optimal_all = _optimum(cost)
    optimal_same = _optimum(cost[placed])
    return CostRun(len(bids), len(placed), greedy, optimal_same, optimal_all)


def _optimum(cost: np.ndarray) -> int:
    rows, cols = linear_sum_assignment(cost)
    chosen = cost[rows, cols]
    assert len(rows) == cost.shape[0] and (chosen < BIG).all(), "some bid cannot be served"
    return int(chosen.sum())


def report_cost(runs: list[CostRun], args) -> None:
    med = statistics.median
    print(
        f"\nBuyer cost: {args.opt_bids} single-GPU bids in arrival order against"
        f" {args.opt_asks} single-GPU asks; median of {args.runs} runs:"
    )
    print(
        f"  greedy (OrderBook) placed {med(r.placed for r in runs):.0f} of {args.opt_bids} bids"
        " (the optimum places all): " + ", ".join(f"{r.placed}" for r in runs)
    )
    for r in runs:
        print(
            f"    greedy {r.greedy_micros / 1e6:10.2f}/h over its {r.placed} bids;"
            f" optimal for those {r.optimal_same_micros / 1e6:10.2f}/h;"
            f" optimal for all {r.bids}: {r.optimal_all_micros / 1e6:10.2f}/h"
        )
    print(
        f"\n  greedy / optimal buyer cost ratio (same bids) = {med(r.ratio for r in runs):.4f}"
        "   runs: " + ", ".join(f"{r.ratio:.4f}" for r in runs)
    )


if __name__ == "__main__":
    main()
