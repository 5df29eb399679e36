"""The market: match a buyer's bid to sellers' asks, and decide the price. Pure.

Pricing rule: **pay-as-ask plus a platform fee.** Each leased seller is paid exactly its own
ask per GPU-hour; the buyer pays that ask plus the platform fee (`fee_bps` basis points of
the ask, rounded up to the micro-unit). An ask is eligible only if ask + fee is within the
buyer's max price, so buyers never pay above their max and sellers never get below their
ask. Why this rule: it is deterministic and explainable per seller (no auction state to
replay), and with many small sellers competing on one listing, asks converge on the going
rate without the strategic complexity of second-price schemes.

Choice: among eligible asks, the cheapest buyer price first; ties go to the more reliable
seller, then to the seller id (so the same book always gives the same answer). A bid for N
nodes takes the N cheapest eligible sellers, each giving `gpus_per_node` GPUs; every seller
that cannot serve the bid has a reason (`explain`).
"""

from __future__ import annotations

import bisect
import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from computeswarm.jobs.money import money_text

DEFAULT_FEE_BPS = 1000  # 10 %


@dataclass(frozen=True)
class Ask:
    """A seller's offer and how much of it is free now."""

    seller_id: str
    gpu_model: str
    vram_gb: int
    free_gpus: int
    ask_micros: int  # per GPU-hour, what the seller receives
    reliability: float = 1.0
    max_lease_s: float = 24 * 3600
    available_until: float | None = None


@dataclass(frozen=True)
class Bid:
    """What a job needs, in the market's terms."""

    job_id: str
    gpu_model: str | None
    min_vram_gb: int
    nodes: int
    gpus_per_node: int
    max_price_micros: int  # per GPU-hour, fee included
    min_reliability: float = 0.0
    duration_s: float = 3600.0


@dataclass(frozen=True)
class Allocation:
    seller_id: str
    gpus: int
    ask_micros: int  # the seller gets this per GPU-hour
    price_micros: int  # the buyer pays this per GPU-hour (ask + fee)


@dataclass(frozen=True)
class Match:
    job_id: str
    allocations: tuple[Allocation, ...]

    @property
    def price_per_hour_micros(self) -> int:
        """What the whole lease costs the buyer per hour."""
        return sum(a.price_micros * a.gpus for a in self.allocations)


@dataclass(frozen=True)
class NoMatch:
    job_id: str
    reason: str
    rejected: dict[str, str] = field(default_factory=dict)  # seller id -> why not


def buyer_price(ask_micros: int, fee_bps: int = DEFAULT_FEE_BPS) -> int:
    return ask_micros + -(-ask_micros * fee_bps // 10_000)


def explain(bid: Bid, ask: Ask, now: float, fee_bps: int = DEFAULT_FEE_BPS) -> str | None:
    """Why `ask` cannot serve `bid`, or None if it can."""
    if bid.gpu_model and ask.gpu_model != bid.gpu_model:
        return f"GPU model {ask.gpu_model}, not {bid.gpu_model}"
    if ask.vram_gb < bid.min_vram_gb:
        return f"{ask.vram_gb} GB VRAM < {bid.min_vram_gb} GB"
    if ask.free_gpus < bid.gpus_per_node:
        return f"{ask.free_gpus} free GPU(s) < {bid.gpus_per_node} per node"
    price = buyer_price(ask.ask_micros, fee_bps)
    if price > bid.max_price_micros:
        return (
            f"price {_money(price)}/GPU-h (ask {_money(ask.ask_micros)} + fee) > max "
            f"{_money(bid.max_price_micros)}"
        )
    if ask.reliability < bid.min_reliability:
        return f"reliability {ask.reliability:.2f} < {bid.min_reliability:.2f}"
    if ask.max_lease_s < bid.duration_s:
        return f"max lease {ask.max_lease_s / 3600:g} h < job's {bid.duration_s / 3600:g} h"
    if ask.available_until is not None and ask.available_until < now + bid.duration_s:
        return "not available for the job's whole duration"
    return None


def match(
    bid: Bid,
    asks: Iterable[Ask],
    now: float,
    fee_bps: int = DEFAULT_FEE_BPS,
    *,
    explain_all: bool = False,
) -> Match | NoMatch:
    """The cheapest sellers for one bid, or why there are not enough."""
    eligible, rejected = [], {}
    for ask in asks:
        reason = explain(bid, ask, now, fee_bps)
        if reason is None:
            eligible.append(ask)
        elif explain_all:
            rejected[ask.seller_id] = reason
    eligible.sort(key=lambda a: _rank(a, fee_bps))
    if len(eligible) < bid.nodes:
        return NoMatch(bid.job_id, shortfall(bid, len(eligible)), rejected)
    return Match(bid.job_id, tuple(_allocate(bid, a, fee_bps) for a in eligible[: bid.nodes]))


class OrderBook:
    """Many bids against one book of asks, in order, each consuming the GPUs it gets.

    Asks are kept sorted by rank per GPU model, so a bid scans from the cheapest ask and
    usually stops after a few: fast enough for tens of thousands of offers.
    """

    def __init__(self, asks: Sequence[Ask], now: float, fee_bps: int = DEFAULT_FEE_BPS):
        if len({a.seller_id for a in asks}) != len(asks):
            raise ValueError("one ask per seller: an OrderBook keys capacity by seller id")
        self.now = now
        self.fee_bps = fee_bps
        self.free = {a.seller_id: a.free_gpus for a in asks}
        self._asks = {a.seller_id: a for a in asks}
        self._by_model: dict[str | None, list[tuple]] = {None: []}
        for ask in asks:
            entry = (*_rank(ask, fee_bps), ask.seller_id)
            bisect.insort(self._by_model.setdefault(ask.gpu_model, []), entry)
            self._by_model[None].append(entry)
        self._by_model[None].sort()

    def copy(self) -> OrderBook:
        """The same book with its own free GPUs, to try placements on."""
        twin = copy.copy(self)
        twin.free = dict(self.free)
        return twin

    def ranked(self) -> list[Ask]:
        """Every ask, best first, with its free GPUs as of now."""
        return [self.current(entry[-1]) for entry in self._by_model[None]]

    def current(self, seller_id: str) -> Ask:
        return Ask(**{**self._asks[seller_id].__dict__, "free_gpus": self.free[seller_id]})

    def place(self, bid: Bid) -> Match | NoMatch:
        chosen = self.candidates(bid, bid.nodes)
        if len(chosen) < bid.nodes:
            return NoMatch(bid.job_id, shortfall(bid, len(chosen)))
        return self.take(bid, chosen)

    def candidates(self, bid: Bid, limit: int) -> list[Ask]:
        """The `limit` best asks that can serve one node of `bid` now, best first (each
        with its free GPUs as of now)."""
        chosen: list[Ask] = []
        if limit <= 0:
            return chosen
        for *_, seller_id in self._by_model.get(bid.gpu_model, []):
            ask = self._asks[seller_id]
            if buyer_price(ask.ask_micros, self.fee_bps) > bid.max_price_micros:
                break  # sorted by price: nothing further is cheap enough
            free = self.free[seller_id]
            if (
                free < bid.gpus_per_node
                or ask.vram_gb < bid.min_vram_gb
                or ask.reliability < bid.min_reliability
            ):
                continue  # cheap checks first: most asks fail here without a copy
            current = self.current(seller_id)
            if explain(bid, current, self.now, self.fee_bps) is None:
                chosen.append(current)
                if len(chosen) == limit:
                    break
        return chosen

    def take(self, bid: Bid, asks: Sequence[Ask]) -> Match:
        """Lease `bid` one node on each of `asks` (which `candidates` gave)."""
        for ask in asks:
            if self.free[ask.seller_id] < bid.gpus_per_node:
                raise ValueError(f"{ask.seller_id} has no {bid.gpus_per_node} free GPU(s)")
        for ask in asks:
            self.free[ask.seller_id] -= bid.gpus_per_node
        return Match(bid.job_id, tuple(_allocate(bid, a, self.fee_bps) for a in asks))


def _rank(ask: Ask, fee_bps: int) -> tuple:
    return (buyer_price(ask.ask_micros, fee_bps), -ask.reliability, ask.seller_id)


def _allocate(bid: Bid, ask: Ask, fee_bps: int) -> Allocation:
    return Allocation(
        ask.seller_id, bid.gpus_per_node, ask.ask_micros, buyer_price(ask.ask_micros, fee_bps)
    )


def shortfall(bid: Bid, found: int) -> str:
    what = f"{bid.gpus_per_node}x {bid.gpu_model or 'any GPU'}"
    if bid.min_vram_gb:
        what += f" with >= {bid.min_vram_gb} GB"
    return (
        f"needs {bid.nodes} seller(s) offering {what} at <= "
        f"{_money(bid.max_price_micros)}/GPU-h; {found} available now"
    )


def _money(micros: int) -> str:
    return money_text(micros)
