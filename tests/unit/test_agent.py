"""The seller agent against a fake coordinator that records calls and injects failures."""

from __future__ import annotations

import json
import threading

from computeswarm.cluster.errors import CoordinatorUnreachable, NotFound
from computeswarm.cluster.seller.agent import STATUS_FILE, OfferTerms, SellerAgent
from computeswarm.cluster.sellers.gpus import Gpu


class FakeCoordinator:
    """Stands in for CoordinatorClient: records every call, fails on demand."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []
        self.fail_next: list[Exception] = []

    def _record(self, name: str, **kwargs):
        self.calls.append((name, kwargs))
        if self.fail_next:
            raise self.fail_next.pop(0)

    def put_offer(self, seller_id, **kwargs):
        self._record("put_offer", seller_id=seller_id, **kwargs)
        return {}

    def heartbeat(self, seller_id, **kwargs):
        self._record("heartbeat", seller_id=seller_id, **kwargs)
        return {"state": "online"}

    def rtt_ms(self):
        self._record("rtt_ms")
        return 2.5

    def bandwidth_mbps(self):
        self._record("bandwidth_mbps")
        return 400.0

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


GPUS = [Gpu("RTX4090", 24, simulated=True)] * 2


def agent(fake, clock, tmp_path=None):
    return SellerAgent(
        fake,
        "s-1",
        GPUS,
        OfferTerms("0.40", 12),
        interval_s=5,
        measure_every_s=60,
        clock=clock,
        state_dir=tmp_path,
    )


def test_offers_once_then_heartbeats_with_measurements():
    fake, clock = FakeCoordinator(), Clock()
    a = agent(fake, clock)
    a.tick()
    clock.now = 5
    a.tick()
    assert fake.names() == ["put_offer", "rtt_ms", "bandwidth_mbps", "heartbeat", "heartbeat"]
    _, offer = fake.calls[0]
    assert offer == {
        "seller_id": "s-1",
        "price_per_gpu_hour": "0.40",
        "max_lease_hours": 12,
        "available_until": None,
    }
    beat = fake.calls[3][1]
    assert beat["simulated"] is True and beat["rtt_ms"] == 2.5 and beat["bandwidth_mbps"] == 400
    assert beat["gpus"] == [{"model": "RTX4090", "vram_gb": 24, "simulated": True}] * 2


def test_measures_again_only_when_due():
    fake, clock = FakeCoordinator(), Clock()
    a = agent(fake, clock)
    a.tick()
    clock.now = 59
    a.tick()
    clock.now = 61
    a.tick()
    assert fake.names().count("rtt_ms") == 2


def test_keeps_going_when_the_coordinator_is_unreachable(tmp_path):
    fake, clock = FakeCoordinator(), Clock()
    a = agent(fake, clock, tmp_path)
    fake.fail_next = [CoordinatorUnreachable("connection refused")]
    a.tick()  # the offer fails
    assert not a.offer_published
    status = json.loads((tmp_path / STATUS_FILE).read_text())
    assert "connection refused" in status["error"]
    a.tick()  # next round: offer again, then heartbeat
    assert a.offer_published and a.last_state == "online" and a.last_error is None


def test_stops_when_the_coordinator_forgets_the_seller(tmp_path):
    fake, clock = FakeCoordinator(), Clock()
    a = agent(fake, clock, tmp_path)
    a.offer_published = True
    a.last_measured = 0
    fake.fail_next = [NotFound("seller s-1 has left")]
    assert a.run(threading.Event()) == 3
    assert json.loads((tmp_path / STATUS_FILE).read_text())["error"] == "seller s-1 has left"
