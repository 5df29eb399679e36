"""Matching the bids of one round together, not one by one in arrival order. Pure.

Placed in order, each bid taking the cheapest seller that fits, a book strands bids: the
sellers the early bids take were the only ones later bids could use (the market benchmark:
greedy placed 1,630 of 2,000 single-GPU bids that an optimal assignment serves in full).
A round (every bid the scheduler sees waiting in one tick) is matched together instead:

1. The one-GPU, one-node bids are an assignment problem, solved exactly: a min-cost
   bipartite matching (scipy's LAPJVsp) between the bids and the sellers' free GPUs, each
   bid offered its `CANDIDATES` best sellers (its cheapest that fit), four times as many
   while some bid is left unserved and some were not offered all that fit them. Leaving a
   bid unserved costs more than any prices, and more for an earlier bid: the matching
   serves as many bids as it can, among those the earlier ones first, and among those
   pays the least.
2. Bids for several nodes or several GPUs on one seller are placed next, those with the
   fewest sellers to spare first (queue order breaks ties), each on the cheapest sellers
   that fit (as `OrderBook.place`).
3. Room: for each such bid left unserved (up to `REPAIRS` a round), the one-GPU bids' GPUs
   are given back, the bid placed, and the one-GPU bids matched again; kept if no fewer
   of them are served. A one-GPU bid can move to another seller; a 2-GPU bid cannot.

Measured by `tests/bench/market_rounds.py`: all 2,000 of the one-GPU bids that the
optimum serves (arrival order: ~81 %), at its price; of mixed bids about 9 in 10 of what
an integer program places (arrival order: ~8 in 10).

The invariants of `OrderBook` hold: never above a buyer's max, never below an ask, never
more GPUs from a seller than it has free, every bid left unserved has its reason.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from computeswarm.cluster.market.book import Bid, Match, NoMatch, OrderBook, shortfall

CANDIDATES = 64  # sellers first offered to each one-GPU bid; widened while bids go unserved
REPAIRS = 32  # unserved multi-GPU or multi-node bids a round tries to make room for


def place_round(book: OrderBook, bids: Sequence[Bid]) -> list[Match | NoMatch]:
    """Each bid's decision, in the order given (the queue's), consuming `book`'s GPUs."""
    decisions: list[Match | NoMatch | None] = [None] * len(bids)
    singles = [i for i, b in enumerate(bids) if b.nodes == 1 and b.gpus_per_node == 1]
    others = [i for i, b in enumerate(bids) if not (b.nodes == 1 and b.gpus_per_node == 1)]
    _place_singles(book, bids, singles, decisions)
    others.sort(key=lambda i: (len(book.fitting(bids[i])) - bids[i].nodes, i))
    for i in others:
        decisions[i] = book.place(bids[i])
    for i in [i for i in others if isinstance(decisions[i], NoMatch)][:REPAIRS]:
        _make_room(book, bids, singles, decisions, i)
    return decisions  # type: ignore[return-value]


def _place_singles(book: OrderBook, bids: Sequence[Bid], singles: list[int], decisions) -> None:
    if len(singles) == 1:  # alone, the cheapest seller is the optimum
        decisions[singles[0]] = book.place(bids[singles[0]])
    elif singles:
        chosen = _assign_singles(book, [bids[i] for i in singles])
        for i, decision in zip(singles, chosen, strict=True):
            decisions[i] = decision


def _make_room(book: OrderBook, bids: Sequence[Bid], singles: list[int], decisions, i: int) -> None:
    """Place bid `i` where the one-GPU bids are, if they all fit elsewhere (see the top)."""
    trial = book.copy()
    for j in singles:
        if isinstance(decisions[j], Match):
            trial.give(decisions[j].allocations[0].seller_id, 1)
    placed = trial.place(bids[i])
    if not isinstance(placed, Match):
        return
    redone = list(decisions)
    _place_singles(trial, bids, singles, redone)
    if _served(redone, singles) < _served(decisions, singles):
        return
    book.adopt(trial)
    decisions[:] = redone
    decisions[i] = placed


def _served(decisions, indices: list[int]) -> int:
    return sum(isinstance(decisions[i], Match) for i in indices)


def _assign_singles(book: OrderBook, bids: list[Bid]) -> list[Match | NoMatch]:
    """One GPU each, jointly: the min-cost matching of bids to free GPUs (see the top).
    While a bid is left unserved and some bid was offered fewer sellers than fit it,
    every bid is offered four times as many and the round solved again."""
    fitting = [book.fitting(bid) for bid in bids]
    limit = CANDIDATES
    while True:
        options = [f[:limit] for f in fitting]
        assigned = _matching(book, options)
        if (assigned >= 0).all() or all(len(f) <= limit for f in fitting):
            break
        limit *= 4
    out: list[Match | NoMatch] = []
    for bid, fit, column in zip(bids, fitting, assigned, strict=True):
        if column < 0:
            left = int((book.spare[fit] >= 1).sum())
            out.append(NoMatch(bid.job_id, shortfall(bid, left)))
        else:
            out.append(book.take(bid, [book.current(book.ids[column])]))
    return out


def _matching(book: OrderBook, options: list[np.ndarray]) -> np.ndarray:
    """The ask (a position in `book`; -1: unserved) of each bid in the min-cost matching
    of the bids to the free GPUs of the asks they are offered."""
    n = len(options)
    used = np.unique(np.concatenate(options)) if n else np.array([], dtype=int)
    # A seller's free GPUs are interchangeable: a column per GPU that can be used at all.
    units = np.minimum(book.spare[used], n)
    first = np.zeros(len(book.ids), dtype=np.int64)
    first[used] = np.concatenate(([0], np.cumsum(units)[:-1]))
    owner = np.repeat(used, units)  # column -> ask index
    width = int(units.sum())
    if width == 0:
        return np.full(n, -1)
    top = int(book.price[used].max()) if len(used) else 0
    step = float(n * (top + 1) + 1)  # more than the prices of any assignment
    rows, cols, costs = [], [], []
    for i, offered in enumerate(options):
        count = np.minimum(book.spare[offered], n)
        rows.append(np.full(int(count.sum()) + 1, i))
        cols.append(np.concatenate((_columns(first[offered], count), [width + i])))
        # +1: a price of 0 would be no edge; unserved: dearer for an earlier bid
        costs.append(
            np.concatenate((np.repeat(book.price[offered] + 1.0, count), [(2 * n - i) * step]))
        )
    graph = csr_matrix(
        (np.concatenate(costs), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n, width + n),
    )
    _, assigned = min_weight_full_bipartite_matching(graph)
    served = assigned < width
    return np.where(served, owner[np.where(served, assigned, 0)], -1)


def _columns(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """start, start + 1, ..., start + count - 1 for each (start, count)."""
    if not len(counts):
        return np.array([], dtype=np.int64)
    offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(starts, counts) + offsets
