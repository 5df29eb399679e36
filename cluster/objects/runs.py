"""A run folder in the store, as the coordinator reads it: what a lease's driver and
workers wrote under the run's prefix (`jobs/run_store.py` is their side). The coordinator
never reads a seller's disk, and a name a driver reports is checked before it becomes a
key: only the coordinator's own record says where the run lives."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from computeswarm.cluster.objects.client import ObjectMissing, ObjectStore
from computeswarm.cluster.objects.layout import segment


class StoredRun:
    def __init__(self, store: ObjectStore, prefix: str):
        if not prefix.endswith("/"):
            raise ValueError(f"not a key prefix: {prefix!r}")
        self.store, self.prefix = store, prefix

    def read_text(self, name: str) -> str | None:
        try:
            return self.store.get_bytes(self.prefix + name).decode()
        except ObjectMissing:
            return None

    def names(self, folder: str) -> list[str]:
        """Names directly below the run's `folder` (files and folders), sorted."""
        below = f"{self.prefix}{folder.strip('/')}/"
        return sorted({o.key[len(below) :].split("/", 1)[0] for o in self.store.list(below)})

    def exists(self, name: str) -> bool:
        """A file of that name, or a folder with something in it."""
        key = self.prefix + name
        return any(o.key == key or o.key.startswith(f"{key}/") for o in self.store.list(key))

    def fetch(self, folder: str, to: Path) -> Path | None:
        """Every object under the run's `folder` (a name the driver reported, checked
        here) copied into the local folder `to`; None when the name is not a plain
        relative folder of this run or holds nothing."""
        parts = _relative(folder)
        if parts is None:
            return None
        below = self.prefix + "/".join(parts) + "/"
        found = False
        for item in self.store.list(below):
            rest = _relative(item.key[len(below) :])
            if rest is None:
                continue  # a key no local path can hold (".." and the like): skipped
            target = to.joinpath(*rest)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.store.get_bytes(item.key))
            found = True
        return to if found else None


def _relative(name: object) -> list[str] | None:
    """`name`'s parts if it is a plain relative path of safe segments, else None."""
    if not isinstance(name, str) or not name or name.startswith("/"):
        return None
    parts = PurePosixPath(name).parts
    try:
        return [segment(p) for p in parts]
    except ValueError:
        return None
