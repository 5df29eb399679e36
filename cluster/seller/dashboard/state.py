"""What the dashboard shows, gathered from this box (its enrollment, the agent's status
and uptime files) and the coordinator's seller API, and the one thing it changes: the
price, at the coordinator first, then in the enrollment so a restarted agent keeps it."""

from __future__ import annotations

import dataclasses
import json
import time
from decimal import Decimal, InvalidOperation
from pathlib import Path

from computeswarm.cluster.client import CoordinatorClient
from computeswarm.cluster.errors import ApiError, CoordinatorUnreachable
from computeswarm.cluster.seller import uptime
from computeswarm.cluster.seller.agent import STATUS_FILE
from computeswarm.cluster.seller.join import Enrollment

STALE_AFTER_S = 30.0  # an agent status older than this: the agent is not running


class BadPrice(ValueError):
    pass


@dataclasses.dataclass
class Box:
    state_dir: Path
    client: CoordinatorClient

    @property
    def enrollment(self) -> Enrollment:
        enrollment = Enrollment.load(self.state_dir)
        if enrollment is None:
            raise FileNotFoundError(f"{self.state_dir} holds no enrollment")
        return enrollment


def snapshot(box: Box, now: float | None = None) -> dict:
    """The page's data. The coordinator's parts are absent (with why) when it is not
    reachable: what the box knows itself still shows."""
    now = time.time() if now is None else now
    enrollment = box.enrollment
    agent = _agent_status(box.state_dir)
    out = {
        "now": now,
        "box": {
            "seller_id": enrollment.seller_id,
            "name": enrollment.name,
            "address": enrollment.address,
            "interface": enrollment.interface,
            "backend": enrollment.backend,
            "agent_running": bool(agent) and now - agent.get("updated_at", 0) < STALE_AFTER_S,
            "state": agent.get("state"),
            "error": agent.get("error"),
            "rtt_ms": agent.get("rtt_ms"),
            "bandwidth_mbps": agent.get("bandwidth_mbps"),
            "last_report": agent.get("updated_at"),
        },
        "gpus": enrollment.gpus,
        "price_per_gpu_hour": enrollment.price_per_gpu_hour,
        "uptime": uptime.daily(uptime.load(box.state_dir), now),
        "coordinator_error": None,
    }
    try:
        seller = box.client.seller(enrollment.seller_id)
        out["seller"] = {
            "state": seller["state"],
            "last_heartbeat": seller.get("last_heartbeat"),
            "offer": seller.get("offer"),
        }
        out["earnings"] = box.client.seller_earnings(enrollment.seller_id)
    except (ApiError, CoordinatorUnreachable) as e:
        out["coordinator_error"] = str(e)
    return out


def set_price(box: Box, text: str) -> dict:
    """Offer this box at `text` per GPU-hour from now on; the coordinator's new offer."""
    try:
        price = Decimal(str(text).strip())
    except InvalidOperation:
        raise BadPrice(f"not a price: {text!r}") from None
    if not price.is_finite() or price <= 0 or price.as_tuple().exponent < -6:
        raise BadPrice("a price is a positive amount with at most 6 decimals, e.g. 0.45")
    enrollment = box.enrollment
    current = box.client.seller(enrollment.seller_id).get("offer") or {}
    offer = box.client.put_offer(
        enrollment.seller_id,
        price_per_gpu_hour=str(price),
        max_lease_hours=current.get("max_lease_hours", enrollment.max_lease_hours),
        available_until=current.get("available_until"),
    )
    dataclasses.replace(enrollment, price_per_gpu_hour=str(price)).save(box.state_dir)
    return offer


def _agent_status(state_dir: Path) -> dict:
    try:
        status = json.loads((state_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return status if isinstance(status, dict) else {}
