"""A dataset version's manifest: every file's path, size, sha256 and the chunks it is
made of. Its id is the sha256 of `{path: [sha256, size]}` alone, so the same bytes give
the same id whatever the chunking; pure.

Manifests come from buyers (a push) and from the store: parsed strictly, with every
path a plain relative one of safe segments and every size adding up.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SHA256 = re.compile(r"[0-9a-f]{64}")
# Dotfiles too (a cache's `.locks`); "." and ".." never (safe_path).
PATH_SEGMENT = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9._+=-]{0,254}")
MAX_FILES = 200_000
MAX_CHUNKS_PER_FILE = 1_000_000


class Chunk(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str = Field(pattern=SHA256.pattern)
    size: int = Field(ge=1, le=64 * 2**20)


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(max_length=4096)
    size: int = Field(ge=0)
    sha256: str = Field(pattern=SHA256.pattern)
    chunks: tuple[Chunk, ...] = Field(max_length=MAX_CHUNKS_PER_FILE)

    @field_validator("path")
    @classmethod
    def _plain_relative(cls, value: str) -> str:
        return safe_path(value)

    @model_validator(mode="after")
    def _sizes_add_up(self) -> FileEntry:
        if sum(c.size for c in self.chunks) != self.size:
            raise ValueError(f"{self.path}: its chunks do not add up to its size")
        return self


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    files: tuple[FileEntry, ...] = Field(max_length=MAX_FILES)

    @model_validator(mode="after")
    def _sorted_and_unique(self) -> Manifest:
        paths = [f.path for f in self.files]
        if paths != sorted(set(paths)):
            raise ValueError("manifest files must be unique and sorted by path")
        folders = {p.rsplit("/", 1)[0] for p in paths if "/" in p}
        folders |= {f.rsplit("/", i)[0] for f in folders for i in range(1, f.count("/") + 1)}
        if clash := folders & set(paths):
            raise ValueError(f"{sorted(clash)[0]!r} is both a file and a folder")
        return self

    @property
    def id(self) -> str:
        """The version's id: what the files are, not how they were cut."""
        listing = {f.path: [f.sha256, f.size] for f in self.files}
        return hashlib.sha256(canonical(listing)).hexdigest()

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def chunks(self) -> Iterator[Chunk]:
        """Every distinct chunk, in file order."""
        seen: set[str] = set()
        for entry in self.files:
            for chunk in entry.chunks:
                if chunk.sha256 not in seen:
                    seen.add(chunk.sha256)
                    yield chunk

    def file(self, path: str) -> FileEntry | None:
        return next((f for f in self.files if f.path == path), None)

    def to_bytes(self) -> bytes:
        return canonical(self.model_dump(mode="json"))


def safe_path(value: str) -> str:
    """A relative path of plain segments: no '/', '..', '.', empty parts or odd bytes."""
    parts = value.split("/")
    if not all(PATH_SEGMENT.fullmatch(p) for p in parts) or any(p in (".", "..") for p in parts):
        raise ValueError(f"not a plain relative path: {value!r}")
    return value


def canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
