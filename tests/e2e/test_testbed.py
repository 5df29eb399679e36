"""The testbed itself: hosts, NAT, coexisting runs, teardown even when interrupted."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from computeswarm.tunnel import netns
from computeswarm.tunnel.testbed import Testbed, clean

CHILD = """
import json, sys, time
from computeswarm.tunnel.testbed import Testbed
bed = Testbed.create(["a", "b"], nat_hosts=["c"])
p = bed.spawn("a", ["sleep", "300"])
print(json.dumps({"run": bed.run_id, "namespaces": bed.namespaces, "pid": p.pid}), flush=True)
time.sleep(300)
"""


def test_hosts_reach_each_other_and_nat_hides_the_lan():
    with Testbed.create(["a"], nat_hosts=["c"]) as bed:
        a, c = bed.host("a"), bed.host("c")
        assert a.run(["ping", "-c1", "-W2", bed.nat_public_ip]).returncode == 0
        assert c.run(["ping", "-c1", "-W2", a.ip]).returncode == 0  # out through the NAT
        assert a.run(["ping", "-c1", "-W1", c.ip], check=False).returncode != 0  # not in
        assert bed.host("lan").behind_nat is False and c.behind_nat
    assert not any(netns.exists(ns) for ns in bed.namespaces)


def test_two_runs_coexist():
    with Testbed.create(["a"]) as one, Testbed.create(["a"]) as two:
        assert one.run_id != two.run_id
        assert not set(one.namespaces) & set(two.namespaces)
        assert one.iface_name("x") != two.iface_name("x")
        assert one.host("a").run(["true"]).returncode == 0
        assert two.host("a").run(["true"]).returncode == 0


def test_sigterm_tears_the_testbed_down():
    child, info = _start_child()
    child.send_signal(signal.SIGTERM)
    child.wait(30)
    assert not any(netns.exists(ns) for ns in info["namespaces"])
    assert not _alive(info["pid"])


def test_clean_removes_what_a_killed_run_left_behind():
    child, info = _start_child()
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    assert all(netns.exists(ns) for ns in info["namespaces"])  # SIGKILL skips all cleanup
    removed = clean()
    assert info["run"] in removed
    assert not any(netns.exists(ns) for ns in info["namespaces"])
    assert not _alive(info["pid"])


def test_clean_leaves_live_runs_alone():
    with Testbed.create(["a"]) as bed:
        assert bed.run_id not in clean()
        assert all(netns.exists(ns) for ns in bed.namespaces)


def _start_child() -> tuple[subprocess.Popen, dict]:
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    line = child.stdout.readline()
    assert line, "child failed to build its testbed"
    return child, json.loads(line)


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie) after a short grace."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return False
        except OSError:
            return False
        time.sleep(0.1)
    return True
