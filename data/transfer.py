"""Pushing a folder as a dataset version and pulling one back, through the coordinator:
the manifest first, then only the chunks the store lacks (in parallel), then the version.
A push that was stopped sends only what is still missing when run again; a pull keeps
the files it already has whole."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from computeswarm.data.assemble import Fetched, IntegrityError, materialize
from computeswarm.data.chunking import Chunker, scan
from computeswarm.data.manifest import Manifest
from computeswarm.data.refs import DatasetRef

ASK_BATCH = 5_000
STREAMS = 4


@dataclass
class Pushed:
    version: dict  # the coordinator's view of the version
    chunks: int  # distinct chunks in the version
    chunks_sent: int
    bytes_sent: int
    bytes_total: int


class Progress:
    """Bytes done so far, thread-safe; `on_bytes` may draw a bar."""

    def __init__(self, on_bytes: Callable[[int], None] | None = None):
        self.done, self._on, self._lock = 0, on_bytes, threading.Lock()

    def __call__(self, n: int) -> None:
        with self._lock:
            self.done += n
        if self._on:
            self._on(n)


def send_missing(
    sizes: Mapping[str, int],
    ask: Callable[[list[tuple[str, int]]], list[str]],
    put: Callable[[str], None],
    *,
    streams: int = STREAMS,
    on_total: Callable[[int], None] | None = None,
) -> list[str]:
    """The chunks (sha256 -> size) the other side lacks, asked in batches, then `put` in
    `streams` parallel streams; returns those sent. What one push, pull or commit does."""
    shas = list(sizes)
    missing: list[str] = []
    for start in range(0, len(shas), ASK_BATCH):
        missing += ask([(sha, sizes[sha]) for sha in shas[start : start + ASK_BATCH]])
    if on_total:
        on_total(sum(sizes[sha] for sha in missing))
    with ThreadPoolExecutor(streams, thread_name_prefix="send") as pool:
        list(pool.map(put, missing))  # (re-raises the first failure)
    return missing


def push(
    client,
    folder: Path,
    name: str,
    *,
    chunker: Chunker = Chunker(),
    streams: int = STREAMS,
    on_total: Callable[[int], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Pushed:
    found = scan(folder, chunker)
    chunks = list(found.manifest.chunks())
    sizes = {c.sha256: c.size for c in chunks}
    sent = Progress(progress)

    def put(sha: str) -> None:
        client.put_chunk(name, sha, found.pieces[sha].read())
        sent(sizes[sha])

    ask = functools.partial(client.missing_chunks, name)
    missing = send_missing(sizes, ask, put, streams=streams, on_total=on_total)
    version = client.commit_dataset(name, found.manifest.model_dump(mode="json"))
    return Pushed(version, len(chunks), len(missing), sent.done, found.manifest.size)


def pull(
    client,
    ref: DatasetRef,
    to: Path,
    *,
    streams: int = STREAMS,
    on_total: Callable[[int], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Fetched:
    """The version's files under `to` (or its one file `ref.path`)."""
    expected = client.dataset_version(ref.name, ref.version, ref.owner)["id"]
    manifest = Manifest.model_validate(client.dataset_manifest(ref.name, ref.version, ref.owner))
    if manifest.id != expected:
        raise IntegrityError(f"the manifest of {ref.version_key} is not the version's")
    if ref.path is not None:
        entry = manifest.file(ref.path)
        if entry is None:
            raise FileNotFoundError(f"{ref.version_key} has no file {ref.path!r}")
        manifest = Manifest(files=[entry])
    if on_total:
        on_total(manifest.size)
    return materialize(
        manifest,
        Path(to),
        lambda sha: client.chunk(ref.name, sha, ref.owner),
        workers=streams,
        progress=progress,
    )
