"""The CLI: fast help, one-line errors, JSON for scripts."""

from __future__ import annotations

import json
import os
import sys

import pytest

from computeswarm import cli
from computeswarm.tunnel import backends
from computeswarm.tunnel.backends.base import Capability


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["computeswarm", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def fake_doctor():
    return {
        "kernel": Capability(False, "no module"),
        "userspace": Capability(True, "wireguard-go present"),
        "none": Capability(True, "loopback"),
    }


def test_doctor_json(monkeypatch, capsys):
    monkeypatch.setattr(backends, "doctor", fake_doctor)
    code, out, _ = run_cli(monkeypatch, capsys, "tunnel", "doctor", "--json")
    assert code == 0
    assert json.loads(out)["kernel"] == {"ok": False, "reason": "no module"}


def test_doctor_table_names_the_chosen_backend(monkeypatch, capsys):
    monkeypatch.setattr(backends, "doctor", fake_doctor)
    code, out, _ = run_cli(monkeypatch, capsys, "tunnel", "doctor")
    assert code == 0
    assert "no  kernel" in out and "'userspace' backend" in out


def test_user_errors_print_one_line(monkeypatch, capsys, tmp_path):
    key_dir = tmp_path / "node"
    run_cli(monkeypatch, capsys, "tunnel", "keys", str(key_dir))
    (key_dir / "private.key").chmod(0o644)
    code, _, err = run_cli(monkeypatch, capsys, "tunnel", "keys", str(key_dir))
    assert code == 1
    assert err.startswith("error: ") and err.count("\n") == 1 and "chmod 600" in err
    assert "Traceback" not in err


def test_debug_shows_the_traceback(monkeypatch, capsys, tmp_path):
    key_dir = tmp_path / "node"
    run_cli(monkeypatch, capsys, "tunnel", "keys", str(key_dir))
    (key_dir / "private.key").chmod(0o644)
    from computeswarm.tunnel.errors import InvalidKey

    with pytest.raises(InvalidKey):
        run_cli(monkeypatch, capsys, "--debug", "tunnel", "keys", str(key_dir))


def test_keys_prints_only_the_public_key(monkeypatch, capsys, tmp_path):
    code, out, _ = run_cli(monkeypatch, capsys, "tunnel", "keys", str(tmp_path))
    assert code == 0
    assert out.strip() == (tmp_path / "public.key").read_text().strip()
    assert (tmp_path / "private.key").read_text().strip() not in out


def test_unknown_command_is_a_usage_error(monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "tunnel", "nope")
    assert code == 2 and "No such command" in err


def test_systemd_unit_runs_a_real_command(monkeypatch, capsys):
    from pathlib import Path

    import computeswarm.configs

    unit = Path(computeswarm.configs.__file__).parent / "computeswarm-seller.service"
    exec_start = next(
        line for line in unit.read_text().splitlines() if line.startswith("ExecStart=")
    )
    binary, *args = exec_start.split("=", 1)[1].split()
    assert binary.endswith("/computeswarm")
    code, out, _ = run_cli(monkeypatch, capsys, *args, "--help")
    assert code == 0 and "--state-dir" in out


def test_the_local_swarm_record_holding_keys_is_private(tmp_path, monkeypatch):
    """L3: local-swarm.json (admin and buyer keys) was written with the default umask."""
    from computeswarm.cluster.local.swarm import LocalSwarm

    monkeypatch.setenv("COMPUTESWARM_HOME", str(tmp_path))
    old = os.umask(0o022)
    try:
        LocalSwarm("loopback", str(tmp_path), "http://x", admin_key="csk_a_b").save()
    finally:
        os.umask(old)
    assert LocalSwarm.record_path().stat().st_mode & 0o777 == 0o600
