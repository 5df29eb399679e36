"""Benchmark: LoRA step time 1 -> 2 sellers, bytes each optimizer step syncs, shaped underlay.

Builds a lease the way the swarm does, on testbed hosts joined by real WireGuard
(wireguard-go): a hub and two sellers; a Ray head on the hub's overlay address
(`ray_nodes.head_argv`, the market's WAN `--system-config`) and one Ray worker node per
seller inside its fenced workload namespace (`ray_nodes.worker_argv`: 1 CPU, 1 simulated
GPU), the hub forwarding between the two sellers as for a lease group. Every job runs the
production driver, `computeswarm.jobs.train.run.main`, in seller s1's workload namespace
(where a lease's driver runs): Ray Train's `TorchTrainer` (gloo) around
`train_lora_worker`, with the tiny GPT-2 of `make_tiny_model` and `synthetic_addition`
data. Each of `--runs` rounds (3) runs three jobs:

    1 worker, full sync        one window: the scaling baseline
    2 workers, full sync       DeepSpeed ZeRO-2, gradients reduced every optimizer step;
                               two windows, one with every host's underlay uplink shaped
                               (`tc ... tbf rate --rate`), one unshaped; which comes first
                               alternates by round
    2 workers, low bandwidth   `low_bandwidth: {sync_every: 8}`: adapters averaged every 8

A window is `--window` optimizer steps (32), with 8 steps before, between and after windows
(so start-up, the shaping change and the final evaluation/checkpoint stay out; evaluation
and checkpoint run only at the end). Figures are medians over the rounds, and every ratio
is taken within a round, then the median:

1. Step time: the median of the per-step times rank 0 prints (`step N loss X (T s)`, to
   10 ms), and the window's wall time per step, from the moments its first and last step
   appear in the run's `steps.log` (polled every 5 ms). Scaling efficiency = 2-worker
   throughput / (2 x 1-worker throughput) = t(1 worker) / t(2 workers), the micro-batch per
   worker being the same.
2. Bytes per optimizer step, per worker: the analytical `sync_bytes_per_step` the run
   reports, and measured ones: each seller's WireGuard interface tx bytes in its workload
   namespace (`/sys/class/net/<wg>/statistics/tx_bytes`: every IP packet the seller sent
   into the overlay, headers and ACKs included), split by nftables counters on that
   interface into Ray's own traffic (TCP to or from Ray's port block, `--port-base` + 99)
   and the rest: torch.distributed (gloo's pairs and the TCPStore, on ephemeral ports).
   Read when `steps.log` shows the window's first and last step, averaged over the sellers.
3. 2-worker full-sync step time with the underlay shaped vs unshaped. A 2-second iperf3
   over the overlay (s1 -> hub -> s2) with and without the shaping is printed first: if
   the unshaped overlay is not much faster than `--rate`, the shaping cannot bite.

This machine has no GPU: "GPUs" are Ray resources, the workers train on CPU, one core
each, and every testbed host shares this machine's cores, so step times measure CPU
contention as much as the network; read the ratios as this box's, not a GPU cluster's.

The driver is attached to its seller's Ray node by IP: every node runs on this one
machine, and Ray would attach it to the head's. Each seller node is started with
`GLOO_SOCKET_IFNAME=<its WireGuard interface>`, as a seller's agent must: gloo otherwise
takes its address from the host name, loopback inside a workload namespace.

Needs root, wireguard-go, nft, tc and iperf3. Everything lives in one temporary folder and
the testbed's namespaces; the Ray nodes are stopped by session and the testbed removed
whatever happens, then the run checks no process or namespace of it is left. `make bench`
runs it; CI does not:

    .venv/bin/python -m computeswarm.tests.bench.training [--runs N] [--window N] [--rate R]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from computeswarm.tests.bench.leftovers import processes_with
from computeswarm.tunnel import netns

SYNC_EVERY = 8
IPERF_PORT = 5201
COUNTER_TABLE = "cs_bench"
# Rank 0's line per optimizer step, as Ray forwards it to the driver.
STEP_LINE = re.compile(r"step (\d+) loss \S+ \(([\d.]+) s\)")
# The production driver, attached to its seller's Ray node: every node of the testbed runs
# on this one machine, and Ray would otherwise attach a driver to the head's node.
DRIVER = """
import sys, ray
ray.init(address=sys.argv[1], _node_ip_address=sys.argv[2])
from computeswarm.jobs.train.run import main
sys.exit(main(["run", sys.argv[3]]))
"""
# Marks every process this run starts (Ray's workers inherit it from their node).
MARKER_ENV = "COMPUTESWARM_BENCH_TRAINING"


@dataclass
class Window:
    """One measurement window of a training job."""

    step_s: float  # median of rank 0's printed step times in the window
    window_step_s: float  # the window's wall time per step (steps.log)
    sync_bytes: float  # the analytical sync_bytes_per_step the run reported
    overlay_tx: float  # measured per worker per step: all of the seller's overlay tx
    dist_tx: float  # of which outside Ray's ports (torch.distributed)
    ray_tx: float  # of which Ray's own ports
    steps: tuple[int, int]  # the steps the window ran between


ONE = "1 worker, full sync"
FULL = "2 workers, full sync"
LOW = "2 workers, low bandwidth"
SHAPED = "2 workers, full sync, shaped"
LOW_BANDWIDTH = {"sync_every": SYNC_EVERY}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--window", type=int, default=32, help="optimizer steps per window")
    parser.add_argument("--micro-batch", type=int, default=8, help="samples per worker-step")
    parser.add_argument("--rate", default="100mbit", help="underlay shaping (tc tbf rate)")
    parser.add_argument("--port-base", type=int, default=20000, help="Ray's 100-port block")
    args = parser.parse_args()
    if args.window % SYNC_EVERY or args.window < SYNC_EVERY:
        parser.error(f"--window must be a multiple of {SYNC_EVERY}")
    if not 1024 <= args.port_base <= 32768 - 100:
        parser.error("--port-base must keep Ray's block below the ephemeral ports (32768)")
    if not netns.is_root():
        sys.exit("this benchmark needs root (network namespaces, nft, tc)")

    from computeswarm.cluster.nodes.ray_nodes import become_subreaper
    from computeswarm.jobs.train.data import synthetic_addition
    from computeswarm.jobs.train.tiny import make_tiny_model
    from computeswarm.tunnel.backends import get_backend
    from computeswarm.tunnel.testbed_overlay import TestbedOverlay

    began = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="csbt-"))  # short: Ray's socket paths live under it
    os.environ[MARKER_ENV] = str(root)
    become_subreaper()  # Ray's orphaned workers are reaped here, not left as zombies
    make_tiny_model(root / "work" / "model", "gpt2")
    synthetic_addition(root / "work" / "data.jsonl")
    windows: dict[str, list[Window]] = {label: [] for label in (ONE, FULL, LOW, SHAPED)}
    iperf: dict[str, float] = {}
    run_id = None
    ok = False
    try:
        with TestbedOverlay.start(get_backend("userspace"), ["s1", "s2"]) as lab:
            run_id = lab.bed.run_id
            s1, s2 = lab.spokes["s1"], lab.spokes["s2"]
            lab.hub.set_groups({"lease": frozenset({s1.node.address, s2.node.address})})
            lease = Lease(lab, root, args)
            try:
                lease.start()
                iperf = lease.iperf()
                setup_s = time.monotonic() - began
                for i in range(args.runs):
                    # Shaped and unshaped are two windows of one job; which comes first
                    # alternates, so neither always gets the later, warmer half.
                    sync = [(FULL, False), (SHAPED, True)][:: 1 if i % 2 == 0 else -1]
                    for job, phases in (
                        ({"workers": 1}, [(ONE, False)]),
                        ({"workers": 2}, sync),
                        ({"workers": 2, "low_bandwidth": LOW_BANDWIDTH}, [(LOW, False)]),
                    ):
                        for label, window in lease.fit(job, phases, i).items():
                            windows[label].append(window)
                            _say(
                                f"round {i + 1}/{args.runs}, {label}: step {window.step_s:.3f} s,"
                                f" window {window.window_step_s:.3f} s/step, torch.distributed "
                                f"{window.dist_tx / 1e3:.1f} kB/step/worker"
                            )
            finally:
                lease.stop()
        ok = True
    finally:
        leftovers = _leftovers(root, run_id)
        if ok and not leftovers:
            shutil.rmtree(root, ignore_errors=True)
        else:
            for leftover in leftovers:
                _say(f"LEFTOVER: {leftover}")
            _say(f"kept the run's files for a look: {root}")
    _report(windows, iperf, args, setup_s, time.monotonic() - began)
    if leftovers:
        sys.exit(1)
    print("leftovers: none (no namespace, no process of this run)")


class Lease:
    """A lease's Ray cluster on the testbed: head on the hub, a node per seller."""

    def __init__(self, lab, root: Path, args: argparse.Namespace):
        self.lab = lab
        self.root = root
        self.args = args
        self.port_base = port_base = args.port_base
        self.token = root / "token"
        self.nodes: dict[str, subprocess.Popen] = {}
        self.sellers = {name: lab.workload_netns(name) for name in ("s1", "s2")}
        self.wg = {name: spoke.placement.iface for name, spoke in lab.spokes.items()}
        self.head_address = f"{lab.hub.node.address}:{port_base}"
        self.driver_ip = str(lab.spokes["s1"].node.address)

    def start(self) -> None:
        from computeswarm.cluster.config import MarketConfig
        from computeswarm.cluster.leases.heads import HEAD_OBJECT_STORE_BYTES
        from computeswarm.cluster.nodes.ray_nodes import PortBlock, head_argv, worker_argv

        self.token.write_text(os.urandom(16).hex())
        self.token.chmod(0o600)
        ports = PortBlock(self.port_base)
        self._start_node(
            "hub",
            self.lab.bed.host("hub").netns,
            head_argv(
                ip=str(self.lab.hub.node.address),
                ports=ports,
                temp_dir=self.root / "ray" / "hub",
                object_store_bytes=HEAD_OBJECT_STORE_BYTES,
                system_config=MarketConfig().ray_system_config,
            ),
        )
        self._wait_ready("hub")
        for name, ns in self.sellers.items():
            argv = worker_argv(
                head=self.head_address,
                ip=str(self.lab.spokes[name].node.address),
                ports=ports,
                temp_dir=self.root / "ray" / name,
                cpus=1,
                gpus=1,
                memory_bytes=3 * 2**30,
                object_store_bytes=128 * 2**20,
                resources={},
                labels={"cs-gpu": "RTX4090", "cs-vram-gb": "24"},
            )
            # gloo picks its address from the hostname, which is loopback in a workload
            # namespace: point it at the WireGuard interface (Ray's workers inherit this).
            self._start_node(name, ns, argv, {"GLOO_SOCKET_IFNAME": self.wg[name]})
            _count_overlay_tx(ns, self.wg[name], self.port_base)
        for name in self.sellers:
            self._wait_ready(name)

    def iperf(self) -> dict[str, float]:
        """Overlay TCP throughput s1 -> hub -> s2, unshaped and shaped (Mbit/s)."""
        s2 = str(self.lab.spokes["s2"].node.address)
        self.lab.bed.spawn(self.sellers["s2"], ["iperf3", "-s", "-B", s2, "-p", str(IPERF_PORT)])
        time.sleep(0.5)
        out = {}
        for shaped in (False, True):
            self._shape(shaped)
            try:
                done = netns.run(
                    ["iperf3", "-c", s2, "-p", str(IPERF_PORT), "-t", "2", "-J"],
                    netns=self.sellers["s1"],
                    timeout=40,
                )
            finally:
                self._shape(False)
            bits = json.loads(done.stdout)["end"]["sum_received"]["bits_per_second"]
            out["shaped" if shaped else "unshaped"] = bits / 1e6
        return out

    def fit(self, job: dict, phases: list[tuple[str, bool]], round_no: int) -> dict[str, Window]:
        """Run one training job through the production driver; measure one window per
        phase (label, underlay shaped?), SYNC_EVERY steps apart and from either end."""
        width, gap = self.args.window, SYNC_EVERY
        bounds = []
        for i in range(len(phases)):
            bounds += [gap + i * (width + gap), gap + i * (width + gap) + width]
        steps = bounds[-1] + gap
        name = f"bench-{round_no}-{job['workers']}w-{'lb' if 'low_bandwidth' in job else 'fs'}"
        spec_path = self.root / "work" / f"{name}.json"
        spec_path.write_text(json.dumps(_spec(name, job, steps, self.args.micro_batch)))
        run_dir = self.root / "runs" / name
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        env = {
            **self._env(),
            "COMPUTESWARM_RUN_DIR": str(run_dir),
            "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",  # as the swarm submits it
            "RAY_DEDUP_LOGS": "0",
        }

        def on_mark(index: int) -> dict:
            snapshot = self._snapshot()
            phase = index // 2
            if index % 2 and phase + 1 < len(phases):  # a window closed: set up the next
                self._shape(phases[phase + 1][1])
            return snapshot

        driver_argv = [sys.executable, "-c", DRIVER, self.head_address, self.driver_ip]
        driver_argv.append(str(spec_path))
        lines: list[str] = []
        self._shape(phases[0][1])
        try:
            driver = subprocess.Popen(
                netns.ns_argv(driver_argv, self.sellers["s1"]),
                cwd=self.root / "work",
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                start_new_session=True,
            )
            reader = threading.Thread(
                target=_collect, args=(driver, lines, run_dir.with_suffix(".log"))
            )
            reader.start()
            try:
                marks = _watch(driver, run_dir / "steps.log", bounds, on_mark)
            finally:
                if driver.poll() is None:
                    from computeswarm.cluster.nodes.ray_nodes import stop_session

                    stop_session(driver.pid, grace_s=5)
                reader.join(30)
        finally:
            self._shape(False)
        if driver.returncode != 0 or len(marks) < len(bounds):
            tail = "".join(lines[-40:])
            raise RuntimeError(f"job {name}: the driver exited {driver.returncode}:\n{tail}")
        printed = {int(m[1]): float(m[2]) for line in lines if (m := STEP_LINE.search(line))}
        sync_bytes = json.loads((run_dir / "result.json").read_text())["metrics"][
            "sync_bytes_per_step"
        ]
        return {
            label: _window(marks[2 * i], marks[2 * i + 1], printed, sync_bytes)
            for i, (label, _) in enumerate(phases)
        }

    def stop(self) -> None:
        from computeswarm.cluster.nodes.ray_nodes import stop_session

        for process in reversed(list(self.nodes.values())):
            stop_session(process.pid, grace_s=5)
        self.nodes.clear()
        for ns in self.sellers.values():
            netns.run(["nft", "delete", "table", "inet", COUNTER_TABLE], netns=ns, check=False)

    # -- helpers ---------------------------------------------------------------------------

    def _start_node(self, name: str, ns: str, argv: list[str], env: dict | None = None) -> None:
        log = self.root / "ray" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            self.nodes[name] = subprocess.Popen(
                netns.ns_argv(argv, ns),
                cwd=self.root / "work",  # workers resolve the job's relative paths here
                env={**self._env(), **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def _wait_ready(self, name: str, timeout: float = 180) -> None:
        from computeswarm.cluster.seller.workers import READY_MARK

        log = self.root / "ray" / f"{name}.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.nodes[name].poll() is not None:
                raise RuntimeError(f"Ray node {name} exited:\n{log.read_text()[-3000:]}")
            if READY_MARK in log.read_text(errors="replace"):
                return
            time.sleep(0.5)
        raise RuntimeError(f"Ray node {name} not up in {timeout:g} s:\n{log.read_text()[-3000:]}")

    def _env(self) -> dict[str, str]:
        from computeswarm.cluster.nodes.ray_nodes import node_env

        return node_env(self.token)

    def _snapshot(self) -> dict[str, tuple[int, int, int]]:
        """Per seller: (overlay tx bytes, of which Ray's ports, of which the rest)."""
        out = {}
        for name, ns in self.sellers.items():
            # One command, so the interface's counter and nft's are read together.
            done = netns.run(
                [
                    "sh",
                    "-c",
                    f"cat /sys/class/net/{self.wg[name]}/statistics/tx_bytes && "
                    f"nft -j list counters table inet {COUNTER_TABLE}",
                ],
                netns=ns,
            )
            wg, _, counters = done.stdout.partition("\n")
            found = {
                c["counter"]["name"]: c["counter"]["bytes"]
                for c in json.loads(counters)["nftables"]
                if "counter" in c
            }
            out[name] = (int(wg), found["ray_tx"], found["other_tx"])
        return out

    def _shape(self, shaped: bool) -> None:
        """Every testbed host's underlay uplink limited to --rate (tbf), or not."""
        for host in ("hub", "s1", "s2"):
            if shaped:
                tbf = ["rate", self.args.rate, "burst", "64kb", "latency", "50ms"]
                self.lab.bed.host(host).run(
                    ["tc", "qdisc", "replace", "dev", "eth0", "root", "tbf", *tbf]
                )
            else:
                self.lab.bed.host(host).run(
                    ["tc", "qdisc", "del", "dev", "eth0", "root"], check=False
                )


def _spec(name: str, job: dict, steps: int, micro_batch: int) -> dict:
    """A `lora` job spec as a buyer would write it; evaluation and checkpoint only at the
    end, so nothing but training steps runs inside the measurement windows."""
    from computeswarm.jobs.spec import parse_job_spec

    workers = job["workers"]
    spec = {
        "kind": "lora",
        "name": name,
        "model": "model",
        "dataset": "data.jsonl",
        # What the swarm would upload; here the Ray nodes start in that folder instead.
        "runtime_env": {"working_dir": "."},
        "resources": {
            "gpus": f"RTX4090:24GB:{workers}",
            "nodes": workers,
            "cpus_per_node": 1,
            "memory_gb_per_node": 2,
        },
        "pricing": {"max_price_per_gpu_hour": "1.00"},
        "training": {
            "steps": steps,
            "learning_rate": 0.003,
            "max_seq_len": 16,
            "eval_every": steps,
            "checkpoint_every": steps,
        },
        "deepspeed": {"zero_stage": 2, "micro_batch": micro_batch},
    }
    if "low_bandwidth" in job:
        spec["low_bandwidth"] = job["low_bandwidth"]
    parse_job_spec(spec)  # fail here, not in the driver
    return spec


def _watch(driver: subprocess.Popen, steps_log: Path, bounds: list[int], on_mark) -> list:
    """Until the driver exits: (step, time, on_mark(i)) when `steps.log` first shows
    step `bounds[i]`."""
    marks = []
    deadline = time.monotonic() + 900
    while driver.poll() is None:
        if time.monotonic() > deadline:
            raise RuntimeError("the training job did not finish in 900 s")
        if len(marks) < len(bounds):
            try:
                done = steps_log.read_bytes().count(b"\n")
            except FileNotFoundError:
                done = 0
            if done >= bounds[len(marks)]:
                now = time.monotonic()
                marks.append((done, now, on_mark(len(marks))))
                continue
        time.sleep(0.005 if len(marks) < len(bounds) else 0.2)
    return marks


def _window(start: tuple, end: tuple, printed: dict[int, float], sync_bytes: float) -> Window:
    """A window's figures from its two marks; bytes are per worker (seller) per step."""
    (first, t0, before), (last, t1, after) = start, end
    steps = last - first
    times = [printed[s] for s in range(first + 1, last + 1) if s in printed]
    if len(times) < steps // 2:
        raise RuntimeError(f"only {len(times)} of steps {first + 1}-{last} reached the driver")

    def per_step(index: int) -> float:
        sent = sum(after[seller][index] - before[seller][index] for seller in after)
        return sent / len(after) / steps

    return Window(
        step_s=statistics.median(times),
        window_step_s=(t1 - t0) / steps,
        sync_bytes=sync_bytes,
        overlay_tx=per_step(0),
        ray_tx=per_step(1),
        dist_tx=per_step(2),
        steps=(first, last),
    )


def _collect(driver: subprocess.Popen, lines: list[str], log_path: Path) -> None:
    with open(log_path, "w") as log:
        for line in driver.stdout:
            lines.append(line)
            log.write(line)


def _count_overlay_tx(ns: str, iface: str, port_base: int) -> None:
    """nftables counters on the seller's WireGuard interface: Ray's ports vs the rest."""
    block = f"{port_base}-{port_base + 99}"
    rules = f"""table inet {COUNTER_TABLE} {{
    counter ray_tx {{}}
    counter other_tx {{}}
    chain output {{
        type filter hook output priority filter; policy accept;
        oifname "{iface}" tcp sport {block} counter name "ray_tx" accept
        oifname "{iface}" tcp dport {block} counter name "ray_tx" accept
        oifname "{iface}" counter name "other_tx" accept
    }}
}}
"""
    netns.run(["nft", "-f", "-"], netns=ns, input=rules)


def _iface_tx(pid: int, iface: str) -> int:
    """tx bytes of `iface` in the network namespace of process `pid`."""
    for line in Path(f"/proc/{pid}/net/dev").read_text().splitlines():
        name, _, fields = line.partition(":")
        if name.strip() == iface:
            return int(fields.split()[8])
    raise RuntimeError(f"no interface {iface} in the namespace of process {pid}")


def _leftovers(root: Path, run_id: str | None) -> list[str]:
    """Namespaces of this run's testbed, and processes carrying this run's marker."""
    deadline = time.monotonic() + 10  # processes just signalled may take a moment
    while True:
        namespaces = [ns for ns in netns.list_all() if run_id and f"-{run_id}-" in ns]
        processes = processes_with([f"{MARKER_ENV}={root}"])
        if not (namespaces or processes) or time.monotonic() > deadline:
            return [f"namespace {ns}" for ns in namespaces] + [f"process {p}" for p in processes]
        time.sleep(0.5)


def _report(
    windows: dict[str, list[Window]],
    iperf: dict[str, float],
    args: argparse.Namespace,
    setup_s: float,
    total_s: float,
) -> None:
    one, full, low, shaped = (windows[label] for label in (ONE, FULL, LOW, SHAPED))
    print(
        f"\nLoRA on a 2-seller lease over real WireGuard (testbed hosts, wireguard-go, relayed "
        f"by the hub): tiny GPT-2 (make_tiny_model), synthetic_addition, micro-batch "
        f"{args.micro_batch} per worker, windows of {args.window} optimizer steps; CPU only "
        f"(simulated GPUs, 1 core per worker, cores shared); medians of {args.runs} rounds, "
        "ratios taken per round"
    )
    print(
        f"\n  overlay TCP s1 -> hub -> s2 (iperf3, 2 s): unshaped {iperf['unshaped']:.0f} Mbit/s,"
        f" underlay shaped to {args.rate}: {iperf['shaped']:.0f} Mbit/s "
        f"(shaped / unshaped = {iperf['shaped'] / iperf['unshaped']:.3f})"
    )
    print("\n  step time, s                  median of printed steps      window wall time / steps")
    for label, runs in windows.items():
        print(
            f"  {label:<30} {_med(runs, 'step_s'):6.3f} ({_each(runs, 'step_s')})"
            f"     {_med(runs, 'window_step_s'):6.3f} ({_each(runs, 'window_step_s')})"
        )

    print("\n1. scaling efficiency 1 -> 2 workers = 2-worker throughput / (2 x 1-worker)")
    _ratio_line("from the median printed step time", _ratios(one, full, "step_s"))
    _ratio_line("from the window wall time", _ratios(one, full, "window_step_s"))

    print(
        "\n2. bytes per optimizer step per worker, kB. Analytical: the run's "
        "sync_bytes_per_step. Measured: IP bytes each seller sent into its WireGuard "
        "interface over the window (headers and ACKs included), split by nftables into "
        "torch.distributed (ports outside Ray's block: gloo, TCPStore) and Ray's own ports"
    )
    print("  job                          analytical  torch.distributed  Ray's ports  all (wg tx)")
    for label, runs in ((FULL, full), (LOW, low)):
        kb = [_med(runs, f) / 1e3 for f in ("sync_bytes", "dist_tx", "ray_tx", "overlay_tx")]
        print(f"  {label:<28} {kb[0]:9.1f} {kb[1]:16.1f} {kb[2]:12.1f} {kb[3]:12.1f}")
    print(
        f"  (torch.distributed by round, kB: full sync {_each(full, 'dist_tx', 1e3)}; "
        f"low bandwidth {_each(low, 'dist_tx', 1e3)})"
    )
    print(
        "  (nftables sees TCP segments before GSO splits them, so its two columns leave out"
        " some per-packet headers that the wg tx total counts)"
    )
    _ratio_line("low bandwidth / full sync, analytical", _ratios(low, full, "sync_bytes"))
    _ratio_line(
        "low bandwidth / full sync, measured torch.distributed", _ratios(low, full, "dist_tx")
    )
    _ratio_line("low bandwidth / full sync, measured all (wg tx)", _ratios(low, full, "overlay_tx"))
    _ratio_line("full sync: measured torch.distributed / analytical", _own(full, "dist_tx"))
    _ratio_line("low bandwidth: measured torch.distributed / analytical", _own(low, "dist_tx"))
    _ratio_line("step time low bandwidth / full sync (window)", _ratios(low, full, "window_step_s"))

    print(
        f"\n3. underlay shaped to {args.rate} (tc tbf on every host's eth0) / unshaped, 2 workers,"
        " full sync (two windows of the same job, order alternating by round)"
    )
    _ratio_line("step time, median printed step", _ratios(shaped, full, "step_s"))
    _ratio_line("step time, window wall time", _ratios(shaped, full, "window_step_s"))
    _ratio_line("measured torch.distributed bytes", _ratios(shaped, full, "dist_tx"))
    print(
        f"\n  setup (model, testbed, Ray nodes, iperf3): {setup_s:.0f} s; "
        f"whole benchmark: {total_s:.0f} s"
    )


def _ratios(num: list[Window], den: list[Window], field: str) -> list[float]:
    """Round by round: `field` of `num` over the same round's `den`."""
    return [getattr(a, field) / getattr(b, field) for a, b in zip(num, den, strict=True)]


def _own(runs: list[Window], field: str) -> list[float]:
    """Measured over analytical, window by window."""
    return [getattr(r, field) / r.sync_bytes for r in runs]


def _med(runs: list[Window], field: str) -> float:
    return statistics.median(getattr(r, field) for r in runs)


def _each(runs: list[Window], field: str, scale: float = 1.0) -> str:
    return " ".join(f"{getattr(r, field) / scale:.3f}" for r in runs)


def _ratio_line(label: str, values: list[float]) -> None:
    each = " ".join(f"{v:.3f}" for v in values)
    print(f"  {label:<56} {statistics.median(values):7.3f}   (rounds: {each})")


def _say(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
