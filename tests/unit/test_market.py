"""The market: every rejection reason, the choice among sellers, the order book's capacity,
and the pricing invariants as properties (buyers never above max, sellers never below ask,
no GPU leased twice, hard constraints always met, the same book always gives the same answer).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from computeswarm.cluster.market.book import (
    DEFAULT_FEE_BPS,
    Allocation,
    Ask,
    Bid,
    Match,
    NoMatch,
    OrderBook,
    buyer_price,
    explain,
    match,
)

NOW = 1_000_000.0
HOUR = 3600.0


def ask(seller_id: str = "s1", **kw) -> Ask:
    fields = dict(gpu_model="RTX4090", vram_gb=24, free_gpus=2, ask_micros=500_000)
    return Ask(seller_id, **{**fields, **kw})


def bid(job_id: str = "j1", **kw) -> Bid:
    fields = dict(
        gpu_model="RTX4090", min_vram_gb=24, nodes=1, gpus_per_node=1, max_price_micros=1_000_000
    )
    return Bid(job_id, **{**fields, **kw})


def sellers(result: Match | NoMatch) -> list[str]:
    assert isinstance(result, Match), result
    return [a.seller_id for a in result.allocations]


# --- pricing -------------------------------------------------------------------------------


def test_buyer_price_adds_the_fee_rounded_up_to_the_micro():
    assert buyer_price(1_000_000) == 1_100_000  # 10 % by default
    assert buyer_price(1_000_000, fee_bps=250) == 1_025_000
    assert buyer_price(1, fee_bps=DEFAULT_FEE_BPS) == 2  # 0.1 micro of fee rounds up to 1
    assert buyer_price(10, fee_bps=1) == 11
    assert buyer_price(0) == 0
    assert buyer_price(123_456, fee_bps=0) == 123_456


# --- explain: one reason per hard constraint ---------------------------------------------------


def test_a_fitting_ask_has_no_reason():
    assert explain(bid(), ask(), NOW) is None


def test_explain_rejects_another_gpu_model():
    assert explain(bid(gpu_model="A100"), ask(), NOW) == "GPU model RTX4090, not A100"


def test_explain_accepts_any_model_when_the_bid_names_none():
    assert explain(bid(gpu_model=None), ask(gpu_model="A100"), NOW) is None


def test_explain_rejects_too_little_vram():
    assert explain(bid(min_vram_gb=48), ask(vram_gb=24), NOW) == "24 GB VRAM < 48 GB"
    assert explain(bid(min_vram_gb=24), ask(vram_gb=24), NOW) is None


def test_explain_rejects_too_few_free_gpus_per_node():
    reason = explain(bid(gpus_per_node=4), ask(free_gpus=3), NOW)
    assert reason == "3 free GPU(s) < 4 per node"
    assert explain(bid(gpus_per_node=3), ask(free_gpus=3), NOW) is None


def test_explain_compares_the_max_price_with_the_ask_plus_fee():
    # The ask alone (1.00) is under the max (1.05), but with the 10 % fee (1.10) it is not.
    reason = explain(bid(max_price_micros=1_050_000), ask(ask_micros=1_000_000), NOW)
    assert reason == "price 1.100000/GPU-h (ask 1.000000 + fee) > max 1.050000"
    assert explain(bid(max_price_micros=1_100_000), ask(ask_micros=1_000_000), NOW) is None
    assert explain(bid(max_price_micros=1_099_999), ask(ask_micros=1_000_000), NOW) is not None


def test_explain_uses_the_fee_it_is_given():
    b, a = bid(max_price_micros=1_050_000), ask(ask_micros=1_000_000)
    assert explain(b, a, NOW, fee_bps=500) is None
    assert explain(b, a, NOW, fee_bps=501) is not None


def test_explain_rejects_a_less_reliable_seller():
    reason = explain(bid(min_reliability=0.95), ask(reliability=0.9), NOW)
    assert reason == "reliability 0.90 < 0.95"
    assert explain(bid(min_reliability=0.9), ask(reliability=0.9), NOW) is None


def test_explain_rejects_a_max_lease_shorter_than_the_job():
    reason = explain(bid(duration_s=2 * HOUR), ask(max_lease_s=HOUR), NOW)
    assert reason == "max lease 1 h < job's 2 h"
    assert explain(bid(duration_s=HOUR), ask(max_lease_s=HOUR), NOW) is None


def test_explain_rejects_a_seller_leaving_before_the_job_ends():
    b = bid(duration_s=HOUR)
    reason = explain(b, ask(available_until=NOW + HOUR - 1), NOW)
    assert reason == "not available for the job's whole duration"
    assert explain(b, ask(available_until=NOW + HOUR), NOW) is None
    assert explain(b, ask(available_until=None), NOW) is None
    # The window is relative to `now`: the same ask fits an hour earlier.
    assert explain(b, ask(available_until=NOW + HOUR - 1), NOW - 1) is None


# --- match: the cheapest sellers, ties, determinism ----------------------------------------


def test_match_takes_the_cheapest_buyer_price():
    asks = [ask("mid", ask_micros=500_000), ask("low", ask_micros=300_000), ask("high")]
    result = match(bid(), asks, NOW)
    assert result == Match("j1", (Allocation("low", 1, ask_micros=300_000, price_micros=330_000),))
    assert result.price_per_hour_micros == 330_000


def test_match_skips_cheaper_sellers_that_cannot_serve():
    asks = [ask("cheap-but-small", vram_gb=8, ask_micros=1), ask("ok", ask_micros=400_000)]
    assert sellers(match(bid(), asks, NOW)) == ["ok"]


def test_a_multi_node_bid_takes_the_n_cheapest_distinct_sellers():
    asks = [ask(f"s{p}", ask_micros=p * 100_000, free_gpus=4) for p in (5, 1, 4, 2, 3)]
    result = match(bid(nodes=3, gpus_per_node=2), asks, NOW)
    assert sellers(result) == ["s1", "s2", "s3"]
    assert all(a.gpus == 2 for a in result.allocations)
    assert result.price_per_hour_micros == 2 * (110_000 + 220_000 + 330_000)


def test_price_ties_go_to_the_more_reliable_seller():
    asks = [ask("a", reliability=0.9), ask("b", reliability=0.99), ask("c", reliability=0.95)]
    assert sellers(match(bid(nodes=3), asks, NOW)) == ["b", "c", "a"]


def test_price_and_reliability_ties_go_to_the_seller_id():
    asks = [ask("s3"), ask("s1"), ask("s2")]
    assert sellers(match(bid(nodes=2), asks, NOW)) == ["s1", "s2"]


def test_match_is_the_same_whatever_the_order_of_the_asks():
    asks = [
        ask("a", ask_micros=200_000, reliability=0.9),
        ask("b", ask_micros=200_000, reliability=0.9),
        ask("c", ask_micros=200_000, reliability=0.95),
        ask("d", ask_micros=100_000, reliability=0.5),
        ask("e", ask_micros=300_000),
    ]
    expected = match(bid(nodes=3), asks, NOW)
    assert sellers(expected) == ["d", "c", "a"]
    for shift in range(len(asks)):
        rotated = asks[shift:] + asks[:shift]
        assert match(bid(nodes=3), rotated, NOW) == expected
        assert match(bid(nodes=3), list(reversed(rotated)), NOW) == expected


def test_no_match_says_how_many_sellers_were_needed_and_found():
    asks = [ask("a"), ask("b"), ask("c", vram_gb=8)]
    result = match(bid(nodes=3, gpus_per_node=2, max_price_micros=600_000), asks, NOW)
    assert isinstance(result, NoMatch)
    assert result.job_id == "j1"
    assert result.reason == (
        "needs 3 seller(s) offering 2x RTX4090 with >= 24 GB at <= 0.600000/GPU-h; 2 available now"
    )
    assert result.rejected == {}  # only on request


def test_no_match_for_any_model_without_a_vram_floor():
    result = match(bid(gpu_model=None, min_vram_gb=0), [], NOW)
    assert isinstance(result, NoMatch)
    assert result.reason == (
        "needs 1 seller(s) offering 1x any GPU at <= 1.000000/GPU-h; 0 available now"
    )


def test_explain_all_gives_each_rejected_sellers_reason():
    b = bid(nodes=2, min_reliability=0.9, duration_s=2 * HOUR, max_price_micros=1_100_000)
    asks = [
        ask("ok"),
        ask("model", gpu_model="RTX3090"),
        ask("vram", vram_gb=16),
        ask("busy", free_gpus=0),
        ask("pricey", ask_micros=1_000_001),
        ask("flaky", reliability=0.5),
        ask("short", max_lease_s=HOUR),
        ask("leaving", available_until=NOW + HOUR),
    ]
    result = match(b, asks, NOW, explain_all=True)
    assert isinstance(result, NoMatch)
    assert result.reason.endswith("1 available now")
    assert result.rejected == {
        "model": "GPU model RTX3090, not RTX4090",
        "vram": "16 GB VRAM < 24 GB",
        "busy": "0 free GPU(s) < 1 per node",
        "pricey": "price 1.100002/GPU-h (ask 1.000001 + fee) > max 1.100000",
        "flaky": "reliability 0.50 < 0.90",
        "short": "max lease 1 h < job's 2 h",
        "leaving": "not available for the job's whole duration",
    }
    # Each reason is what explain() says for that seller on its own.
    for a in asks:
        assert result.rejected.get(a.seller_id) == explain(b, a, NOW)


def test_a_match_ignores_explain_all():
    result = match(bid(), [ask("ok"), ask("vram", vram_gb=8)], NOW, explain_all=True)
    assert sellers(result) == ["ok"]


# --- OrderBook: bids in order, each consuming what it gets ----------------------------------


def test_order_book_consumes_gpus_across_bids():
    book = OrderBook([ask("cheap", free_gpus=4, ask_micros=100_000), ask("dear", free_gpus=4)], NOW)
    assert sellers(book.place(bid("j1", gpus_per_node=2))) == ["cheap"]
    assert sellers(book.place(bid("j2", gpus_per_node=2))) == ["cheap"]
    assert book.free == {"cheap": 0, "dear": 4}
    # The cheap seller is full: the next bid goes to the dearer one.
    assert sellers(book.place(bid("j3", gpus_per_node=3))) == ["dear"]
    assert book.free == {"cheap": 0, "dear": 1}
    result = book.place(bid("j4", gpus_per_node=2))
    assert isinstance(result, NoMatch)
    assert result.reason.endswith("0 available now")


def test_order_book_partial_capacity_goes_to_a_smaller_bid():
    book = OrderBook([ask("a", free_gpus=3, ask_micros=100_000), ask("b", free_gpus=8)], NOW)
    assert sellers(book.place(bid("j1", gpus_per_node=2))) == ["a"]
    assert sellers(book.place(bid("j2", gpus_per_node=2))) == ["b"]  # a has 1 left
    assert sellers(book.place(bid("j3", gpus_per_node=1))) == ["a"]
    assert book.free == {"a": 0, "b": 6}


def test_order_book_takes_nothing_when_a_bid_cannot_be_served_whole():
    book = OrderBook([ask("a"), ask("b")], NOW)
    result = book.place(bid(nodes=3))
    assert isinstance(result, NoMatch)
    assert result.reason.endswith("2 available now")
    assert book.free == {"a": 2, "b": 2}


def test_order_book_multi_node_bids_use_distinct_sellers():
    book = OrderBook([ask("a", free_gpus=8, ask_micros=1), ask("b"), ask("c")], NOW)
    assert sellers(book.place(bid(nodes=3, gpus_per_node=2))) == ["a", "b", "c"]
    assert book.free == {"a": 6, "b": 0, "c": 0}


def test_gpus_given_back_to_a_seller_are_offered_again_before_dearer_ones():
    book = OrderBook([ask("cheap", free_gpus=1, ask_micros=100_000), ask("dear", free_gpus=4)], NOW)
    assert sellers(book.place(bid("j1"))) == ["cheap"]
    assert sellers(book.place(bid("j2"))) == ["dear"]  # the book now skips the taken seller
    twin = book.copy()
    twin.give("cheap", 1)  # e.g. a round's trial moving a one-GPU bid off it
    assert book.free == {"cheap": 0, "dear": 3}, "a copy gives back its own GPUs only"
    assert sellers(twin.place(bid("j3"))) == ["cheap"]
    book.adopt(twin)
    assert book.free == {"cheap": 0, "dear": 3}


def test_order_book_filters_by_model_and_serves_any_model():
    asks = [
        ask("h100", gpu_model="H100", vram_gb=80, ask_micros=2_000_000),
        ask("4090", ask_micros=400_000),
        ask("3090", gpu_model="RTX3090", ask_micros=200_000),
    ]
    book = OrderBook(asks, NOW)
    assert isinstance(book.place(bid("none", gpu_model="A100")), NoMatch)
    assert sellers(
        book.place(bid("big", gpu_model=None, min_vram_gb=48, max_price_micros=3_000_000))
    ) == ["h100"]
    assert sellers(book.place(bid("any", gpu_model=None, nodes=2))) == ["3090", "4090"]


def test_order_book_checks_every_constraint_like_explain():
    asks = [
        ask("flaky", ask_micros=1, reliability=0.5),
        ask("short", ask_micros=2, max_lease_s=HOUR),
        ask("leaving", ask_micros=3, available_until=NOW + 1),
        ask("ok", ask_micros=4),
    ]
    book = OrderBook(asks, NOW)
    assert sellers(book.place(bid(min_reliability=0.9, duration_s=2 * HOUR))) == ["ok"]


def test_order_book_stops_at_the_max_price():
    book = OrderBook([ask("a", ask_micros=1_000_000), ask("b", ask_micros=2_000_000)], NOW)
    result = book.place(bid(max_price_micros=1_099_999))
    assert isinstance(result, NoMatch)
    assert sellers(book.place(bid(max_price_micros=1_100_000))) == ["a"]


# --- properties ------------------------------------------------------------------------------

MODELS = ["RTX4090", "A100"]


@st.composite
def asks_st(draw, max_size: int = 16) -> list[Ask]:
    size = draw(st.integers(0, max_size))
    ids = draw(st.lists(st.integers(0, 99), unique=True, min_size=size, max_size=size))
    return [
        Ask(
            seller_id=f"s{i:02d}",
            gpu_model=draw(st.sampled_from(MODELS)),
            vram_gb=draw(st.sampled_from([8, 16, 24, 24, 48])),
            free_gpus=draw(st.integers(0, 8)),
            # Few distinct values, so that price and reliability ties are common.
            ask_micros=draw(st.integers(0, 10)) * 200_000 + draw(st.sampled_from([0, 0, 0, 7])),
            reliability=draw(st.sampled_from([0.5, 0.9, 0.95, 1.0, 1.0])),
            max_lease_s=draw(st.sampled_from([HOUR, 24 * HOUR, 24 * HOUR])),
            available_until=draw(st.none() | st.none() | st.floats(NOW, NOW + 8 * HOUR)),
        )
        for i in ids
    ]


@st.composite
def bid_st(draw, job_id: str = "j") -> Bid:
    return Bid(
        job_id=job_id,
        gpu_model=draw(st.none() | st.sampled_from(MODELS)),
        min_vram_gb=draw(st.sampled_from([0, 0, 8, 16, 24, 48])),
        nodes=draw(st.integers(1, 3)),
        gpus_per_node=draw(st.sampled_from([1, 1, 2, 4])),
        # Near the asks' buyer prices (whole multiples of 0.10 plus the fee), edges included.
        max_price_micros=draw(st.integers(0, 25)) * 110_000 + draw(st.sampled_from([0, 1, 8, 770])),
        min_reliability=draw(st.sampled_from([0.0, 0.0, 0.9, 0.95])),
        duration_s=draw(st.sampled_from([60.0, HOUR, HOUR, 4 * HOUR])),
    )


fees = st.sampled_from([0, 1, 250, DEFAULT_FEE_BPS, 2000])
bids_st = st.lists(bid_st(), max_size=15).map(
    lambda bids: [Bid(**{**b.__dict__, "job_id": f"j{n}"}) for n, b in enumerate(bids)]
)


def check_allocations(result: Match, b: Bid, asks: list[Ask], fee_bps: int) -> None:
    """What every match must satisfy, whoever made it."""
    by_id = {a.seller_id: a for a in asks}
    assert result.job_id == b.job_id
    assert len(result.allocations) == b.nodes
    assert len({a.seller_id for a in result.allocations}) == b.nodes  # distinct sellers
    for alloc in result.allocations:
        seller = by_id[alloc.seller_id]
        assert alloc.gpus == b.gpus_per_node
        # Buyers never pay above their max; sellers never get below their ask.
        assert alloc.price_micros <= b.max_price_micros
        assert alloc.ask_micros == seller.ask_micros
        assert alloc.price_micros == buyer_price(seller.ask_micros, fee_bps) >= seller.ask_micros
        # The hard constraints.
        assert b.gpu_model is None or seller.gpu_model == b.gpu_model
        assert seller.vram_gb >= b.min_vram_gb
        assert seller.reliability >= b.min_reliability
        assert seller.max_lease_s >= b.duration_s
        assert seller.available_until is None or seller.available_until >= NOW + b.duration_s


@settings(max_examples=200, deadline=None)
@given(bid_st(), asks_st(), fees)
def test_match_meets_every_constraint_and_picks_the_cheapest(b, asks, fee_bps):
    result = match(b, asks, NOW, fee_bps, explain_all=True)
    eligible = [a for a in asks if explain(b, a, NOW, fee_bps) is None]
    if isinstance(result, NoMatch):
        assert len(eligible) < b.nodes
        assert result.reason.endswith(f"; {len(eligible)} available now")
        assert result.rejected == {
            a.seller_id: explain(b, a, NOW, fee_bps) for a in asks if a not in eligible
        }
        return
    check_allocations(result, b, asks, fee_bps)
    assert all(a.free_gpus >= b.gpus_per_node for a in eligible)

    # No eligible seller left out ranks before one chosen.
    def rank(a: Ask) -> tuple:
        return (buyer_price(a.ask_micros, fee_bps), -a.reliability, a.seller_id)

    chosen = {a.seller_id for a in result.allocations}
    worst_chosen = max(rank(a) for a in eligible if a.seller_id in chosen)
    assert all(rank(a) > worst_chosen for a in eligible if a.seller_id not in chosen)


@settings(max_examples=200, deadline=None)
@given(bid_st(), asks_st(), fees, st.randoms(use_true_random=False))
def test_match_does_not_depend_on_the_order_of_the_asks(b, asks, fee_bps, rnd):
    shuffled = list(asks)
    rnd.shuffle(shuffled)
    assert match(b, shuffled, NOW, fee_bps, explain_all=True) == match(
        b, asks, NOW, fee_bps, explain_all=True
    )


@settings(max_examples=200, deadline=None)
@given(bids_st, asks_st(), fees)
def test_order_book_never_leases_a_gpu_twice_and_meets_every_constraint(bids, asks, fee_bps):
    book = OrderBook(asks, NOW, fee_bps)
    leased = {a.seller_id: 0 for a in asks}
    for b in bids:
        before = dict(book.free)
        result = book.place(b)
        if isinstance(result, NoMatch):
            assert book.free == before  # all or nothing
            continue
        check_allocations(result, b, asks, fee_bps)
        for alloc in result.allocations:
            assert before[alloc.seller_id] >= alloc.gpus  # it had them free
            leased[alloc.seller_id] += alloc.gpus
    for a in asks:
        assert leased[a.seller_id] <= a.free_gpus
        assert book.free[a.seller_id] == a.free_gpus - leased[a.seller_id] >= 0


@settings(max_examples=200, deadline=None)
@given(bids_st, asks_st(), fees, st.randoms(use_true_random=False))
def test_order_book_does_not_depend_on_the_order_of_the_asks(bids, asks, fee_bps, rnd):
    shuffled = list(asks)
    rnd.shuffle(shuffled)
    book, other = OrderBook(asks, NOW, fee_bps), OrderBook(shuffled, NOW, fee_bps)
    assert [book.place(b) for b in bids] == [other.place(b) for b in bids]
    assert book.free == other.free


@settings(max_examples=200, deadline=None)
@given(bid_st(), asks_st(), fees)
def test_order_book_agrees_with_match_on_a_fresh_book(b, asks, fee_bps):
    # Same sellers in the same order, or the same shortfall.
    assert OrderBook(asks, NOW, fee_bps).place(b) == match(b, asks, NOW, fee_bps)


@settings(max_examples=300, deadline=None)
@given(bids_st, asks_st(), fees, st.sampled_from([1, 2, 5, 256]))
def test_order_book_agrees_with_match_on_what_is_left(bids, asks, fee_bps, window):
    # Each placement is what `match` would choose among the GPUs still free, also when
    # the book's first window of asks is tiny (its widening is what big books rely on).
    book = OrderBook(asks, NOW, fee_bps, window=window)
    for b in bids:
        left = [Ask(**{**a.__dict__, "free_gpus": book.free[a.seller_id]}) for a in asks]
        assert book.place(b) == match(b, left, NOW, fee_bps)


@pytest.mark.parametrize("fee_bps", [0, DEFAULT_FEE_BPS, 10_000])
@given(st.integers(0, 10**9))
def test_buyer_price_is_never_below_the_ask_and_grows_with_it(fee_bps, ask_micros):
    fee = buyer_price(ask_micros, fee_bps) - ask_micros
    # The whole fee, rounded up to the micro and no further.
    assert fee * 10_000 >= ask_micros * fee_bps > (fee - 1) * 10_000
    assert buyer_price(ask_micros + 1, fee_bps) > ask_micros + fee
