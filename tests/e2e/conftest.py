"""e2e tests run real WireGuard across testbed namespaces: root and wireguard-go only.

Every testbed made here must be gone when the session ends: a leaked namespace, interface
socket or wireguard-go process fails the run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from computeswarm.tunnel import netns
from computeswarm.tunnel.backends import BACKENDS

REASON = None
if os.geteuid() != 0:
    REASON = "e2e tests need root (network namespaces); CI runs them as root"
elif not BACKENDS["userspace"]().check().ok:
    REASON = f"userspace WireGuard unavailable: {BACKENDS['userspace']().check().reason}"
elif not shutil.which("nft"):
    REASON = "nft not found: apt-get install nftables"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if REASON:
        for item in items:
            if "e2e" in Path(item.fspath).parts:
                item.add_marker(pytest.mark.skip(reason=REASON))


@pytest.fixture(scope="session", autouse=True)
def no_leftovers():
    """Fail the session if any testbed namespace, socket or wireguard-go survives it."""
    before = set(netns.list_all())
    yield
    if REASON:
        return
    leaked = [ns for ns in set(netns.list_all()) - before if ns.startswith("cs-")]
    sockets = [p.name for p in Path("/var/run/wireguard").glob("cs*.sock")]
    assert not leaked, f"namespaces leaked: {leaked}"
    assert not sockets, f"wireguard-go sockets leaked: {sockets}"


@pytest.fixture
def userspace():
    return BACKENDS["userspace"]()
