"""Address allocation: the hub first, never a reuse, a clear error when exhausted."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from computeswarm.tunnel.addresses import AddressPool
from computeswarm.tunnel.errors import AddressPoolExhausted


def test_hub_is_first_host_and_allocation_starts_after_it():
    pool = AddressPool.from_cidr("10.90.0.0/16")
    assert str(pool.hub) == "10.90.0.1"
    assert str(pool.allocate()) == "10.90.0.2"
    assert pool.interface_address(pool.allocate()) == "10.90.0.3/16"


def test_exhaustion_is_a_clear_error():
    pool = AddressPool.from_cidr("10.90.0.0/29")  # hosts .1-.6, .1 is the hub
    got = [str(pool.allocate()) for _ in range(5)]
    assert got == [f"10.90.0.{i}" for i in range(2, 7)]
    with pytest.raises(AddressPoolExhausted, match=r"exhausted.*reused"):
        pool.allocate()


def test_reloading_issued_addresses_continues_after_the_highest():
    pool = AddressPool.from_cidr("10.90.0.0/16", issued=["10.90.0.2", "10.90.3.7"])
    assert str(pool.allocate()) == "10.90.3.8"


@pytest.mark.parametrize("bad", ["10.90.0.0", "10.90.0.1", "10.91.0.5", "10.90.255.255"])
def test_reserve_refuses_non_host_and_hub_addresses(bad):
    with pytest.raises(ValueError):
        AddressPool.from_cidr("10.90.0.0/16").reserve(bad)


@pytest.mark.parametrize("cidr", ["10.90.0.1/16", "not-a-cidr", "10.90.0.0/31"])
def test_invalid_ranges_are_refused(cidr):
    with pytest.raises(ValueError):
        AddressPool.from_cidr(cidr)


@given(
    prefix=st.integers(min_value=22, max_value=29),
    ops=st.lists(st.sampled_from(["alloc", "reload"]), max_size=80),
)
def test_never_reuses_an_address(prefix, ops):
    """Whatever the order of allocations and reloads from the store, every address handed
    out is a unique host address of the range, never the hub. (A retired seller's address
    simply stays in `issued`, which is what a reload restores.)"""
    network = ipaddress.IPv4Network(f"10.90.0.0/{prefix}")
    pool = AddressPool.from_cidr(str(network))
    handed_out: list[ipaddress.IPv4Address] = []
    for op in ops:
        if op == "alloc":
            try:
                handed_out.append(pool.allocate())
            except AddressPoolExhausted:
                assert len(handed_out) == network.num_addresses - 3
        elif op == "reload":  # the coordinator restarts and reloads the store
            pool = AddressPool.from_cidr(str(network), issued=map(str, pool.issued))
    assert len(set(handed_out)) == len(handed_out)
    for addr in handed_out:
        assert addr in network
        assert addr not in (network.network_address, network.broadcast_address, pool.hub)
