"""How specs name a dataset version, pure: `NAME@N`, `NAME@N/file.jsonl`, and another
account's shared dataset as `OWNER/NAME@N[/file]`. A value without '@' is a file in the
job's working_dir (or, at submit, a dataset name pinned to its newest version)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from computeswarm.data.manifest import safe_path

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class DatasetRef:
    name: str
    version: int
    owner: str | None = None  # the owning account's name, for a dataset shared with you
    path: str | None = None  # one file of the version (None: the version's only file)

    @property
    def version_key(self) -> str:
        """The version without the file: `[OWNER/]NAME@N`."""
        return f"{self.owner + '/' if self.owner else ''}{self.name}@{self.version}"

    def __str__(self) -> str:
        return self.version_key + (f"/{self.path}" if self.path else "")


def is_dataset_ref(value: str) -> bool:
    return "@" in value


def may_name_a_dataset(value: str) -> bool:
    """A plain name without '@' (and without a dot: `data.jsonl` is a file) that the
    coordinator may pin to a dataset's newest version."""
    return bool(NAME.fullmatch(value)) and "." not in value


def parse_ref(value: str) -> DatasetRef:
    """A dataset reference, or ValueError saying what a reference looks like."""
    parts = value.split("/")
    at = [i for i, part in enumerate(parts) if "@" in part]
    if len(at) != 1 or at[0] > 1:
        raise ValueError(f"{value!r}: a dataset is NAME@N, NAME@N/FILE or OWNER/NAME@N[/FILE]")
    owner = parts[0] if at[0] == 1 else None
    name, _, version = parts[at[0]].partition("@")
    path = "/".join(parts[at[0] + 1 :]) if len(parts) > at[0] + 1 else None
    if not NAME.fullmatch(name) or (owner is not None and not NAME.fullmatch(owner)):
        raise ValueError(f"{value!r}: names are letters, digits and ._- (up to 64)")
    if not version.isdigit() or int(version) < 1:
        raise ValueError(f"{value!r}: the version after '@' is a number from 1")
    if path is not None:
        safe_path(path)
    return DatasetRef(name=name, version=int(version), owner=owner, path=path)
