"""Userspace WireGuard (wireguard-go): works wherever /dev/net/tun does, no kernel module."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from computeswarm.errors import CommandFailed
from computeswarm.tunnel import netns
from computeswarm.tunnel.backends.base import Capability, TunnelSpec
from computeswarm.tunnel.backends.wireguard import WireGuardBackend, WireGuardTunnel
from computeswarm.tunnel.errors import InterfaceNameError

SOCKET_DIR = Path("/var/run/wireguard")
START_TIMEOUT_S = 10.0
STOP_GRACE_S = 3.0


class UserspaceBackend(WireGuardBackend):
    name = "userspace"

    def check(self) -> Capability:
        if not netns.is_root():
            return Capability(False, "needs root (CAP_NET_ADMIN) to create TUN interfaces")
        for binary, package in (("wireguard-go", "wireguard-go"), ("wg", "wireguard-tools")):
            if not shutil.which(binary):
                return Capability(False, f"`{binary}` not found: apt-get install {package}")
        if not Path("/dev/net/tun").exists():
            return Capability(False, "/dev/net/tun is missing (no TUN support in this container)")
        return Capability(True, "wireguard-go and /dev/net/tun present")

    def create_link(self, spec: TunnelSpec) -> WireGuardTunnel:
        spec.state_dir.mkdir(parents=True, exist_ok=True)
        pid_file = spec.state_dir / f"wireguard-go-{spec.iface}.pid"
        stop_leftover(pid_file, spec.iface)
        claim_socket(spec.iface)
        log = spec.state_dir / f"wireguard-go-{spec.iface}.log"
        process = netns.popen(["wireguard-go", "-f", spec.iface], netns=spec.netns, log=log)
        pid_file.write_text(str(process.pid))
        tunnel = UserspaceTunnel(spec, process)
        try:
            _wait_for_socket(spec.iface, process, log)
        except BaseException:
            tunnel.down()
            raise
        return tunnel


class UserspaceTunnel(WireGuardTunnel):
    def _stop_process(self) -> None:
        # Deleting the link makes wireguard-go exit by itself; if it does not, TERM, then KILL.
        if self.process is None:
            return
        stop_process_group(self.process, STOP_GRACE_S)
        (SOCKET_DIR / f"{self.spec.iface}.sock").unlink(missing_ok=True)
        (self.spec.state_dir / f"wireguard-go-{self.spec.iface}.pid").unlink(missing_ok=True)


def stop_leftover(pid_file: Path, iface: str) -> None:
    """Our own wireguard-go for `iface`, left running by a crash of the process that started
    it (it runs in a session of its own): stop it, so a restart can take the name again.
    Only the process recorded in `pid_file`, and only if it is still that wireguard-go."""
    try:
        pid = int(pid_file.read_text())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return
    if b"wireguard-go" in argv[0] and iface.encode() in argv:
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # a zombie until its parent (gone) is replaced by init
            try:
                if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            except OSError:
                break
    pid_file.unlink(missing_ok=True)


def claim_socket(iface: str) -> None:
    """Refuse a name whose control socket is live anywhere on the machine; drop stale ones."""
    path = SOCKET_DIR / f"{iface}.sock"
    if not path.exists():
        return
    if _socket_alive(path):
        raise InterfaceNameError(
            f"interface {iface} is already running on this machine ({path} answers); "
            "WireGuard userspace interface names must be unique across all namespaces"
        )
    path.unlink(missing_ok=True)


def stop_process_group(process: subprocess.Popen, grace: float) -> None:
    """SIGTERM a process's group, wait `grace`, SIGKILL what is left, and reap it."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if process.poll() is not None:
            return
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_for_socket(iface: str, process: subprocess.Popen, log: Path) -> None:
    path = SOCKET_DIR / f"{iface}.sock"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
            raise CommandFailed(["wireguard-go", "-f", iface], process.returncode, tail)
        if path.exists() and _socket_alive(path):
            return
        time.sleep(0.02)
    raise CommandFailed(
        ["wireguard-go", "-f", iface], -1, f"no control socket {path} after {START_TIMEOUT_S:g} s"
    )


def _socket_alive(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False
