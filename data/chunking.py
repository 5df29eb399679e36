"""Cutting files into content-defined chunks (FastCDC) and scanning a folder into a
manifest. An edit moves only the chunk boundaries near it, so a new version of a dataset
with one changed file shares every other chunk with the old one (and an insertion into a
big file shares all but a chunk or two of it).

Chunks average 1 MiB (256 KiB to 4 MiB): every chunk is one request and one object, and
over a WAN the per-request cost outweighs finer dedup (measured in tests/bench/transfer.py
against fixed-size chunks and 64 KiB ones).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from computeswarm.data.manifest import Chunk, FileEntry, Manifest, safe_path
from computeswarm.errors import UserError

MIN_SIZE, AVG_SIZE, MAX_SIZE = 256 * 2**10, 2**20, 4 * 2**20


@dataclass(frozen=True)
class Piece:
    """Where a chunk's bytes are on this machine."""

    path: Path
    offset: int
    size: int

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)


@dataclass(frozen=True)
class Chunker:
    avg_size: int = AVG_SIZE
    min_size: int = MIN_SIZE
    max_size: int = MAX_SIZE
    fixed: bool = False  # fixed-size chunks (for the benchmark's comparison)

    def cut(self, path: Path, name: str) -> tuple[FileEntry, list[tuple[Chunk, Piece]]]:
        """One file, `name` in the manifest: its entry (with the whole file's sha256) and
        where each of its chunks lies."""
        whole = hashlib.sha256()
        pieces: list[tuple[Chunk, Piece]] = []
        for offset, data in self._spans(path):
            whole.update(data)
            chunk = Chunk(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
            pieces.append((chunk, Piece(path, offset, len(data))))
        size = sum(c.size for c, _ in pieces)
        entry = FileEntry(
            path=name, size=size, sha256=whole.hexdigest(), chunks=[c for c, _ in pieces]
        )
        return entry, pieces

    def _spans(self, path: Path):
        if path.stat().st_size == 0:
            return
        if self.fixed:
            with open(path, "rb") as f:
                offset = 0
                while data := f.read(self.avg_size):
                    yield offset, data
                    offset += len(data)
            return
        from pyfastcdc.cy import FastCDC

        cdc = FastCDC(self.avg_size, min_size=self.min_size, max_size=self.max_size)
        for chunk in cdc.cut_file(str(path)):
            yield chunk.offset, chunk.data


@dataclass(frozen=True)
class Scan:
    """A folder as a manifest, and where each of its distinct chunks is read from."""

    manifest: Manifest
    pieces: dict[str, Piece]


def scan(folder: Path, chunker: Chunker = Chunker()) -> Scan:
    """Every regular file under `folder`; a symlink or special file is an error (the
    version would not be what the folder shows)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder")
    entries, pieces = [], {}
    for path in sorted(_files(folder), key=lambda p: p.relative_to(folder).as_posix()):
        relative = path.relative_to(folder).as_posix()
        try:
            safe_path(relative)
        except ValueError:
            raise UserError(
                f"{relative!r}: file names are letters, digits and ._+=- only"
            ) from None
        entry, located = chunker.cut(path, relative)
        entries.append(entry)
        for chunk, piece in located:
            pieces.setdefault(chunk.sha256, piece)
    return Scan(Manifest(files=entries), pieces)


def _files(folder: Path):
    for root, dirs, names in os.walk(folder):
        for name in (*dirs, *names):
            path = Path(root, name)
            if path.is_symlink():
                raise UserError(f"{path} is a symlink; copy the file in")
        for name in names:
            path = Path(root, name)
            if not path.is_file():
                raise UserError(f"{path} is not a regular file")
            yield path
