"""The lease sandbox's view, as argv: what is bound, how, and what stays out."""

from __future__ import annotations

import sys
from pathlib import Path

from computeswarm.cluster.nodes.sandbox import HOME, Sandbox, lease_uid


def box(tmp_path: Path, **kw) -> Sandbox:
    return Sandbox(lease_uid(20000), tmp_path / "scratch", **kw)


def pairs(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_the_view_is_an_allow_list_with_only_scratch_and_run_folders_writable(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    upload = tmp_path / "upload"
    upload.mkdir()
    argv = box(tmp_path, read_only=(str(upload),), read_write=(str(run),)).argv(["ray", "start"])
    # The scratch is /tmp, bound first: lease folders under the host's /tmp stay visible.
    assert pairs(argv, "--bind") == [str(tmp_path / "scratch"), str(run)]
    read_only = pairs(argv, "--ro-bind")
    assert "/usr" in read_only and "/etc" in read_only and str(upload) in read_only
    assert sys.prefix in read_only
    for secret in ("/", "/root", "/run", "/var", "/tmp", "/home"):
        assert secret not in read_only and secret not in pairs(argv, "--bind")
    assert argv[argv.index(str(tmp_path / "scratch")) + 1] == HOME
    assert argv.index(str(tmp_path / "scratch")) < argv.index(str(upload))


def test_the_command_runs_as_the_lease_uid_with_no_capabilities(tmp_path):
    argv = box(tmp_path).argv(["ray", "start"])
    drop = argv[argv.index("setpriv") :]
    assert f"--reuid={lease_uid(20000)}" in drop and "--bounding-set=-all" in drop
    assert "--no-new-privs" in drop and drop[-2:] == ["ray", "start"]
    assert {"--unshare-pid", "--unshare-ipc"} <= set(argv[: argv.index("setpriv")])


def test_the_environment_keeps_ray_settings_and_drops_the_coordinators(tmp_path):
    env = box(tmp_path).env(
        {
            "RAY_AUTH_MODE": "token",
            "COMPUTESWARM_HEAD__DATABASE_URL": "postgres://u:pw@db",
            "X": "1",
        }
    )
    assert env["RAY_AUTH_MODE"] == "token" and env["HOME"] == HOME
    assert "COMPUTESWARM_HEAD__DATABASE_URL" not in env and "X" not in env


def test_missing_parents_are_made_traversable(tmp_path):
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    argv = box(tmp_path, read_only=(str(deep),)).argv(["true"])
    dirs = pairs(argv, "--dir")
    assert str(tmp_path / "a") in dirs
    assert dirs.index(str(tmp_path / "a")) > dirs.index(str(tmp_path))


def test_a_private_checkout_is_made_traversable_and_nothing_more(tmp_path):
    """Found by a fresh-clone CI run: a checkout under a 0700 folder (mktemp -d) left the
    lease uid unable to reach the venv bound into its view."""
    from computeswarm.cluster.nodes.sandbox import traversable

    above, private = tmp_path / "above", tmp_path / "above" / "ci"
    private.mkdir(parents=True)
    above.chmod(0o700)
    private.chmod(0o700)
    traversable((str(private),))
    assert private.stat().st_mode & 0o777 == 0o701
    assert above.stat().st_mode & 0o777 == 0o700  # parents are bwrap's own in the view
