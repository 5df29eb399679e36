"""What a benchmark's local swarm left behind: shared by the benches that bring one up."""

from __future__ import annotations

import os
import time


def swarm_leftovers(local_dir: str, run_id: str | None, leases: list[str]) -> list[str]:
    """What of this run survived `down()`: namespaces, then processes (every process the
    swarm started inherits COMPUTESWARM_LOCAL_DIR; wireguard-go is named by the run id)."""
    from computeswarm.tunnel import netns

    needles = [local_dir, *leases] + ([f"cs{run_id}", f"cs-{run_id}"] if run_id else [])
    deadline = time.monotonic() + 10  # processes signalled by down() may take a moment
    while True:
        namespaces = [ns for ns in netns.list_all() if run_id and run_id in ns]
        processes = processes_with(needles)
        if not (namespaces or processes) or time.monotonic() > deadline:
            return [f"namespace {ns}" for ns in namespaces] + [f"process {p}" for p in processes]
        time.sleep(0.5)


def processes_with(needles: list[str]) -> list[str]:
    """Live processes (not zombies, not this one) whose command line or environment names
    one of `needles`: as `PID command`."""
    if not needles:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read().decode(errors="replace")
        except OSError:
            continue
        if any(n in cmdline or n in environ for n in needles):
            found.append(f"{entry} {cmdline[:160]}")
    return found
