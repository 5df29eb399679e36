"""A buyer's own copies into and out of a volume (`computeswarm cp`): a local folder
added under a path of the volume (only the chunks it lacks are sent; other files stay),
and a volume's files (or those under a path) written to a local folder."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from computeswarm.data.assemble import Fetched, materialize
from computeswarm.data.chunking import scan
from computeswarm.data.manifest import FileEntry, Manifest
from computeswarm.data.transfer import STREAMS, Progress, send_missing


def push_into(
    client,
    folder: Path,
    name: str,
    under: str = "",
    *,
    streams: int = STREAMS,
    on_total: Callable[[int], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict, int]:
    """`folder`'s files as `under/...` in volume `name`; (the volume, bytes sent)."""
    under = under.strip("/")
    found = scan(folder)
    head = Manifest.model_validate(client.volume_manifest(name))
    base = client.volume(name)["head"]
    files = {f.path: f for f in head.files}
    for entry in found.manifest.files:
        path = f"{under}/{entry.path}" if under else entry.path
        files[path] = FileEntry(
            path=path, size=entry.size, sha256=entry.sha256, chunks=entry.chunks
        )
    theirs = Manifest(files=tuple(files[p] for p in sorted(files)))
    sizes = {c.sha256: c.size for c in found.manifest.chunks()}
    sent = Progress(progress)

    def put(sha: str) -> None:
        client.volume_put_chunk(name, sha, found.pieces[sha].read())
        sent(sizes[sha])

    ask = functools.partial(client.volume_missing, name)
    send_missing(sizes, ask, put, streams=streams, on_total=on_total)
    return client.commit_volume(name, base, theirs.model_dump(mode="json")), sent.done


def pull_from(
    client,
    name: str,
    path: str,
    to: Path,
    *,
    streams: int = STREAMS,
    on_total: Callable[[int], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Fetched:
    """The volume's files under `path` (all for ""), relative to it, into `to`; one file
    named by `path` lands as its own name."""
    path = path.strip("/")
    head = Manifest.model_validate(client.volume_manifest(name))
    picked = []
    for f in head.files:
        if not path or f.path.startswith(path + "/"):
            relative = f.path[len(path) + 1 :] if path else f.path
        elif f.path == path:
            relative = path.rsplit("/", 1)[-1]
        else:
            continue
        picked.append(FileEntry(path=relative, size=f.size, sha256=f.sha256, chunks=f.chunks))
    if path and not picked:
        raise FileNotFoundError(f"volume {name} has nothing at {path!r}")
    manifest = Manifest(files=tuple(sorted(picked, key=lambda f: f.path)))
    if on_total:
        on_total(manifest.size)
    return materialize(
        manifest,
        Path(to),
        lambda sha: client.volume_chunk(name, sha),
        workers=streams,
        progress=progress,
    )
