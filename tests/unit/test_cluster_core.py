"""Pure parts of cluster/: states, GPU specs, credentials, rate limits, config."""

from __future__ import annotations

import pytest

from computeswarm.cluster.accounts.credentials import (
    API_KEY_KIND,
    INVITE_KIND,
    new_token,
    parse_token,
)
from computeswarm.cluster.api.ratelimit import RateLimiter
from computeswarm.cluster.config import load_config
from computeswarm.cluster.errors import ConfigError, InvalidTransition
from computeswarm.cluster.sellers.gpus import parse_gpu_shorthand, parse_nvidia_smi
from computeswarm.cluster.sellers.states import TRANSITIONS, SellerEvent, SellerState, transition
from computeswarm.errors import UserError

S, E = SellerState, SellerEvent


def test_lifecycle_path():
    state = transition(S.INVITED, E.ENROLL)
    for event, expected in [
        (E.HEARTBEAT, S.ONLINE),
        (E.LEASE, S.LEASED),
        (E.RELEASE, S.ONLINE),
        (E.HEARTBEAT_MISSED, S.OFFLINE),
        (E.HEARTBEAT, S.ONLINE),
        (E.LEAVE, S.DRAINING),
        (E.DRAINED, S.OFFLINE),
    ]:
        state = transition(state, event)
        assert state is expected


def test_disabled_is_terminal():
    assert S.DISABLED.is_terminal
    assert not any(s is S.DISABLED for s, _ in TRANSITIONS)
    with pytest.raises(InvalidTransition, match="it is final"):
        transition(S.DISABLED, E.HEARTBEAT)


def test_invalid_transition_names_the_possible_ones():
    with pytest.raises(InvalidTransition, match=r"offline cannot lease \(possible: "):
        transition(S.OFFLINE, E.LEASE)


def test_only_online_sellers_are_available():
    assert [s for s in S if s.is_available] == [S.ONLINE]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("RTX4090:24GB:2", [("RTX4090", 24)] * 2),
        ("rtx3090", [("RTX3090", 24)]),
        ("A6000:48GB", [("A6000", 48)]),
        ("RTX4090:24GB:1, RTX3080:10GB:1", [("RTX4090", 24), ("RTX3080", 10)]),
    ],
)
def test_gpu_shorthand(text, expected):
    gpus = parse_gpu_shorthand(text, simulated=True)
    assert [(g.model, g.vram_gb) for g in gpus] == expected
    assert all(g.simulated for g in gpus)


@pytest.mark.parametrize(
    "bad", ["", "RTX4090:24:2", "MYSTERY", "RTX4090:24GB:0", "RTX4090:0GB:1", "a b"]
)
def test_bad_gpu_shorthand(bad):
    with pytest.raises(UserError):
        parse_gpu_shorthand(bad)


def test_nvidia_smi_parsing():
    gpus = parse_nvidia_smi("NVIDIA GeForce RTX 4090, 24564\nNVIDIA H200, 143771\n")
    assert [(g.model, g.vram_gb, g.simulated) for g in gpus] == [
        ("RTX4090", 24, False),
        ("H200", 140, False),
    ]


def test_tokens_round_trip_and_reject_other_kinds():
    token = new_token(INVITE_KIND)
    assert parse_token(str(token), INVITE_KIND) == token
    assert parse_token(str(token), API_KEY_KIND) is None
    assert parse_token("csi_short_x", INVITE_KIND) is None
    assert parse_token("", INVITE_KIND) is None


def test_rate_limiter_bursts_then_refills():
    now = [0.0]
    limiter = RateLimiter(rate=2, burst=3, clock=lambda: now[0])
    assert [limiter.check("k") for _ in range(3)] == [0, 0, 0]
    assert limiter.check("k") == pytest.approx(0.5)
    assert limiter.check("other") == 0
    now[0] = 0.5
    assert limiter.check("k") == 0


def test_rate_limiter_memory_is_bounded():
    now = [0.0]
    limiter = RateLimiter(rate=1, burst=1, clock=lambda: now[0], max_keys=10)
    for i in range(10):
        limiter.check(f"k{i}")
    now[0] = 100
    limiter.check("new")
    assert len(limiter._buckets) <= 10


def test_config_file_and_env(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("listen_port: 9000\nheartbeat:\n  interval_s: 2\n  timeout_s: 6\n")
    cfg = load_config(
        path,
        env={
            "COMPUTESWARM_HEAD__OVERLAY__BACKEND": "none",
            "COMPUTESWARM_HEAD__OVERLAY__UNDERLAY_INTERFACES": "[eth1]",
            "UNRELATED": "x",
        },
    )
    assert cfg.listen_port == 9000 and cfg.heartbeat.timeout_s == 6
    assert cfg.overlay.backend == "none" and cfg.overlay.underlay_interfaces == ["eth1"]


@pytest.mark.parametrize(
    ("yaml_text", "env", "message"),
    [
        ("listen_prot: 1\n", {}, "unknown key 'listen_prot' (did you mean 'listen_port'?)"),
        ("overlay:\n  cdir: 10.0.0.0/8\n", {}, "unknown key 'overlay.cdir' (did you mean 'cidr'?)"),
        (
            "",
            {"COMPUTESWARM_HEAD__HEARTBEET__TIMEOUT_S": "3"},
            "unknown key 'heartbeet' (did you mean 'heartbeat'?)",
        ),
        ("heartbeat:\n  interval_s: 5\n  timeout_s: 6\n", {}, "at least 2 x"),
        ("listen_port: 70000\n", {}, "listen_port"),
        ("- a list\n", {}, "expected a mapping"),
    ],
)
def test_bad_config_is_refused_with_the_fix(tmp_path, yaml_text, env, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as e:
        load_config(path, env=env)
    assert message in str(e.value)


def test_shipped_example_config_is_valid():
    from pathlib import Path

    import computeswarm.configs

    example = Path(computeswarm.configs.__file__).parent / "coordinator.yaml"
    cfg = load_config(example, env={})
    assert cfg.overlay.cidr == "10.90.0.0/16"


def test_the_budget_runs_from_each_members_attach_at_its_own_price():
    """M2: the budget was counted from the job's start at the lease's first price, while
    metering ran from each attach (and a repair's price): the escrow ran out first and a
    seller was paid 23.5 % below its ask."""
    from computeswarm.cluster.leases.rules import budget_end
    from computeswarm.cluster.ledger.journal import Usage, metered_seconds

    escrow = 1_000_000  # 1.00
    # Two sellers attach at t=0 and t=5 (the job starts at t=20), at 0.44/GPU-h; one is
    # lost at t=600 and replaced from t=610 at 0.66/GPU-h.
    members = [(0.0, None, 1, 440_000), (5.0, 600.0, 1, 440_000), (610.0, None, 1, 660_000)]
    end = budget_end(members, escrow)
    usages = [
        Usage("s", gpus, metered_seconds(a, d if d is not None else end), 0, price)
        for a, d, gpus, price in members
    ]
    spent = sum(u.buyer_micros for u in usages)
    assert escrow - 2_000 <= spent <= escrow  # used up to the escrow, never past it
    assert end > 600
    assert budget_end([(None, None, 1, 440_000)], escrow) == float("inf")  # nobody attached
