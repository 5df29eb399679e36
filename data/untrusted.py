"""Reading a folder that someone else writes to: a job's volume, read by the seller's
agent (as root) to commit it. The job may race the reader, swapping a file for a symlink
to the seller's keys between two looks; so every file is opened once, relative to its
folder's descriptor, without following links (`os.fwalk` + O_NOFOLLOW), and its chunks
are cut and sent from that open file. What is not a plain file with a plain name
(symlinks, fifos, devices, odd names) is skipped, and named."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from computeswarm.data.chunking import Chunker, Piece
from computeswarm.data.manifest import FileEntry, Manifest, safe_path

OPEN_AT_ONCE = 64  # files held open while their missing chunks are sent
FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass
class Walked:
    manifest: Manifest
    skipped: list[str] = field(default_factory=list)


def scan_and_send(
    folder: Path, send: Callable[[dict[str, Piece]], None], chunker: Chunker = Chunker()
) -> Walked:
    """`folder` as a manifest; `send(pieces)` is called for each batch of files while
    they are still open (it sends whichever of the chunks the store lacks)."""
    entries: list[FileEntry] = []
    skipped: list[str] = []
    held: list[int] = []
    pending: dict[str, Piece] = {}

    def flush() -> None:
        try:
            if pending:
                send(dict(pending))
        finally:
            for fd in held:
                os.close(fd)
            held.clear()
            pending.clear()

    try:
        for root, dirs, files, dir_fd in os.fwalk(folder, follow_symlinks=False):
            here = Path(root).relative_to(folder).as_posix()
            for name in sorted(files):
                relative = name if here == "." else f"{here}/{name}"
                fd = _open_plain(relative, name, dir_fd)
                if fd is None:
                    skipped.append(relative)
                    continue
                held.append(fd)
                entry, located = chunker.cut(Path(f"/proc/self/fd/{fd}"), relative)
                entries.append(entry)
                for chunk, piece in located:
                    pending.setdefault(chunk.sha256, piece)
                if len(held) >= OPEN_AT_ONCE:
                    flush()
            unsafe = [d for d in dirs if not _plain(d) or _is_link(d, dir_fd)]
            skipped += [d if here == "." else f"{here}/{d}" for d in unsafe]
            dirs[:] = [d for d in dirs if d not in unsafe]
        flush()
    finally:
        for fd in held:
            os.close(fd)
    entries.sort(key=lambda e: e.path)
    return Walked(Manifest(files=tuple(entries)), skipped)


def _open_plain(relative: str, name: str, dir_fd: int) -> int | None:
    try:
        safe_path(relative)
        fd = os.open(name, FLAGS, dir_fd=dir_fd)
    except (ValueError, OSError):  # an odd name, a symlink (ELOOP), gone meanwhile
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    os.set_blocking(fd, True)
    return fd


def _plain(name: str) -> bool:
    try:
        safe_path(name)
        return True
    except ValueError:
        return False


def _is_link(name: str, dir_fd: int) -> bool:
    """A link to a folder (fwalk lists it with the folders, and does not go in)."""
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return True
