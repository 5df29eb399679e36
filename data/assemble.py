"""Turning a manifest back into files: chunks fetched in parallel (a bounded window, in
order), each checked against its sha256, each file against its own, written beside its
place and renamed in, so a file is whole or absent. Files already there with the right
hash are kept: a pull that was stopped resumes where it was."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from computeswarm.data.manifest import Chunk, FileEntry, Manifest
from computeswarm.errors import ComputeSwarmError

ReadChunk = Callable[[str], bytes]
WINDOW = 16  # chunks in flight or waiting to be written (at most ~64 MiB held)


class IntegrityError(ComputeSwarmError):
    """Bytes that do not hash to what the manifest says (a corrupt store or a liar)."""


@dataclass
class Fetched:
    files: int = 0
    bytes_fetched: int = 0  # bytes that crossed the wire
    bytes_kept: int = 0  # bytes already here (resumed, or from a cache)


def materialize(
    manifest: Manifest,
    target: Path,
    read_chunk: ReadChunk,
    *,
    reuse: Callable[[FileEntry], Path | None] | None = None,
    workers: int = 4,
    progress: Callable[[int], None] | None = None,
) -> Fetched:
    """Every file of `manifest` under `target`. `reuse(entry)` may offer a local file with
    the same content (hard-linked or copied in instead of fetched)."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    done = Fetched(files=len(manifest.files))
    wanted: list[FileEntry] = []
    for entry in manifest.files:
        dest = target / entry.path
        if not _holds(dest, entry):
            if reuse is None or (local := reuse(entry)) is None:
                wanted.append(entry)
                continue
            _place_copy(local, dest)
        done.bytes_kept += entry.size
        if progress:
            progress(entry.size)
    with ThreadPoolExecutor(workers, thread_name_prefix="chunks") as pool:
        chunks = _in_order(pool, read_chunk, (c for e in wanted for c in e.chunks))
        for entry in wanted:
            _write(entry, target / entry.path, chunks, done, progress)
    return done


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(2**20):
            digest.update(block)
    return digest.hexdigest()


def _holds(dest: Path, entry: FileEntry) -> bool:
    return (
        dest.is_file() and dest.stat().st_size == entry.size and file_sha256(dest) == entry.sha256
    )


def _write(entry: FileEntry, dest: Path, chunks: Iterator[tuple[Chunk, bytes]], done, progress):
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f".{dest.name}.partial-{secrets.token_hex(4)}")
    digest = hashlib.sha256()
    try:
        with open(partial, "wb") as out:
            for _ in entry.chunks:
                _, data = next(chunks)
                digest.update(data)
                out.write(data)
                done.bytes_fetched += len(data)
                if progress:
                    progress(len(data))
        if digest.hexdigest() != entry.sha256:
            raise IntegrityError(f"{entry.path}: the file's bytes do not match its sha256")
        os.chmod(partial, 0o644)
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)


def _in_order(pool: ThreadPoolExecutor, read_chunk: ReadChunk, chunks: Iterator[Chunk]):
    """Fetch ahead at most WINDOW chunks; yield them in order, each checked."""
    window: deque[tuple[Chunk, Future]] = deque()
    for chunk in chunks:
        window.append((chunk, pool.submit(read_chunk, chunk.sha256)))
        if len(window) >= WINDOW:
            yield _checked(*window.popleft())
    while window:
        yield _checked(*window.popleft())


def _checked(chunk: Chunk, future: Future) -> tuple[Chunk, bytes]:
    data = future.result()
    if len(data) != chunk.size or hashlib.sha256(data).hexdigest() != chunk.sha256:
        raise IntegrityError(f"chunk {chunk.sha256[:12]}: its bytes do not match its sha256")
    return chunk, data


def _place_copy(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f".{dest.name}.partial-{secrets.token_hex(4)}")
    try:
        try:
            os.link(source, partial)
        except OSError:  # another file system
            shutil.copyfile(source, partial)
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)
