"""Prometheus on the head host (`computeswarm up --local --metrics`): the config from
`configs/prometheus.yml` with this swarm's coordinator, admin key and lease targets
filled in, and Debian's `prometheus` started in the hub's namespace (where the leases'
metrics ports are reachable), in a session of its own (stopped by PID)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from computeswarm.cluster.prometheus import TARGETS_FILE
from computeswarm.errors import UserError

TEMPLATE = Path(__file__).resolve().parents[2] / "configs" / "prometheus.yml"


def render(coordinator: str, key_file: Path, state_dir: Path, scrape_s: float = 5.0) -> str:
    """The config for a coordinator at `coordinator` (host:port) with that state dir."""
    config = yaml.safe_load(TEMPLATE.read_text())
    config["global"]["scrape_interval"] = f"{scrape_s:g}s"
    head, ray = config["scrape_configs"]
    head["authorization"]["credentials_file"] = str(key_file)
    head["static_configs"][0]["targets"] = [coordinator]
    ray["file_sd_configs"][0]["files"] = [str(state_dir / "prometheus" / TARGETS_FILE)]
    return yaml.safe_dump(config, sort_keys=False)


def start(
    folder: Path,
    coordinator: str,
    admin_key: str,
    state_dir: Path,
    listen: str,
    netns: str | None = None,
    scrape_s: float = 5.0,
) -> subprocess.Popen:
    """Prometheus listening on `listen` (host:port), its data and log under `folder`."""
    from computeswarm.cluster.local.swarm import _spawn  # the local swarm's own launcher

    binary = shutil.which("prometheus")
    if binary is None:
        raise UserError("prometheus not found (apt-get install prometheus)")
    folder.mkdir(parents=True, exist_ok=True)
    key_file = folder / "admin.key"
    key_file.touch(mode=0o600)
    key_file.write_text(admin_key)
    (folder / "prometheus.yml").write_text(render(coordinator, key_file, state_dir, scrape_s))
    argv = [
        binary,
        f"--config.file={folder / 'prometheus.yml'}",
        f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address={listen}",
        "--storage.tsdb.retention.time=2d",
    ]
    return _spawn(netns, argv, folder / "prometheus.log", {})
