"""Testbed naming: what `testbed clean` may remove, and unique interface names."""

from __future__ import annotations

import pytest

from computeswarm.tunnel.backends.base import check_interface_name
from computeswarm.tunnel.errors import InterfaceNameError
from computeswarm.tunnel.testbed import Testbed, _looks_like_ours, _subnet_index


@pytest.mark.parametrize("ns", ["cs-a1b2c3-hub", "cs-a1b2c3-s1-w", "cs-000000-ul"])
def test_recognises_testbed_namespaces(ns):
    assert _looks_like_ours(ns)


@pytest.mark.parametrize("ns", ["cs-probe-123", "prod", "cs-a1b2c-hub", "cs-zzzzzz-hub", "cs-"])
def test_leaves_other_namespaces_alone(ns):
    assert not _looks_like_ours(ns)


def test_interface_names_carry_the_run_id(monkeypatch):
    bed = Testbed("a1b2c3")
    monkeypatch.setattr(bed, "_save", lambda: None)
    assert bed.iface_name("s1") == "csa1b2c3s1"
    with pytest.raises(ValueError):
        bed.iface_name("toolongrole")


def test_subnet_index_is_a_valid_octet():
    assert all(1 <= _subnet_index(f"{i:06x}") <= 250 for i in range(500))


@pytest.mark.parametrize("bad", ["", "x" * 16, "wg 0", "wg/0", ".."])
def test_invalid_interface_names(bad):
    with pytest.raises(InterfaceNameError):
        check_interface_name(bad)
