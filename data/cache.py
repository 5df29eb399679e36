"""A seller's dataset cache, keyed by content and bounded in size (seller config).

`files/<sha256>` holds each distinct file once; `versions/<manifest id>/` is a version's
tree of hard links into it, which the agent binds read-only into the sandbox of a lease
that reads the version. A second lease with the same version fetches nothing; a new
version fetches only its new files. The cache lives in the seller's state dir, outside
every sandbox: a lease sees only the versions its job names.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path

from computeswarm.data.assemble import Fetched, ReadChunk, materialize
from computeswarm.data.manifest import FileEntry, Manifest

log = logging.getLogger("computeswarm.cache")
COMPLETE = ".complete"  # a version folder holding it is whole


class DatasetCache:
    def __init__(self, root: Path, limit_bytes: int):
        self.root = Path(root)
        self.limit_bytes = limit_bytes
        self._lock = threading.Lock()  # one fetch at a time changes the cache

    def view(
        self, manifest: Manifest, read_chunk: ReadChunk, in_use: set[str] = frozenset()
    ) -> tuple[Path, Fetched]:
        """The version's folder (files 0444, folders 0555), fetched if it is not here."""
        with self._lock:
            folder = self.root / "versions" / manifest.id
            if (self.root / "versions" / f"{manifest.id}{COMPLETE}").exists():
                os.utime(folder)  # recently used: evicted last
                return folder, Fetched(files=len(manifest.files), bytes_kept=manifest.size)
            if manifest.size > self.limit_bytes:
                raise OSError(
                    f"dataset version {manifest.id[:12]} ({manifest.size} bytes) is larger "
                    f"than this seller's cache ({self.limit_bytes} bytes)"
                )
            self._evict(manifest.size, keep={*in_use, manifest.id})
            staging = self.root / "versions" / f".{manifest.id}.staging"
            fetched = materialize(manifest, staging, read_chunk, reuse=self._cached)
            for entry in manifest.files:
                self._keep(staging / entry.path, entry)
            _read_only(staging)
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(staging, folder)
            (self.root / "versions" / f"{manifest.id}{COMPLETE}").touch()
            log.info(
                "dataset version %s cached: %d bytes fetched, %d kept",
                manifest.id[:12],
                fetched.bytes_fetched,
                fetched.bytes_kept,
            )
            return folder, fetched

    def size(self) -> int:
        files = self.root / "files"
        return sum(p.stat().st_size for p in files.iterdir()) if files.is_dir() else 0

    def _cached(self, entry: FileEntry) -> Path | None:
        path = self.root / "files" / entry.sha256
        return path if path.is_file() and path.stat().st_size == entry.size else None

    def _keep(self, path: Path, entry: FileEntry) -> None:
        store = self.root / "files" / entry.sha256
        store.parent.mkdir(parents=True, exist_ok=True)
        if not store.exists():
            os.link(path, store)

    def _evict(self, incoming: int, keep: set[str]) -> None:
        """Drop least recently used versions (never one in use) until `incoming` fits,
        then every file no version links to."""
        versions = self.root / "versions"
        if not versions.is_dir():
            return
        candidates = sorted(
            (p for p in versions.iterdir() if p.is_dir() and not p.name.startswith(".")),
            key=lambda p: p.stat().st_mtime,
        )
        for folder in candidates:
            if self.size() + incoming <= self.limit_bytes:
                break
            if folder.name in keep:
                continue
            (versions / f"{folder.name}{COMPLETE}").unlink(missing_ok=True)
            _writable(folder)
            shutil.rmtree(folder, ignore_errors=True)
            self._drop_unlinked()
            log.info("dataset version %s evicted from the cache", folder.name[:12])
        for leftover in versions.glob(".*.staging"):
            _writable(leftover)
            shutil.rmtree(leftover, ignore_errors=True)
        self._drop_unlinked()

    def _drop_unlinked(self) -> None:
        files = self.root / "files"
        for path in files.iterdir() if files.is_dir() else ():
            if path.stat().st_nlink <= 1:
                path.unlink()


def _read_only(folder: Path) -> None:
    for root, _, names in os.walk(folder):
        for name in names:
            os.chmod(Path(root, name), 0o444)
        os.chmod(root, 0o555)


def _writable(folder: Path) -> None:
    for root, _, _ in os.walk(folder):
        os.chmod(root, 0o755)
