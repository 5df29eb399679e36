"""A hostile buyer's job: tries to break out of its sandbox, from its driver (on a seller)
and from a task pinned to the lease head (on the coordinator's host), and reports what it
got. `SECRETS` names files to steal, `TARGETS` host:port pairs off the overlay to reach."""

import ctypes
import json
import os
import socket

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

CLONE_NEWNET = 0x40000000


def attempt() -> dict:
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
    out = {
        "uid": os.getuid(),
        "euid": os.geteuid(),
        "cap_eff": status["CapEff"].strip(),
        "cap_bnd": status["CapBnd"].strip(),
        "no_new_privs": status.get("NoNewPrivs", "").strip(),
        "read": {},
        "reach": {},
    }
    for path in json.loads(os.environ["SECRETS"]):
        try:
            with open(path, "rb") as f:
                out["read"][path] = f"READ {len(f.read())} bytes"
        except OSError as e:
            out["read"][path] = type(e).__name__
    for host, port in json.loads(os.environ["TARGETS"]):
        try:
            socket.create_connection((host, port), timeout=2).close()
            out["reach"][f"{host}:{port}"] = "open"
        except OSError as e:
            out["reach"][f"{host}:{port}"] = type(e).__name__
    # Re-enter another network namespace (the host's): needs CAP_SYS_ADMIN there.
    libc = ctypes.CDLL(None, use_errno=True)
    entered = []
    for candidate in ("/proc/1/ns/net", "/run/netns", "/var/run/netns"):
        paths = [candidate]
        if os.path.isdir(candidate):
            paths = [os.path.join(candidate, n) for n in os.listdir(candidate)]
        for path in paths:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            if libc.setns(fd, CLONE_NEWNET) == 0:
                entered.append(path)
            os.close(fd)
    out["setns"] = entered
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()
        out["raw_socket"] = "open"
    except OSError as e:
        out["raw_socket"] = type(e).__name__
    out["root_listing"] = sorted(os.listdir("/"))
    return out


@ray.remote(num_cpus=0)
def pinned() -> dict:
    return attempt()


if __name__ == "__main__":
    ray.init()
    head = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and not n["Resources"].get("GPU"))
    on_head = pinned.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False)
    ).remote()
    report = {"driver": attempt(), "head_task": ray.get(on_head, timeout=120)}
    print("BREAKOUT " + json.dumps(report), flush=True)
