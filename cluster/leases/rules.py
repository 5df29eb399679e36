"""The pure decisions the lease scheduler acts on: port blocks and when a budget runs out."""

from __future__ import annotations

from collections.abc import Callable, Iterable


def free_port_base(
    used: Iterable[int],
    start: int,
    block: int,
    count: int,
    is_free: Callable[[int], bool] = lambda base: True,
) -> int | None:
    """The first port block from `start` that no active lease uses (and that `is_free`
    confirms: another program on the host may hold it); None when every one is taken."""
    taken = set(used)
    for slot in range(count):
        base = start + slot * block
        if base not in taken and is_free(base):
            return base
    return None


def budget_end(
    members: Iterable[tuple[float | None, float | None, int, int]], escrow_micros: int
) -> float:
    """When the buyer's metered use reaches the escrow held for the lease.

    `members` are (attached_at, detached_at, gpus, price per GPU-hour) of everyone who was
    in the lease, each at its own price (a repair may cost more): metering runs from each
    member's attach, so the budget does too. Detached members' use is fixed; the rest
    grows with time."""
    spent, rate, offset = 0.0, 0.0, 0.0
    for attached_at, detached_at, gpus, price in members:
        if attached_at is None:
            continue
        if detached_at is not None:
            spent += price * gpus * max(0.0, detached_at - attached_at) / 3600
        else:
            rate += price * gpus / 3600
            offset += price * gpus * attached_at / 3600
    if rate <= 0:
        return float("inf")
    return (escrow_micros - spent + offset) / rate
