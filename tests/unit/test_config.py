"""wg-quick configs: render and parse are inverses; bad files fail with the line and fix."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from computeswarm.tunnel.config import InterfaceConfig, PeerConfig, parse
from computeswarm.tunnel.errors import ConfigParseError, InvalidKey
from computeswarm.tunnel.keys import KeyPair

PAIRS = [KeyPair.generate() for _ in range(6)]


def _peer(i: int, **kw) -> PeerConfig:
    return PeerConfig(public_key=PAIRS[i].public, allowed_ips=(f"10.90.0.{i + 2}/32",), **kw)


def test_render_is_wg_quick_format():
    conf = InterfaceConfig(
        private_key=PAIRS[0].private,
        addresses=("10.90.0.1/16",),
        listen_port=51820,
        peers=(_peer(1, endpoint="198.18.0.2:51820", persistent_keepalive=25, name="s1"),),
    )
    text = conf.render()
    assert "[Interface]\nPrivateKey = " in text
    assert "Address = 10.90.0.1/16" in text
    assert "# Name = s1\n[Peer]" in text
    assert "AllowedIPs = 10.90.0.3/32" in text
    assert "PersistentKeepalive = 25" in text


def test_render_for_wg_drops_wg_quick_only_keys():
    conf = InterfaceConfig(
        private_key=PAIRS[0].private,
        addresses=("10.90.0.1/16",),
        mtu=1420,
        peers=(_peer(1, name="s1"),),
    )
    text = conf.render(for_wg=True)
    assert "Address" not in text and "MTU" not in text and "Name" not in text
    assert "PublicKey" in text


def test_parses_a_hand_written_file_with_comments_and_lists():
    text = f"""
    # hub config
    [Interface]
    PrivateKey = {PAIRS[0].private}
    Address = 10.90.0.1/16
    ListenPort = 51820

    [Peer]
    PublicKey = {PAIRS[1].public}
    AllowedIPs = 10.90.0.2/32, 10.91.0.0/24
    AllowedIPs = 10.92.0.0/24  # may repeat, like wg-quick
    Endpoint = vpn.example.org:51820
    PersistentKeepalive = off
    """
    conf = parse(text)
    assert conf.listen_port == 51820
    (peer,) = conf.peers
    assert peer.allowed_ips == ("10.90.0.2/32", "10.91.0.0/24", "10.92.0.0/24")
    assert peer.endpoint == "vpn.example.org:51820"
    assert peer.persistent_keepalive is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[Interface]\nPrivateKey = {k}\nListenPrt = 1", "did you mean ListenPort"),
        (
            "[Interface]\nPrivateKey = {k}\n[Peer]\nPublicKey = {p}\nAllowedIP = 10.0.0.0/8",
            "did you mean AllowedIPs",
        ),
        ("PrivateKey = {k}", "outside a section"),
        ("[Interface]\nPrivateKey = {k}\n[Peers]", "unknown section"),
        ("[Interface]\nAddress = 10.0.0.1/24", "missing PrivateKey"),
        ("[Interface]\nPrivateKey = {k}\nListenPort = 99999", "between 0 and 65535"),
        (
            "[Interface]\nPrivateKey = {k}\n[Peer]\nPublicKey = {p}\nAllowedIPs = 10.0.0.300/32",
            "not an IP network",
        ),
        ("[Interface]\nPrivateKey = {k}\n[Peer]\nPublicKey = {p}\nEndpoint = nohost", "host:port"),
        (
            "[Interface]\nPrivateKey = {k}\n[Peer]\nPublicKey = {p}\n[Peer]\nPublicKey = {p}",
            "appears twice",
        ),
        ("[Interface]\nPrivateKey = {k}\n[Interface]\nPrivateKey = {k}", "exactly one"),
    ],
)
def test_bad_files_fail_with_a_clear_message(body, message):
    text = body.format(k=PAIRS[0].private, p=PAIRS[1].public)
    with pytest.raises(ConfigParseError, match=message):
        parse(text)


def test_bad_peer_key_in_file_is_an_invalid_key():
    with pytest.raises(InvalidKey):
        parse(f"[Interface]\nPrivateKey = {PAIRS[0].private}\n[Peer]\nPublicKey = nope")


def test_unknown_key_error_names_the_line():
    with pytest.raises(ConfigParseError, match=r"^line 3: "):
        parse(f"[Interface]\nPrivateKey = {PAIRS[0].private}\nAdress = 10.0.0.1/24")


peer_strategy = st.builds(
    PeerConfig,
    public_key=st.sampled_from([p.public for p in PAIRS]),
    allowed_ips=st.lists(
        st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(16, 32)).map(
            lambda t: f"10.{t[0]}.{t[1]}.0/{t[2]}"
        ),
        max_size=3,
    ).map(tuple),
    endpoint=st.one_of(
        st.none(),
        st.tuples(st.integers(1, 254), st.integers(1, 65535)).map(
            lambda t: f"198.18.0.{t[0]}:{t[1]}"
        ),
    ),
    persistent_keepalive=st.one_of(st.none(), st.integers(0, 65535)),
    preshared_key=st.one_of(st.none(), st.sampled_from([p.private for p in PAIRS])),
    name=st.one_of(st.none(), st.from_regex(r"[a-z][a-z0-9-]{0,15}", fullmatch=True)),
)


@given(
    private=st.sampled_from([p.private for p in PAIRS]),
    addresses=st.lists(st.integers(2, 250).map(lambda i: f"10.90.0.{i}/16"), max_size=2),
    listen_port=st.one_of(st.none(), st.integers(0, 65535)),
    mtu=st.one_of(st.none(), st.integers(576, 9000)),
    peers=st.lists(peer_strategy, max_size=4, unique_by=lambda p: p.public_key),
)
def test_render_then_parse_is_identity(private, addresses, listen_port, mtu, peers):
    conf = InterfaceConfig(
        private_key=private,
        addresses=tuple(addresses),
        listen_port=listen_port,
        mtu=mtu,
        peers=tuple(peers),
    )
    assert parse(conf.render()) == conf
