"""Each testbed host's own file system view: what a real machine keeps to itself.

The testbed's hosts are network namespaces on one machine, so without this every "host"
would see one disk: a seller could read the coordinator's state dir, and code that only
works because of that would pass its tests. Each host's processes start in a private
mount namespace (`unshare --mount`) where `/tmp` and `/var/tmp` are the host's own
folders (`<swarm>/hosts/<name>/tmp`, ...), and so are home (`~/.computeswarm`, caches
that hold data) and `/var/lib/computeswarm`; its own state dir is in view at its usual
path, and every other host's state dir is not. System files, the Python environment
(even where it lives in home, as pyenv's does) and our source stay shared, as on
machines with the same software installed; so do read-only build caches (DeepSpeed's
prebuilt op), bound read-only into each home.

Mounts made in a private namespace leave with its last process; on the machine itself
the backing folders are plain folders the swarm removes with its state.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

SCRATCH = ("/tmp", "/var/tmp")  # world-writable, sticky
SERVICE = "/var/lib/computeswarm"
SOURCE = Path(__file__).resolve().parents[2]  # the checkout (and its .venv)


def private_folders() -> tuple[str, ...]:
    """Each host's own, backed by <backing>/<name of the folder>."""
    home = str(Path.home().resolve())
    nested = home == "/" or any(_under(Path(home), f) for f in (*SCRATCH, SERVICE))
    return (*SCRATCH, SERVICE, *(() if nested else (home,)))


def read_only_caches() -> list[Path]:
    """Build caches every machine with our setup has the same of, read-only (a lease
    copies what it loads: `sandbox.copy_build_cache`)."""
    return [Path.home() / ".cache" / "torch_extensions"]


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
    caches = [p.resolve() for p in read_only_caches() if p.is_dir()]
    backing = backing.resolve()
    private = private_folders()
    lines, swaps = ["set -e"], []
    for folder in private:
        under = backing / folder.strip("/").replace("/", "-")
        mode = "1777" if folder in SCRATCH else "0755" if folder == SERVICE else "0700"
        q = shlex.quote(str(under))
        lines.append(f"mkdir -p {q} {shlex.quote(folder)} && chmod {mode} {q}")
        for path in [*keep, *caches]:
            if _under(path, folder) and path.exists():
                # Bound into the host's folder first: `--rbind` below carries it along.
                inside = shlex.quote(str(under / path.relative_to(folder)))
                lines.append(f"mkdir -p {inside} && mount --bind {shlex.quote(str(path))} {inside}")
                if path in caches:
                    lines.append(f"mount -o remount,bind,ro {inside}")
        swaps.append((_under(backing, folder), f"mount --rbind {q} {folder}"))
    # The folder that holds `backing` is swapped last: the other swaps' sources lie in it.
    lines += [line for _, line in sorted(swaps, key=lambda s: s[0])]
    for other in others:
        other = other.resolve()
        if not any(_under(other, f) for f in private):  # else already out of view
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
