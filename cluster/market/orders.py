"""Bids and asks as the market sees them, made from a job's spec and a seller's offer."""

from __future__ import annotations

from computeswarm.cluster.market.book import Ask, Bid
from computeswarm.jobs.spec import AnyJob


def bid_for(job_id: str, spec: AnyJob) -> Bid:
    gpus = spec.resources.gpus
    return Bid(
        job_id=job_id,
        gpu_model=gpus.model,
        min_vram_gb=gpus.min_vram_gb,
        nodes=spec.resources.nodes,
        gpus_per_node=spec.resources.gpus_per_node,
        max_price_micros=spec.pricing.max_price_micros,
        min_reliability=spec.min_reliability,
        duration_s=spec.max_duration,
    )


def ask_for(
    seller_id: str,
    gpus: list[dict],
    ask_micros: int,
    reliability: float,
    max_lease_hours: int,
    available_until: float | None,
) -> Ask | None:
    """A seller's ask as the market sees it (None if it offers no GPUs)."""
    if not gpus:
        return None
    first = gpus[0]
    return Ask(
        seller_id=seller_id,
        gpu_model=first["model"],
        vram_gb=min(g["vram_gb"] for g in gpus),
        free_gpus=len(gpus),
        ask_micros=ask_micros,
        reliability=reliability,
        max_lease_s=max_lease_hours * 3600,
        available_until=available_until,
    )


def reliability(completed: int, lost: int) -> float:
    """Share of leases served to the end, starting from a 9-in-10 prior for newcomers."""
    return (completed + 9) / (completed + lost + 10)
