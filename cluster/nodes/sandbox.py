"""The sandbox every lease's Ray node runs in, on sellers and on the head host alike.

Buyer code runs wherever its lease's Ray nodes run: on the leased sellers and, through a
task pinned to the head with a hard node affinity, on the coordinator's host. So each
lease node (and everything it forks) runs as the lease's own unprivileged uid, with no
capabilities and `no_new_privs`, in its own mount, PID, IPC and UTS namespaces, and sees
an allow-list of paths only: the system (`/usr`, `/etc`) and the Python environment
read-only, a private scratch folder as `/tmp` (Ray's temp dir lives there), and the files
of its own lease. No state dir, key, database, socket under `/run` or other lease's files
is in its view. The network namespace is the caller's: on a seller the workload namespace
(only the overlay); on the head host the hub's, fenced per uid by nftables (`HubFence`).

Two kept tools do the work (DESIGN.md rule 4): bubblewrap builds the view as root (no
user namespace, so uids are real on the host and file permissions hold too), and
util-linux's setpriv drops to the lease uid with an empty capability bounding set.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from computeswarm.jobs import contract
from computeswarm.tunnel.backends.base import Capability

# Lease uids: far above any uid a distribution hands out, one per lease port block, the
# same on every host of the lease (the head's port block names the lease while it runs).
UID_BASE = 2_000_000
UID_RANGE = (UID_BASE, UID_BASE + 65535)  # every lease uid (port bases are < 65536)
HOME = "/tmp"
# What a sandboxed node keeps of the caller's environment: Ray's, the ML stack's and the
# locale. Everything else (the coordinator's settings, database URL, keys) stays out.
KEPT_ENV_PREFIXES = (
    "RAY_",
    "DS_",
    "OMP_",
    "MKL_",
    "TORCH_",
    "HF_",
    "TRANSFORMERS_",
    "TOKENIZERS_",
    "CUDA_",
    "NCCL_",
    "GLOO_",
    contract.NODE_IP,
    contract.DATASETS,
    contract.VOLUMES,
    contract.CONTROL_DIR,
    "LANG",
    "LC_",
    "TZ",
    "PYTHONHASHSEED",
)
SYSTEM_DIRS = ("/usr", "/etc", "/opt", "/sys")
MERGED_USR_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


def lease_uid(port_base: int) -> int:
    """The uid a lease's processes run as (its head's port block is unique while it runs)."""
    return UID_BASE + port_base


def check() -> Capability:
    """Can this host sandbox lease nodes? Root (to build the view and switch uid), bwrap
    and setpriv."""
    if os.geteuid() != 0:
        return Capability(False, "not root: lease nodes cannot be sandboxed")
    for tool, package in (("bwrap", "bubblewrap"), ("setpriv", "util-linux")):
        if shutil.which(tool) is None:
            return Capability(False, f"{tool} not found (apt-get install {package})")
    return Capability(True, "bubblewrap + setpriv")


@dataclass(frozen=True)
class Sandbox:
    """One lease node's view of the host, as decided by whoever starts the node."""

    uid: int
    scratch: Path  # read-write, owned by `uid`, mounted as /tmp (and HOME)
    read_only: tuple[str, ...] = ()  # the lease's inputs (uploads, registered models)
    read_write: tuple[str, ...] = ()  # the lease's outputs (its run folder)
    mounts: tuple[tuple[str, str, bool], ...] = ()  # volumes: (folder, mount path, read-only)
    python: tuple[str, ...] = field(default_factory=lambda: python_paths())

    def argv(self, command: list[str]) -> list[str]:
        """`command` wrapped: bwrap builds the view, setpriv drops to the lease uid."""
        # No --die-with-parent: it fires when the starting *thread* ends; nodes are stopped
        # by their session instead (ray_nodes.stop_session).
        view = ["bwrap", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
        view += ["--hostname", "lease", "--dev", "/dev", "--proc", "/proc"]
        view += ["--perms", "1777", "--tmpfs", "/dev/shm"]  # Ray's object store
        for link in MERGED_USR_LINKS:
            if os.path.islink(link):
                view += ["--symlink", os.readlink(link), link]
            elif os.path.isdir(link):
                view += ["--ro-bind", link, link]
        shared = [("--ro-bind", p) for p in (*SYSTEM_DIRS, *self.python)]
        lease = [("--ro-bind", p) for p in self.read_only] + [
            ("--bind", p) for p in self.read_write
        ]
        # The scratch becomes /tmp first: what is bound after it stays visible even where it
        # lies under the host's /tmp (a checkout there, or a one-machine testbed's folders).
        view += ["--bind", str(self.scratch), HOME]
        view += _mounts(shared)
        view += _mounts(lease)
        view += [a for parent in _parents(p for _, p, _ in self.mounts) for a in _open_dir(parent)]
        for folder, path, readonly in self.mounts:
            view += ["--ro-bind" if readonly else "--bind", folder, path]
        view += [arg for device in gpu_devices() for arg in ("--dev-bind", device, device)]
        # Passwd/group name the lease user (Ray and torch look the user name up).
        view += ["--ro-bind", str(self.scratch / ".passwd"), "/etc/passwd"]
        view += ["--ro-bind", str(self.scratch / ".group"), "/etc/group"]
        drop = [
            "setpriv",
            f"--reuid={self.uid}",
            f"--regid={self.uid}",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            "--",
        ]
        return [*view, "--chdir", HOME, "--", *drop, *command]

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """The environment inside: only what Ray and the ML stack need from `base`."""
        kept = {k: v for k, v in base.items() if k.startswith(KEPT_ENV_PREFIXES)}
        path = ":".join(p for p in (str(Path(sys.executable).parent), "/usr/bin", "/bin"))
        return {
            **kept,
            "PATH": path,
            "HOME": HOME,
            "TMPDIR": HOME,
            "USER": "lease",
            "LOGNAME": "lease",
            "RAY_USAGE_STATS_ENABLED": "0",
            **({"TORCH_EXTENSIONS_DIR": f"{HOME}/torch_extensions"} if _extensions_env() else {}),
        }

    def prepare(self) -> None:
        """Make the scratch folder, owned by the lease uid and private to it (the passwd and
        group files it is shown stay root's)."""
        copy_build_cache(self.scratch)
        traversable(self.python)
        hand_over(self.scratch, self.uid)
        self.scratch.chmod(0o700)
        (self.scratch / ".passwd").write_text(
            _without_user(Path("/etc/passwd"), self.uid)
            + f"lease:x:{self.uid}:{self.uid}:lease:{HOME}:/usr/sbin/nologin\n"
        )
        (self.scratch / ".group").write_text(
            _without_user(Path("/etc/group"), self.uid) + f"lease:x:{self.uid}:\n"
        )


def write_token(folder: Path, token: str, uid: int | None) -> Path:
    """The lease's Ray token as a file only its own uid (or root) can read."""
    path = folder / "token"
    path.write_text(token)
    path.chmod(0o400 if uid is not None else 0o600)
    if uid is not None:
        os.chown(path, uid, uid)
    return path


def traversable(paths: tuple[str, ...]) -> None:
    """Let any uid pass through the bound folders of the Python environment: a checkout
    made private (`mktemp -d` makes 0700 folders) is otherwise out of the lease uid's reach
    even where it is bound. Only the search bit, and only on the bound folders themselves
    (bwrap makes their parents afresh): nothing becomes listable or readable that was not."""
    for path in paths:
        mode = os.stat(path).st_mode
        if not mode & 0o001:
            os.chmod(path, mode | 0o001)


def hand_over(folder: Path, uid: int) -> None:
    """Give `folder` and everything in it to `uid` (a lease writes only what it owns)."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chown(folder, uid, uid)
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, uid)


def python_paths() -> tuple[str, ...]:
    """The interpreter, its standard library, the venv and our own source, read-only.

    The venv's `python` is often a symlink into a tree elsewhere (pyenv under root's
    home): bind the real prefix too, wherever it is."""
    import computeswarm

    source = Path(computeswarm.__file__).resolve().parent.parent  # an editable install
    paths = {
        sys.prefix,
        str(Path(sys.base_prefix).resolve()),
        str(Path(sys.executable).resolve().parent.parent),
        str(source),
    }
    return tuple(sorted(paths))


def copy_build_cache(scratch: Path) -> None:
    """The lease's own copy of DeepSpeed's prebuilt ops (about 1 MB), where torch looks for
    them under HOME=/tmp: loading takes a lock file beside them, so a read-only cache fails;
    a shared writable one would let one lease plant a library the next one loads."""
    source = _extensions_env() or str(Path.home() / ".cache" / "torch_extensions")
    target = scratch / ("torch_extensions" if _extensions_env() else ".cache/torch_extensions")
    if os.path.isdir(source) and not target.exists():
        shutil.copytree(source, target, symlinks=True)


def _extensions_env() -> str | None:
    return os.environ.get("TORCH_EXTENSIONS_DIR")


def gpu_devices() -> list[str]:
    """NVIDIA device nodes, handed to the sandbox as they are."""
    dev = Path("/dev")
    return sorted(str(p) for p in dev.glob("nvidia*") if not p.is_dir())


def _mounts(binds: list[tuple[str, str]]) -> list[str]:
    """Bind each existing path at the same place. bwrap makes missing parents 0700
    (root's): make them traversable for the lease uid first."""
    binds = [(how, path) for how, path in binds if os.path.exists(path)]
    out = [arg for parent in _parents(p for _, p in binds) for arg in _open_dir(parent)]
    return out + [arg for how, path in binds for arg in (how, path, path)]


def _parents(paths) -> list[str]:
    """Every ancestor folder of `paths` (not `/`), parents before children, once each."""
    out: list[str] = []
    for path in paths:
        for parent in reversed(Path(path).parents[:-1]):
            if str(parent) not in out:
                out.append(str(parent))
    return out


def _open_dir(path: str) -> list[str]:
    return ["--perms", "0755", "--dir", path]


def _without_user(path: Path, uid: int) -> str:
    lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    return "".join(line for line in lines if line.split(":")[2:3] != [str(uid)])
