"""Kernel WireGuard: the fastest backend, where the kernel has the wireguard module."""

from __future__ import annotations

import os
import shutil

from computeswarm.tunnel import netns
from computeswarm.tunnel.backends.base import Capability, TunnelSpec
from computeswarm.tunnel.backends.wireguard import WireGuardBackend, WireGuardTunnel
from computeswarm.tunnel.errors import InterfaceNameError


class KernelBackend(WireGuardBackend):
    name = "kernel"

    def check(self) -> Capability:
        if not netns.is_root():
            return Capability(False, "needs root (CAP_NET_ADMIN) to create interfaces")
        if not shutil.which("wg"):
            return Capability(False, "`wg` not found: apt-get install wireguard-tools")
        return _probe_kernel_module()

    def create_link(self, spec: TunnelSpec) -> WireGuardTunnel:
        done = netns.run(["ip", "link", "show", spec.iface], netns=spec.netns, check=False)
        if done.returncode == 0:
            raise InterfaceNameError(f"interface {spec.iface} already exists")
        netns.run(["ip", "link", "add", spec.iface, "type", "wireguard"], netns=spec.netns)
        return WireGuardTunnel(spec)


def _probe_kernel_module() -> Capability:
    """Try to create a wireguard link in a throwaway namespace: the only reliable test."""
    probe = f"cs-probe-{os.getpid()}"
    try:
        netns.create(probe)
        done = netns.run(
            ["ip", "link", "add", "wgprobe", "type", "wireguard"], netns=probe, check=False
        )
    finally:
        netns.delete(probe)
    if done.returncode == 0:
        return Capability(True, "kernel module present")
    return Capability(False, f"the kernel has no WireGuard module ({done.stderr.strip()})")
