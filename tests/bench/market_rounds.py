"""Benchmark: bids matched as a round (`place_round`) vs one by one in arrival order
(`OrderBook.place`, the baseline) vs the optimum, in one run; medians of `--runs` runs
(run i uses seed `--seed` + i).

1. One-GPU bids: `--bids` (2,000) single-node, single-GPU bids against `--asks` (3,000)
   single-GPU asks, each bid made from a distinct ask it fits, so serving every bid is
   possible (the market benchmark's cost market). The optimum: scipy's
   `linear_sum_assignment` on the buyer-price matrix.
2. Mixed bids: `--mixed-bids` (150) bids of 1-3 nodes of 1-2 GPUs against `--mixed-asks`
   (200) asks of 1-4 free GPUs. The optimum: an integer program (scipy's `milp`, HiGHS)
   that serves the most bids, and among those pays the least (HiGHS's best within
   `--milp-s` seconds where it does not prove optimality in time; then it says so).
3. Growth: a round of `--round` (500) mixed bids against books of 10,000 to 200,000 asks:
   the time of the round, and of placing the same bids one by one.

Placed: bids served. Cost ratio: what buyers pay for the bids a matcher served / the
optimum's price for those same bids (1 is optimal). `make bench` runs it; CI does not:

    .venv/bin/python -m computeswarm.tests.bench.market_rounds [--runs N] ...
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import numpy as np
from scipy.optimize import LinearConstraint, linear_sum_assignment, milp
from scipy.sparse import lil_matrix

from computeswarm.cluster.market.batch import place_round
from computeswarm.cluster.market.book import Ask, Bid, Match, OrderBook, buyer_price, explain
from computeswarm.tests.bench.market import (
    BIG,
    HOUR,
    MODELS,
    NOW,
    RELIABILITY_FLOORS,
    VRAMS,
    cost_matrix,
    make_asks,
    make_cost_market,
)


def greedy(asks: list[Ask], bids: list[Bid]) -> list:
    book = OrderBook(asks, NOW)
    return [book.place(b) for b in bids]


def batch(asks: list[Ask], bids: list[Bid]) -> list:
    return place_round(OrderBook(asks, NOW), bids)


def paid(decisions: list) -> tuple[list[int], int]:
    served = [i for i, d in enumerate(decisions) if isinstance(d, Match)]
    return served, sum(decisions[i].price_per_hour_micros for i in served)


# --- 1. one-GPU bids -----------------------------------------------------------------------


def one_gpu_run(args, rng: random.Random) -> dict:
    asks, bids = make_cost_market(
        argparse.Namespace(opt_asks=args.asks, opt_bids=args.bids), random.Random(rng.random())
    )
    cost = cost_matrix(asks, bids)
    out = {}
    for name, matcher in (("greedy", greedy), ("round", batch)):
        started = time.perf_counter()
        served, total = paid(matcher(asks, bids))
        seconds = time.perf_counter() - started
        rows, cols = linear_sum_assignment(cost[served])
        out[name] = (len(served), total / int(cost[served][rows, cols].sum()), seconds)
    rows, cols = linear_sum_assignment(cost)
    out["optimum"] = (int((cost[rows, cols] < BIG).sum()), 1.0, 0.0)
    return out


# --- 2. mixed bids -------------------------------------------------------------------------


def mixed_market(n_asks: int, n_bids: int, rng: random.Random) -> tuple[list[Ask], list[Bid]]:
    asks = [
        Ask(
            f"s{i:06d}",
            rng.choice(MODELS),
            rng.choice(VRAMS),
            rng.randint(1, 4),
            rng.randint(100_000, 2_000_000),
            reliability=round(rng.uniform(0.5, 1.0), 3),
        )
        for i in range(n_asks)
    ]
    bids = [
        Bid(
            f"j{i:06d}",
            None if rng.random() < 0.3 else rng.choice(MODELS),
            rng.choice((0, 8, 16, 24)),
            rng.choice((1, 1, 1, 2, 3)),
            rng.choice((1, 1, 2)),
            rng.randint(400_000, 2_500_000),
            min_reliability=rng.choice(RELIABILITY_FLOORS),
            duration_s=HOUR,
        )
        for i in range(n_bids)
    ]
    return asks, bids


MILP_S = 60.0


def optimum(
    asks: list[Ask], bids: list[Bid], must: list[int] | None = None, limit_s: float = MILP_S
) -> tuple[int, int]:
    """(bids served, their price per hour) of the integer program: most bids served, then
    cheapest. `must`: serve exactly these bids (the optimum's price for a matcher's set)."""
    chosen = range(len(bids)) if must is None else must
    pairs = [
        (b, a) for b in chosen for a in range(len(asks)) if explain(bids[b], asks[a], NOW) is None
    ]
    n_x, rows = len(pairs), list(chosen)
    y = {b: n_x + k for k, b in enumerate(rows)}
    prices = [bids[b].gpus_per_node * buyer_price(asks[a].ask_micros) for b, a in pairs]
    weight = sum(prices) + 1  # one more bid served is worth more than any prices
    # Serving exactly `must`, the y are fixed: no weight, or HiGHS's relative gap (of an
    # objective made huge by it) would hide the price differences.
    c = np.array([*prices, *([0 if must else -weight] * len(rows))], dtype=float)
    a_eq, a_cap = lil_matrix((len(rows), n_x + len(rows))), lil_matrix((len(asks), n_x + len(rows)))
    for k, (b, a) in enumerate(pairs):
        a_eq[rows.index(b), k] = 1
        a_cap[a, k] = bids[b].gpus_per_node
    for k, b in enumerate(rows):
        a_eq[k, y[b]] = -bids[b].nodes
    lower = np.zeros(n_x + len(rows))
    if must is not None:
        lower[n_x:] = 1
    result = milp(
        c,
        integrality=np.ones_like(c),
        bounds=(lower, np.ones_like(c)),
        constraints=[
            LinearConstraint(a_eq.tocsr(), 0, 0),
            LinearConstraint(a_cap.tocsr(), 0, [a.free_gpus for a in asks]),
        ],
        options={"time_limit": limit_s, "mip_rel_gap": 1e-9},
    )
    assert result.x is not None, result.message
    if not result.success:
        print(f"  (the integer program: {result.message}; its best so far is used)")
    x = np.round(result.x).astype(int)
    return int(x[n_x:].sum()), int(sum(p for p, v in zip(prices, x[:n_x], strict=True) if v))


def mixed_run(args, rng: random.Random) -> dict:
    asks, bids = mixed_market(args.mixed_asks, args.mixed_bids, rng)
    out = {}
    for name, matcher in (("greedy", greedy), ("round", batch)):
        started = time.perf_counter()
        served, total = paid(matcher(asks, bids))
        seconds = time.perf_counter() - started
        out[name] = (len(served), total / optimum(asks, bids, served, args.milp_s)[1], seconds)
    out["optimum"] = (optimum(asks, bids, None, args.milp_s)[0], 1.0, 0.0)
    return out


# --- 3. growth -----------------------------------------------------------------------------


def growth_run(args, size: int, rng: random.Random) -> dict:
    asks = make_asks(size, rng)
    _, bids = mixed_market(0, args.round, rng)
    out = {}
    for name, matcher in (("greedy", greedy), ("round", batch)):
        started = time.perf_counter()
        served, _ = paid(matcher(asks, bids))
        out[name] = (len(served), time.perf_counter() - started)
    return out


def report(title: str, runs: list[dict], of: int) -> None:
    print(f"\n{title}; median of {len(runs)} runs:")
    print(f"  {'':<9} {'placed':>8} {'share':>7} {'cost ratio':>11} {'seconds':>8}   runs (placed)")
    best = statistics.median(r["optimum"][0] for r in runs)
    for name in ("greedy", "round", "optimum"):
        placed = statistics.median(r[name][0] for r in runs)
        print(
            f"  {name:<9} {placed:8.0f} {placed / best:7.1%}"
            f" {statistics.median(r[name][1] for r in runs):11.4f}"
            f" {statistics.median(r[name][2] for r in runs):8.2f}   "
            + ", ".join(str(r[name][0]) for r in runs)
        )
    print(f"  ({of} bids; share: of what the optimum places)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--asks", type=int, default=3_000)
    parser.add_argument("--bids", type=int, default=2_000)
    parser.add_argument("--mixed-asks", type=int, default=200)
    parser.add_argument("--mixed-bids", type=int, default=150)
    parser.add_argument("--round", type=int, default=500)
    parser.add_argument("--sizes", default="10000,50000,200000")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--milp-s", type=float, default=MILP_S, help="the optimum's time limit")
    args = parser.parse_args()
    seeds = [args.seed + i for i in range(args.runs)]

    one = [one_gpu_run(args, random.Random(s)) for s in seeds]
    report(f"One-GPU bids: {args.bids} against {args.asks} one-GPU asks", one, args.bids)
    mixed = [mixed_run(args, random.Random(s)) for s in seeds]
    report(
        f"Mixed bids (1-3 nodes x 1-2 GPUs): {args.mixed_bids} against {args.mixed_asks} asks",
        mixed,
        args.mixed_bids,
    )
    print(f"\nGrowth: a round of {args.round} mixed bids as the book grows; median of {args.runs}:")
    print(f"  {'asks':>8} {'greedy s':>9} {'round s':>8} {'round/greedy':>13} {'placed g/r':>12}")
    for size in (int(s) for s in args.sizes.split(",")):
        runs = [growth_run(args, size, random.Random(s)) for s in seeds]
        g = statistics.median(r["greedy"][1] for r in runs)
        r_ = statistics.median(r["round"][1] for r in runs)
        placed = "/".join(
            f"{statistics.median(r[k][0] for r in runs):.0f}" for k in ("greedy", "round")
        )
        print(f"  {size:8d} {g:9.2f} {r_:8.2f} {r_ / g:13.1f}x {placed:>12}")
    print(
        "\n  ratios: round / greedy placed (one-GPU) ="
        f" {statistics.median(r['round'][0] / r['greedy'][0] for r in one):.3f};"
        f" round / optimum placed (one-GPU) ="
        f" {statistics.median(r['round'][0] / r['optimum'][0] for r in one):.4f}"
    )


if __name__ == "__main__":
    main()
