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


def local_swarm_up(tmp_path_factory, sellers: int):
    """`computeswarm up --local` with `sellers` simulated RTX 4090s, in a home of its own;
    a generator for module fixtures: it yields the swarm, then takes it down and checks
    that no namespace of its run is left."""
    from computeswarm.cluster.local import swarm as local_swarm

    os.environ["COMPUTESWARM_HOME"] = str(tmp_path_factory.mktemp("home"))
    os.environ["COMPUTESWARM_LOCAL_DIR"] = str(tmp_path_factory.mktemp("local"))
    try:
        up = local_swarm.up(
            sellers=sellers, gpus="RTX4090:24GB:1", price="0.40", deposit="50", say=lambda *_: None
        )
        yield up
    finally:
        local_swarm.down(say=lambda *_: None)
        os.environ.pop("COMPUTESWARM_HOME")
        os.environ.pop("COMPUTESWARM_LOCAL_DIR")
    assert not any(up.run_id in ns for ns in netns.list_all()), "down left namespaces"
