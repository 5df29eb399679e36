"""GPU inventory: detection through nvidia-smi, or a declared `--simulate-gpus` shorthand.

The shorthand is `MODEL:VRAM:COUNT`, e.g. `RTX4090:24GB:2` (VRAM and count optional:
`RTX3090`, `RTX3090:24GB`), and several groups join with commas.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import asdict, dataclass

from computeswarm.errors import UserError

_SHORTHAND = re.compile(
    r"^(?P<model>[A-Za-z0-9_.-]+)(?::(?P<vram>\d+)\s*GB)?(?::(?P<count>\d+))?$", re.IGNORECASE
)
# VRAM of common consumer models, for a shorthand that leaves it out.
KNOWN_VRAM_GB = {
    "RTX3090": 24,
    "RTX4090": 24,
    "RTX4080": 16,
    "RTX3080": 10,
    "RTX5090": 32,
    "A100": 80,
    "H100": 80,
    "H200": 141,
    "L4": 24,
    "A10G": 24,
    "T4": 16,
}


@dataclass(frozen=True)
class Gpu:
    model: str
    vram_gb: int
    simulated: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def parse_gpu_shorthand(text: str, *, simulated: bool = False) -> list[Gpu]:
    """`RTX4090:24GB:2,RTX3090` -> [Gpu(RTX4090, 24), Gpu(RTX4090, 24), Gpu(RTX3090, 24)]."""
    gpus: list[Gpu] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = _SHORTHAND.match(part)
        if not match:
            raise UserError(
                f"GPU spec {part!r} is not MODEL[:VRAM GB][:COUNT], e.g. RTX4090:24GB:2"
            )
        model = match["model"].upper()
        vram = int(match["vram"]) if match["vram"] else KNOWN_VRAM_GB.get(model)
        if vram is None:
            raise UserError(f"GPU spec {part!r}: unknown model, give its VRAM: {model}:24GB")
        count = int(match["count"] or 1)
        if not (1 <= count <= 64 and 1 <= vram <= 1024):
            raise UserError(f"GPU spec {part!r}: count 1-64 and VRAM 1-1024 GB")
        gpus += [Gpu(model, vram, simulated)] * count
    if not gpus:
        raise UserError("GPU spec is empty; e.g. RTX4090:24GB:2")
    return gpus


def detect_gpus() -> list[Gpu]:
    """Real GPUs through nvidia-smi; an empty list where there are none."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    return parse_nvidia_smi(out)


def parse_nvidia_smi(csv_text: str) -> list[Gpu]:
    """Parse `name, memory.total [MiB]` lines: 'NVIDIA GeForce RTX 4090, 24564'."""
    gpus = []
    for line in csv_text.strip().splitlines():
        name, _, mib = line.rpartition(",")
        model = re.sub(r"^(NVIDIA\s+)?(GeForce\s+)?", "", name.strip()).replace(" ", "").upper()
        gpus.append(Gpu(model, round(int(mib.strip()) / 1024)))
    return gpus
