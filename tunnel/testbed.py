"""A multi-host testbed on one machine: network namespaces on an underlay bridge.

    cs-<run>-ul        the underlay switch: bridge br0, one veth port per host
    cs-<run>-<host>    a public host: eth0 = 198.18.<n>.<i>/24 on the underlay
    cs-<run>-nat       a NAT router: WAN eth0 on the underlay, LAN bridge brlan with
                       198.19.<n>.1/24, nftables masquerade, no unsolicited inbound
    cs-<run>-<host>    a host behind the NAT: eth0 on brlan, default route via the router
    cs-<run>-lan       the "seller LAN" host beside NATed sellers (a printer, a NAS...)

Every name carries the run id, so two runs coexist. Each run records what it made in
/run/computeswarm/testbed/<run>.json; `destroy()` (also on SIGTERM and at exit) removes it
all, and `clean()` removes what crashed runs left behind.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from computeswarm.tunnel import netns
from computeswarm.tunnel.backends.userspace import SOCKET_DIR

PREFIX = "cs-"
REGISTRY_DIR = Path("/run/computeswarm/testbed")
UNDERLAY_BASE = "198.18"  # RFC 2544 benchmarking range: never a real destination
LAN_BASE = "198.19"
KILL_GRACE_S = 3.0


@dataclass
class Host:
    """One machine of the testbed."""

    name: str
    netns: str
    ip: str  # its address on its own network (underlay or NAT LAN)
    behind_nat: bool = False
    iface: str = "eth0"

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 30,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return netns.run(argv, netns=self.netns, check=check, timeout=timeout, input=input)


@dataclass
class Testbed:
    __test__ = False  # not a pytest test class, despite the name

    run_id: str
    hosts: dict[str, Host] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen] = field(default_factory=list)
    ifaces: list[str] = field(default_factory=list)
    nat_public_ip: str | None = None
    host_ip: str | None = None
    detached: bool = False
    _destroyed: bool = False

    # -- creation -------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        hosts: Sequence[str],
        *,
        nat_hosts: Sequence[str] = (),
        seller_lan: bool = False,
        run_id: str | None = None,
        attach_host: bool = False,
    ) -> Testbed:
        """Build the testbed; on any failure, everything made so far is removed.

        `attach_host` plugs this machine's own namespace into the underlay (as a buyer's
        laptop on the internet would be), so the CLI here reaches public ports there.
        """
        if not netns.is_root():
            raise PermissionError("the testbed needs root (network namespaces)")
        names = [*hosts, *nat_hosts]
        if len(set(names)) != len(names) or {"ul", "nat", "lan"} & set(names):
            raise ValueError("host names must be unique and not ul/nat/lan")
        bed = cls(run_id or secrets.token_hex(3))
        bed._register_cleanup()
        try:
            bed._build(hosts, nat_hosts, seller_lan or bool(nat_hosts))
            if attach_host:
                bed._attach_host()
        except BaseException:
            bed.destroy()
            raise
        return bed

    def _build(self, hosts: Sequence[str], nat_hosts: Sequence[str], with_lan: bool) -> None:
        subnet = _subnet_index(self.run_id)
        underlay = f"{UNDERLAY_BASE}.{subnet}"
        switch = self._namespace("ul")
        netns.run(["ip", "link", "add", "br0", "type", "bridge"], netns=switch)
        netns.run(["ip", "link", "set", "br0", "up"], netns=switch)
        for index, name in enumerate(hosts, start=1):
            ns = self._namespace(name)
            self._wire(ns, switch, "br0", f"p{index}", f"{underlay}.{index}/24")
            self.hosts[name] = Host(name, ns, f"{underlay}.{index}")
        if not (nat_hosts or with_lan):
            return
        router = self._namespace("nat")
        self.nat_public_ip = f"{underlay}.254"
        self._wire(router, switch, "br0", "pnat", f"{self.nat_public_ip}/24")
        lan = f"{LAN_BASE}.{subnet}"
        netns.run(["ip", "link", "add", "brlan", "type", "bridge"], netns=router)
        netns.run(["ip", "addr", "add", f"{lan}.1/24", "dev", "brlan"], netns=router)
        netns.run(["ip", "link", "set", "brlan", "up"], netns=router)
        netns.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], netns=router)
        netns.run(["nft", "-f", "-"], netns=router, input=_nat_rules())
        members = [*nat_hosts, *(["lan"] if with_lan else [])]
        for index, name in enumerate(members, start=2):
            ns = self._namespace(name)
            ip = f"{lan}.{200 if name == 'lan' else index}"
            self._wire(ns, router, "brlan", f"l{index}", f"{ip}/24")
            netns.run(["ip", "route", "add", "default", "via", f"{lan}.1"], netns=ns)
            self.hosts[name] = Host(name, ns, ip, behind_nat=name != "lan")

    def _attach_host(self) -> None:
        name = f"cs{self.run_id}h"
        switch = f"{PREFIX}{self.run_id}-ul"
        netns.run(
            ["ip", "link", "add", name, "type", "veth", "peer", "name", "phost", "netns", switch]
        )
        netns.run(["ip", "link", "set", "phost", "master", "br0", "up"], netns=switch)
        self.host_ip = f"{UNDERLAY_BASE}.{_subnet_index(self.run_id)}.250"
        netns.run(["ip", "addr", "add", f"{self.host_ip}/24", "dev", name])
        netns.run(["ip", "link", "set", name, "up"])

    def detach(self) -> None:
        """Keep the testbed after this process exits (`computeswarm up --local`); it is
        removed by `down --local` or `testbed clean --all`."""
        self.detached = True
        with contextlib.suppress(ValueError):
            atexit.unregister(self.destroy)
        self._save()

    def _namespace(self, name: str) -> str:
        ns = f"{PREFIX}{self.run_id}-{name}"
        netns.create(ns)
        self.namespaces.append(ns)
        self._save()
        return ns

    def _wire(self, ns: str, switch_ns: str, bridge: str, port: str, address: str) -> None:
        """A veth from `ns` (as eth0) to a port of `bridge` in `switch_ns`."""
        netns.run(
            ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", switch_ns],
            netns=ns,
        )
        netns.run(["ip", "link", "set", port, "master", bridge, "up"], netns=switch_ns)
        netns.run(["ip", "addr", "add", address, "dev", "eth0"], netns=ns)
        netns.run(["ip", "link", "set", "eth0", "up"], netns=ns)

    # -- use ------------------------------------------------------------------------------

    def host(self, name: str) -> Host:
        return self.hosts[name]

    def iface_name(self, role: str) -> str:
        """A WireGuard interface name unique on the machine (wireguard-go's sockets are)."""
        name = f"cs{self.run_id}{role}"
        if len(name) > 15:
            raise ValueError(f"role {role!r} too long for an interface name")
        self.ifaces.append(name)
        self._save()
        return name

    def workload_namespace(self, host: str) -> str:
        """An empty namespace for a seller's fenced workload (gets the WireGuard link)."""
        return self._namespace(f"{host}-w")

    def spawn(self, host: str, argv: Sequence[str], *, log: Path | None = None) -> subprocess.Popen:
        """Start a process in `host`'s namespace; it is killed when the testbed goes."""
        process = netns.popen(
            argv, netns=self.host(host).netns if host in self.hosts else host, log=log
        )
        self.processes.append(process)
        self._save()
        return process

    # -- teardown -------------------------------------------------------------------------

    def destroy(self) -> None:
        """Kill every process inside the testbed, delete its namespaces. Idempotent."""
        if self._destroyed:
            return
        self._destroyed = True
        for process in self.processes:
            _stop(process.pid)
            with contextlib.suppress(Exception):
                process.wait(1)
        _remove_run(self.run_id, self.namespaces, self.ifaces)
        with contextlib.suppress(ValueError):
            atexit.unregister(self.destroy)

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def _register_cleanup(self) -> None:
        atexit.register(self.destroy)
        # SIGTERM would skip `finally` blocks and atexit; make it an exception instead.
        with contextlib.suppress(ValueError):  # not the main thread: leave handlers alone
            if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
                signal.signal(signal.SIGTERM, _raise_system_exit)

    def _save(self) -> None:
        REGISTRY_DIR.mkdir(parents=True, exist_ok=True)
        record = {
            "run_id": self.run_id,
            "owner_pid": os.getpid(),
            "owner_start": _start_time(os.getpid()),
            "namespaces": self.namespaces,
            "ifaces": self.ifaces,
            "pids": [[p.pid, _start_time(p.pid)] for p in self.processes],
            "detached": self.detached,
        }
        tmp = REGISTRY_DIR / f"{self.run_id}.json.tmp"
        tmp.write_text(json.dumps(record))
        tmp.replace(REGISTRY_DIR / f"{self.run_id}.json")


def clean(*, include_live: bool = False, run_id: str | None = None) -> list[str]:
    """Remove what crashed runs left: their processes, namespaces, sockets, records.

    A run whose owner process is alive is left alone unless `include_live`. Namespaces
    named like ours that no record claims are removed too. Returns the run ids removed.
    """
    removed = []
    claimed: set[str] = set()
    for path in sorted(REGISTRY_DIR.glob("*.json")) if REGISTRY_DIR.is_dir() else []:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            continue
        if run_id is not None and record["run_id"] != run_id:
            claimed.update(record["namespaces"])
            continue
        owner_alive = _start_time(record["owner_pid"]) == record.get("owner_start")
        if (owner_alive or record.get("detached")) and not include_live:
            claimed.update(record["namespaces"])
            continue
        for pid, start in record.get("pids", []):
            if _start_time(pid) == start:  # the same process, not a reused PID
                _stop(pid)
        _remove_run(record["run_id"], record["namespaces"], record.get("ifaces", []))
        removed.append(record["run_id"])
    for ns in netns.list_all() if run_id is None else []:
        if _looks_like_ours(ns) and ns not in claimed:
            _remove_namespaces([ns])
            run = ns[len(PREFIX) :].split("-")[0]
            if run not in removed:
                removed.append(run)
    return removed


def _remove_run(run_id: str, namespaces: list[str], ifaces: list[str]) -> None:
    _remove_namespaces(namespaces)
    for iface in ifaces:
        (SOCKET_DIR / f"{iface}.sock").unlink(missing_ok=True)
    (REGISTRY_DIR / f"{run_id}.json").unlink(missing_ok=True)


def _remove_namespaces(namespaces: list[str]) -> None:
    """Kill whatever runs inside (by PID, TERM then KILL), then delete the namespaces."""
    present = [ns for ns in namespaces if netns.exists(ns)]
    pids = {pid for ns in present for pid in netns.pids_in(ns)} - {os.getpid()}
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE_S
    while pids and time.monotonic() < deadline:
        pids = {pid for pid in pids if _alive(pid)}
        time.sleep(0.05)
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    for ns in reversed(present):
        netns.delete(ns)


def _stop(pid: int) -> None:
    """TERM a process group we started (each runs in its own session), then KILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + KILL_GRACE_S
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.05)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _start_time(pid: int) -> int | None:
    """A process's start time in clock ticks: with the PID, it names one process for good."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _looks_like_ours(ns: str) -> bool:
    parts = ns[len(PREFIX) :].split("-") if ns.startswith(PREFIX) else []
    return len(parts) >= 2 and len(parts[0]) == 6 and all(c in "0123456789abcdef" for c in parts[0])


def _subnet_index(run_id: str) -> int:
    return 1 + int(hashlib.sha256(run_id.encode()).hexdigest(), 16) % 250


def _nat_rules() -> str:
    """Masquerade out of the WAN side; nothing unsolicited comes in (a home router)."""
    return """table ip cs_nat {
    chain postrouting {
        type nat hook postrouting priority srcnat;
        oifname "eth0" masquerade
    }
    chain forward {
        type filter hook forward priority filter; policy accept;
        iifname "eth0" ct state established,related accept
        iifname "eth0" drop
    }
}
"""


def _raise_system_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)
