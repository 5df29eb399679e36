"""The round matcher: the invariants of the book, and what the optimum places."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from computeswarm.cluster.market.batch import place_round
from computeswarm.cluster.market.book import (
    Ask,
    Bid,
    Match,
    NoMatch,
    OrderBook,
    buyer_price,
    explain,
)

NOW = 1_700_000_000.0
MODELS = ("RTX3090", "RTX4090", "A100")


def ask(seller: str, model: str, price: float, free: int = 1, **kw) -> Ask:
    return Ask(seller, model, kw.pop("vram_gb", 24), free, int(price * 1e6), **kw)


def bid(job: str, model: str | None, max_price: float, nodes: int = 1, gpus: int = 1, **kw):
    return Bid(job, model, kw.pop("min_vram_gb", 0), nodes, gpus, int(max_price * 1e6), **kw)


def test_a_round_serves_the_bid_that_arrival_order_strands():
    """Any-GPU bid first takes the cheapest seller, the only one the A100 bid could use."""
    asks = [ask("a100", "A100", 0.50), ask("rtx", "RTX4090", 0.60)]
    bids = [bid("any", None, 1.0), bid("needs-a100", "A100", 1.0)]
    greedy = OrderBook(asks, NOW)
    assert [isinstance(greedy.place(b), Match) for b in bids] == [True, False]
    decisions = place_round(OrderBook(asks, NOW), bids)
    assert [d.allocations[0].seller_id for d in decisions] == ["rtx", "a100"]


def test_when_not_all_can_be_served_the_earlier_bid_is():
    asks = [ask("only", "A100", 0.50)]
    decisions = place_round(
        OrderBook(asks, NOW), [bid("first", None, 1.0), bid("second", None, 2.0)]
    )
    assert isinstance(decisions[0], Match) and isinstance(decisions[1], NoMatch)
    assert "needs 1 seller(s)" in decisions[1].reason and "0 available now" in decisions[1].reason


def test_one_gpu_bids_make_room_for_a_bid_that_needs_two_gpus_on_one_seller():
    """The cheapest seller is the only one with two free GPUs: the one-GPU bid, matched
    first, took it, and moves to the other seller so the two-GPU bid is served too."""
    asks = [ask("big", "A100", 0.40, free=2), ask("small", "A100", 0.50)]
    bids = [bid("one", "A100", 1.0), bid("two-gpus", "A100", 1.0, gpus=2)]
    one, two = place_round(OrderBook(asks, NOW), bids)
    assert two.allocations[0].seller_id == "big" and two.allocations[0].gpus == 2
    assert one.allocations[0].seller_id == "small"


def test_room_is_not_made_at_the_cost_of_a_one_gpu_bid():
    asks = [ask("big", "A100", 0.40, free=2)]
    one, two = place_round(
        OrderBook(asks, NOW), [bid("one", "A100", 1.0), bid("two", "A100", 1.0, gpus=2)]
    )
    assert isinstance(one, Match) and isinstance(two, NoMatch)


asks_st = st.lists(
    st.builds(
        lambda model, price, free, vram, rel: (model, price, free, vram, rel),
        st.sampled_from(MODELS),
        st.integers(1, 40),
        st.integers(1, 4),
        st.sampled_from((8, 24, 48)),
        st.sampled_from((0.5, 0.9, 1.0)),
    ),
    min_size=1,
    max_size=12,
)
bids_st = st.lists(
    st.builds(
        lambda model, price, nodes, gpus, vram, rel: (model, price, nodes, gpus, vram, rel),
        st.sampled_from((None, *MODELS)),
        st.integers(1, 50),
        st.integers(1, 3),
        st.integers(1, 2),
        st.sampled_from((0, 16, 48)),
        st.sampled_from((0.0, 0.8, 1.0)),
    ),
    min_size=1,
    max_size=12,
)


def _market(raw_asks, raw_bids, singles_only=False):
    asks = [
        Ask(f"s{i}", m, vram, free, price * 50_000, reliability=rel)
        for i, (m, price, free, vram, rel) in enumerate(raw_asks)
    ]
    bids = [
        Bid(
            f"j{i}",
            m,
            vram,
            1 if singles_only else nodes,
            1 if singles_only else gpus,
            price * 50_000,
            min_reliability=rel,
        )
        for i, (m, price, nodes, gpus, vram, rel) in enumerate(raw_bids)
    ]
    return asks, bids


@settings(max_examples=300, deadline=None)
@given(asks_st, bids_st)
def test_every_invariant_of_the_book_holds(raw_asks, raw_bids):
    asks, bids = _market(raw_asks, raw_bids)
    by_id = {a.seller_id: a for a in asks}
    decisions = place_round(OrderBook(asks, NOW), bids)
    assert [d.job_id for d in decisions] == [b.job_id for b in bids]
    taken = dict.fromkeys(by_id, 0)
    for b, d in zip(bids, decisions, strict=True):
        if isinstance(d, NoMatch):
            assert d.reason
            continue
        assert len(d.allocations) == b.nodes
        assert len({a.seller_id for a in d.allocations}) == b.nodes  # one node per seller
        for alloc in d.allocations:
            seller = by_id[alloc.seller_id]
            assert explain(b, seller, NOW) is None  # fits the bid, price within its max
            assert alloc.gpus == b.gpus_per_node
            assert alloc.ask_micros == seller.ask_micros  # never below the ask
            assert alloc.price_micros == buyer_price(seller.ask_micros) <= b.max_price_micros
            taken[alloc.seller_id] += alloc.gpus
    assert all(taken[s] <= by_id[s].free_gpus for s in by_id)  # no GPU in two leases


@settings(max_examples=300, deadline=None)
@given(asks_st, bids_st)
def test_one_gpu_bids_are_placed_as_the_optimum_places_them(raw_asks, raw_bids):
    asks, bids = _market(raw_asks, raw_bids, singles_only=True)
    decisions = place_round(OrderBook(asks, NOW), bids)
    served = [i for i, d in enumerate(decisions) if isinstance(d, Match)]
    # The optimum over every GPU: a column per free GPU, a huge cost where a pair does not fit.
    gpus = [a for a in asks for _ in range(a.free_gpus)]
    big = 10**12
    cost = np.array(
        [
            [buyer_price(a.ask_micros) if explain(b, a, NOW) is None else big for a in gpus]
            for b in bids
        ]
    )
    rows, cols = linear_sum_assignment(cost)
    assert len(served) == int((cost[rows, cols] < big).sum())  # as many as the optimum
    if served:  # and, for the bids it served, what the optimum would charge them
        rows, cols = linear_sum_assignment(cost[served])
        paid = sum(decisions[i].allocations[0].price_micros for i in served)
        assert paid == int(cost[served][rows, cols].sum())
