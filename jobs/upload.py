"""A job's working_dir travels as a zip: packed by the buyer, unpacked safely by the swarm.

Unpacking refuses what could escape or explode: absolute names, `..`, symlinks, more than
`max_files` files or `max_bytes` uncompressed (zip bombs).
"""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path, PurePosixPath

from computeswarm.jobs.errors import SpecError

SKIP = {"__pycache__", ".git", ".venv", ".mypy_cache", ".pytest_cache"}


def pack_working_dir(root: Path, max_bytes: int) -> bytes:
    """Zip `root` (already checked by `resolve_working_dir`), skipping caches and VCS."""
    buffer = io.BytesIO()
    total = 0
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(root.rglob("*")):
            if any(part in SKIP for part in path.relative_to(root).parts) or not path.is_file():
                continue
            total += path.stat().st_size
            if total > max_bytes:
                raise SpecError(
                    f"working_dir {root} is over {max_bytes // 2**20} MiB; keep data "
                    "out of it (use a dataset or volume)"
                )
            archive.write(path, path.relative_to(root).as_posix())
    return buffer.getvalue()


def unpack_working_dir(data: bytes, dest: Path, *, max_bytes: int, max_files: int = 10_000) -> None:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise SpecError("working_dir upload is not a zip archive") from None
    with archive:
        members = archive.infolist()
        if len(members) > max_files:
            raise SpecError(f"working_dir has {len(members)} files; the limit is {max_files}")
        if sum(m.file_size for m in members) > max_bytes:
            raise SpecError(f"working_dir unpacks to over {max_bytes // 2**20} MiB")
        for member in members:
            name = PurePosixPath(member.filename)
            if name.is_absolute() or ".." in name.parts or "\\" in member.filename:
                raise SpecError(f"working_dir entry {member.filename!r} escapes the folder")
            if stat.S_ISLNK(member.external_attr >> 16):
                raise SpecError(f"working_dir entry {member.filename!r} is a symlink")
        dest.mkdir(parents=True, exist_ok=True)
        archive.extractall(dest)
