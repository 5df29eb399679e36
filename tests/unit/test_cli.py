"""The CLI: fast help, one-line errors, JSON for scripts."""

from __future__ import annotations

import json
import os
import sys
from typing import ClassVar

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


# --- where a command finds its coordinator and key ---------------------------------------


class RecordingClient:
    """Stands in for CoordinatorClient: records how it was made, answers from `answers`."""

    made: ClassVar[list[tuple[str, str | None]]] = []
    answers: ClassVar[dict] = {}

    def __init__(self, url: str, api_key: str | None = None, **_kwargs):
        self.url = url
        RecordingClient.made.append((url, api_key))

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: RecordingClient.answers[name]


@pytest.fixture
def recorded(monkeypatch, tmp_path):
    """A profile as `computeswarm up --local` writes it, no flags or env, a recording client."""
    from computeswarm.cluster import client as client_module
    from computeswarm.profile import save_profile

    monkeypatch.setenv("COMPUTESWARM_HOME", str(tmp_path / "home"))
    for name in ("COMPUTESWARM_COORDINATOR", "COMPUTESWARM_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COMPUTESWARM_HEAD__STATE_DIR", str(tmp_path / "no-head"))
    save_profile(
        {
            "coordinator": "http://127.0.0.1:18443",
            "buyer_key": "csk_buyer_key",
            "admin_key": "csk_admin_key",
        }
    )
    monkeypatch.setattr(client_module, "CoordinatorClient", RecordingClient)
    RecordingClient.made = []
    RecordingClient.answers = {
        "sellers": [
            {
                "id": "s-1",
                "name": "box",
                "state": "online",
                "gpus": [{"model": "RTX4090", "vram_gb": 24}],
                "offer": {"price_per_gpu_hour": "0.4", "price_per_gpu_hour_micros": 400_000,
                          "max_lease_hours": 24},
            }
        ],
        "jobs": [],
    }  # fmt: skip
    return RecordingClient


def test_operator_commands_use_the_profiles_coordinator_and_admin_key(
    recorded, monkeypatch, capsys
):
    """After `computeswarm up --local`, `sellers list` failed with "no API key", then
    "cannot reach 127.0.0.1:8443": operator commands ignored the profile."""
    code, out, err = run_cli(monkeypatch, capsys, "sellers", "list")
    assert code == 0, err
    assert recorded.made == [("http://127.0.0.1:18443", "csk_admin_key")]
    assert "s-1" in out and "1x RTX4090 24GB" in out and "0.4" in out


def test_buyer_commands_use_the_profiles_buyer_key(recorded, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "jobs", "list", "--json")
    assert code == 0, err
    assert recorded.made == [("http://127.0.0.1:18443", "csk_buyer_key")]
    assert json.loads(out) == []


def test_flags_and_env_come_before_the_profile(recorded, monkeypatch, capsys):
    monkeypatch.setenv("COMPUTESWARM_COORDINATOR", "http://env:1")
    code, out, err = run_cli(monkeypatch, capsys, "sellers", "list", "--json", "--api-key", "k")
    assert code == 0, err
    assert recorded.made == [("http://env:1", "k")]
    assert json.loads(out) == recorded.answers["sellers"]  # --json: the answer as sent


def test_operator_commands_fall_back_to_the_heads_admin_key(
    recorded, monkeypatch, capsys, tmp_path
):
    from computeswarm.profile import save_profile

    save_profile({"coordinator": "http://127.0.0.1:18443"})
    code, _, err = run_cli(monkeypatch, capsys, "sellers", "list")
    assert code == 1 and "no API key" in err and "no-head" in err
    head = tmp_path / "head"
    head.mkdir()
    (head / "admin.key").write_text("csk_from_state_dir\n")
    monkeypatch.setenv("COMPUTESWARM_HEAD__STATE_DIR", str(head))
    code, _, err = run_cli(monkeypatch, capsys, "sellers", "list", "--json")
    assert code == 0, err
    assert recorded.made == [("http://127.0.0.1:18443", "csk_from_state_dir")]
