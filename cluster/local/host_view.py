"""Each testbed host's own file system view: what a real machine keeps to itself.

The testbed's hosts are network namespaces on one machine, so without this every "host"
would see one disk: a seller could read the coordinator's state dir, and code that only
works because of that would pass its tests. Each host's processes start in a private
mount namespace (`unshare --mount`) where `/tmp` and `/var/tmp` are the host's own
folders (`<swarm>/hosts/<name>/tmp`, ...), its own state dir is in view at its usual
path, and every other host's state dir is not. System files, the Python environment and
our source stay shared, as on machines with the same software installed; so do home and
its read-only build caches (DeepSpeed's prebuilt op).

Mounts made in a private namespace leave with its last process; on the machine itself
the backing folders are plain folders the swarm removes with its state.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

PRIVATE = ("/tmp", "/var/tmp")  # each host's own, backed by <backing>/<name of the dir>
SOURCE = Path(__file__).resolve().parents[2]  # the checkout (and its .venv)


def shared_paths() -> list[Path]:
    """What every host has, as machines with the same software installed do."""
    return [SOURCE, Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()]


def _under(path: Path, folder: str) -> bool:
    return path == Path(folder) or Path(folder) in path.parents


def view_argv(
    argv: Sequence[str], *, backing: Path, own: Path, others: Sequence[Path]
) -> list[str]:
    """`argv` started in its host's own view: `backing` holds the host's private
    folders, `own` is its state dir, `others` are the other hosts' state dirs."""
    keep = [p.resolve() for p in (own, *shared_paths())]
    backing = backing.resolve()
    lines, swaps = ["set -e"], []
    for folder in PRIVATE:
        under = backing / folder.strip("/").replace("/", "-")
        lines.append(f"mkdir -p {shlex.quote(str(under))} && chmod 1777 {shlex.quote(str(under))}")
        for path in keep:
            if _under(path, folder) and path.exists():
                # Bound into the host's folder first: `--rbind` below carries it along.
                inside = under / path.relative_to(folder)
                lines.append(f"mkdir -p {shlex.quote(str(inside))}")
                lines.append(f"mount --bind {shlex.quote(str(path))} {shlex.quote(str(inside))}")
        swaps.append((_under(backing, folder), f"mount --rbind {shlex.quote(str(under))} {folder}"))
    # The folder that holds `backing` is swapped last: the other swaps' sources lie in it.
    lines += [line for _, line in sorted(swaps, key=lambda s: s[0])]
    for other in others:
        other = other.resolve()
        if not any(_under(other, f) for f in PRIVATE):  # else already out of view
            lines.append(
                f"if [ -d {shlex.quote(str(other))} ]; then "
                f"mount -t tmpfs -o ro,mode=000,size=4k cs-elsewhere {shlex.quote(str(other))}; fi"
            )
    lines.append('exec "$@"')
    script = "\n".join(lines)
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        script,
        "cs-host",
        *argv,
    ]
