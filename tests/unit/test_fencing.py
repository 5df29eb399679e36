"""nftables rules rendered from policy: what is open, what is forwarded, atomic replace."""

from __future__ import annotations

import pytest

from computeswarm.tunnel.fencing import HubFence, UnderlayFence, allowed_pairs, render


def test_underlay_fence_opens_only_the_wireguard_port():
    rules = "\n".join(UnderlayFence(("eth0",), 51820).rules())
    assert 'iifname "eth0" udp dport 51820 accept' in rules
    assert 'iifname "eth0" ct state established,related accept' in rules
    assert rules.rstrip("}").rstrip().endswith('iifname "eth0" drop')
    assert "tcp dport" not in rules


def test_underlay_fence_can_publish_tcp_ports_on_several_interfaces():
    rules = "\n".join(UnderlayFence(("eth0", "eth1"), 51820, (8443, 80)).rules())
    assert 'iifname { "eth0", "eth1" } tcp dport { 8443, 80 } accept' in rules


def test_pairs_only_within_groups_and_both_directions():
    pairs = allowed_pairs({"lease-a": {"10.90.0.2", "10.90.0.3"}, "lease-b": {"10.90.0.4"}})
    assert pairs == [("10.90.0.2", "10.90.0.3"), ("10.90.0.3", "10.90.0.2")]


def test_a_node_in_two_groups_reaches_both_but_they_do_not_reach_each_other():
    pairs = set(allowed_pairs({"a": {"1.0.0.1", "1.0.0.2"}, "b": {"1.0.0.2", "1.0.0.3"}}))
    assert ("1.0.0.1", "1.0.0.2") in pairs and ("1.0.0.2", "1.0.0.3") in pairs
    assert ("1.0.0.1", "1.0.0.3") not in pairs


def test_hub_fence_default_denies_the_overlay():
    rules = "\n".join(HubFence("wg0", {}).rules())
    assert "elements" not in rules  # an empty set: nothing is forwarded
    assert 'iifname "wg0" drop' in rules
    assert 'oifname "wg0" drop' in rules
    assert rules.index("@lease_pairs accept") < rules.index('iifname "wg0" drop')


def test_hub_fence_lists_group_pairs():
    rules = "\n".join(HubFence("wg0", {"l": frozenset({"10.90.0.2", "10.90.0.3"})}).rules())
    assert "elements = { 10.90.0.2 . 10.90.0.3, 10.90.0.3 . 10.90.0.2 }" in rules


def test_render_replaces_the_table_in_one_transaction():
    script = render("cs_fence", UnderlayFence(("eth0",), 51820))
    lines = script.splitlines()
    assert lines[:3] == [
        "table inet cs_fence",
        "delete table inet cs_fence",
        "table inet cs_fence {",
    ]


@pytest.mark.parametrize("bad", ["", "1abc", "has-dash", "x" * 40, "a b"])
def test_table_names_are_validated(bad):
    with pytest.raises(ValueError):
        render(bad)


def test_local_processes_of_a_group_reach_only_its_members_and_its_own_ports():
    fence = HubFence(
        "wg0",
        {"l": frozenset({"10.90.0.2"})},
        {"l": (20000, 20099)},
        (8443,),
        local_uids={"l": 2020000},
        fenced_uids=(2000000, 2065535),
    )
    rules = fence.rules()
    chain = rules[rules.index("chain local_output {") :]
    assert "meta skuid 2020000 ip daddr 10.90.0.2 accept" in chain
    assert 'meta skuid 2020000 oifname "lo" tcp dport 20000-20099 accept' in chain
    # Everything else from any lease uid is dropped, after the allowances.
    assert chain[-2] == "meta skuid 2000000-2065535 drop"
    assert not any("8443" in line for line in chain)


def test_no_local_fence_without_a_uid_range():
    assert "chain local_output {" not in HubFence("wg0", {}, {}, (8443,)).rules()
