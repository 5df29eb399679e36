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

import copy
import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from computeswarm.jobs.money import money_text

DEFAULT_FEE_BPS = 1000  # 10 %
WINDOW = 256  # asks a bid checks at first: most bids find theirs among the first few


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

    The asks live in arrays, in rank order, once for every GPU model and once for all: a
    bid's price cut-off is a binary search, and its other checks run vectorised over a
    window of asks from the first with a free GPU, four times wider each time the window
    held too few. Most bids are decided in the first window (tens of microseconds); one
    that cannot be served checks every ask under its price in a handful of array passes.
    """

    def __init__(
        self,
        asks: Sequence[Ask],
        now: float,
        fee_bps: int = DEFAULT_FEE_BPS,
        *,
        window: int = WINDOW,
    ):
        if len({a.seller_id for a in asks}) != len(asks):
            raise ValueError("one ask per seller: an OrderBook keys capacity by seller id")
        self.now = now
        self.fee_bps = fee_bps
        self.window = window  # asks checked at first per bid (then 4x, 16x, ...)
        self._asks = sorted(asks, key=lambda a: _rank(a, fee_bps))
        self.ids = [a.seller_id for a in self._asks]
        self._position = {seller_id: i for i, seller_id in enumerate(self.ids)}
        models = np.array([a.gpu_model for a in self._asks], dtype=object)
        self._views = {None: _View(self._asks, np.arange(len(self._asks)), fee_bps)}
        for model in sorted({m for m in models.tolist() if m}):
            self._views[model] = _View(self._asks, np.flatnonzero(models == model), fee_bps)
        self.price = self._views[None].price  # per GPU-hour, fee included, in rank order
        self.spare = self._views[None].spare  # free GPUs now, in rank order

    def copy(self) -> OrderBook:
        """The same book with its own free GPUs, to try placements on."""
        twin = copy.copy(self)
        twin._views = {m: view.copy() for m, view in self._views.items()}
        twin.spare = twin._views[None].spare
        return twin

    def adopt(self, other: OrderBook) -> None:
        """Take the free GPUs of `other`, a `copy` of this book."""
        self._views = other._views
        self.spare = other.spare

    @property
    def free(self) -> dict[str, int]:
        """Free GPUs now, by seller id."""
        return dict(zip(self.ids, self.spare.tolist(), strict=True))

    def ranked(self) -> list[Ask]:
        """Every ask, best first, with its free GPUs as of now."""
        return [self.current(seller_id) for seller_id in self.ids]

    def current(self, seller_id: str) -> Ask:
        i = self._position[seller_id]
        return dataclasses.replace(self._asks[i], free_gpus=int(self.spare[i]))

    def place(self, bid: Bid) -> Match | NoMatch:
        chosen = self.candidates(bid, bid.nodes)
        if len(chosen) < bid.nodes:
            return NoMatch(bid.job_id, shortfall(bid, len(chosen)))
        return self.take(bid, chosen)

    def candidates(self, bid: Bid, limit: int) -> list[Ask]:
        """The `limit` best asks that can serve one node of `bid` now, best first (each
        with its free GPUs as of now)."""
        view = self._views.get(bid.gpu_model or None)
        if view is None or limit <= 0:
            return []
        found = view.fitting(bid, self.now, self.window, limit)
        return [self.current(self.ids[i]) for i in found]

    def fitting(self, bid: Bid) -> np.ndarray:
        """The positions (in rank order) of every ask that can serve one node of `bid`."""
        view = self._views.get(bid.gpu_model or None)
        return (
            np.array([], dtype=np.int64)
            if view is None
            else view.fitting(bid, self.now, self.window)
        )

    def take(self, bid: Bid, asks: Sequence[Ask]) -> Match:
        """Lease `bid` one node on each of `asks` (which `candidates` gave)."""
        for ask in asks:
            if self.spare[self._position[ask.seller_id]] < bid.gpus_per_node:
                raise ValueError(f"{ask.seller_id} has no {bid.gpus_per_node} free GPU(s)")
        for ask in asks:
            self.give(ask.seller_id, -bid.gpus_per_node)
        return Match(bid.job_id, tuple(_allocate(bid, a, self.fee_bps) for a in asks))

    def give(self, seller_id: str, gpus: int) -> None:
        """Return `gpus` GPUs to a seller's free ones (negative: take them)."""
        ask = self._asks[self._position[seller_id]]
        for model in {None, ask.gpu_model or None}:
            self._views[model].add(self._position[seller_id], gpus)


class _View:
    """The asks of one GPU model (or of all) as arrays in rank order: static columns,
    and the free GPUs, which placements change."""

    def __init__(self, asks: Sequence[Ask], rows: np.ndarray, fee_bps: int):
        chosen = [asks[i] for i in rows.tolist()]
        self.rows = rows  # positions in the whole book
        self.slot = {int(r): i for i, r in enumerate(rows.tolist())}
        self.price = np.array([buyer_price(a.ask_micros, fee_bps) for a in chosen], np.int64)
        self.vram = np.array([a.vram_gb for a in chosen], np.int64)
        self.reliability = np.array([a.reliability for a in chosen], np.float64)
        self.max_lease = np.array([a.max_lease_s for a in chosen], np.float64)
        until = [np.inf if a.available_until is None else a.available_until for a in chosen]
        self.until = np.array(until, np.float64)
        self.spare = np.array([a.free_gpus for a in chosen], np.int64)
        self.front = 0  # no free GPU before this slot

    def copy(self) -> _View:
        twin = copy.copy(self)
        twin.spare = self.spare.copy()
        return twin

    def add(self, row: int, gpus: int) -> None:
        slot = self.slot[row]
        self.spare[slot] += gpus
        if gpus > 0:
            self.front = min(self.front, slot)

    def fitting(
        self, bid: Bid, now: float, window: int, limit: int | None = None
    ) -> list[int] | np.ndarray:
        """Rows of the asks that can serve one node of `bid`, best first: the first
        `limit`, or (None) all."""
        cut = int(np.searchsorted(self.price, min(bid.max_price_micros, _INT_MAX), "right"))
        while self.front < len(self.spare) and self.spare[self.front] == 0:
            self.front += 1
        start = self.front if bid.gpus_per_node > 0 else 0
        width = cut if limit is None else window
        found, count = [], 0
        while start < cut and (limit is None or count < limit):
            stop = min(cut, start + width)
            part = slice(start, stop)
            # `explain`'s checks, vectorised (the property tests hold the two together).
            ok = (
                (self.spare[part] >= bid.gpus_per_node)
                & (self.vram[part] >= min(bid.min_vram_gb, _INT_MAX))
                & (self.reliability[part] >= bid.min_reliability)
                & (self.max_lease[part] >= bid.duration_s)
                & (self.until[part] >= now + bid.duration_s)
            )
            found.append(self.rows[start + np.flatnonzero(ok)])
            count += len(found[-1])
            start, width = stop, width * 4
        rows = np.concatenate(found) if found else np.array([], dtype=np.int64)
        return rows if limit is None else rows[:limit].tolist()


_INT_MAX = 2**62  # above any price or VRAM, within int64: a buyer's huge max stays a max


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
