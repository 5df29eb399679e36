"""The shipped Grafana dashboards parse, and the market one asks only for series the
coordinator exports (a renamed metric would leave a panel empty)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import generate_latest

GRAFANA = Path(__file__).resolve().parents[2] / "configs" / "grafana"


def test_every_dashboard_is_grafana_json():
    for path in GRAFANA.glob("*.json"):
        board = json.loads(path.read_text())
        assert board["title"] and board["panels"], path


def test_the_market_dashboard_uses_the_coordinator_s_metric_names(tmp_path):
    from prometheus_client import CollectorRegistry

    from computeswarm.cluster.metrics import MarketMeters, SellerCollector, api_latency
    from computeswarm.cluster.store.db import Store

    store = Store(f"sqlite:///{tmp_path}/c.db")
    store.migrate()
    registry = CollectorRegistry()
    registry.register(SellerCollector(store))
    api_latency(registry)
    MarketMeters(registry)
    exported = set(re.findall(r"^# TYPE (\w+)", generate_latest(registry).decode(), re.M))
    exported |= {f"{name}_total" for name in exported} | {f"{n}_bucket" for n in exported}
    exported |= {"computeswarm_storage_bytes"}  # the store's collector (needs a live store)
    board = json.loads((GRAFANA / "computeswarm-market.json").read_text())
    for panel in board["panels"]:
        for target in panel["targets"]:
            for name in re.findall(r"\b(computeswarm_\w+)", target["expr"]):
                assert name in exported, (panel["title"], name)
    store.close()
