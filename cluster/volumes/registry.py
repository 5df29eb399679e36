"""The volume registry: per (account, name) a size limit and a chain of commits, the
newest of which (`head`) is what a job mounting the volume sees. A commit names the
version it started from (its base); the coordinator merges it onto the head per file.

What a caller may not read does not exist for it: NotFound, never Forbidden.
"""

from __future__ import annotations

import re
import secrets

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from computeswarm.cluster.errors import ApiError, Conflict, NotFound
from computeswarm.cluster.models.registry import lock_account
from computeswarm.cluster.store.models import Volume, VolumeCommit
from computeswarm.data.manifest import Manifest
from computeswarm.jobs.mounts import VOLUME_NAME

NAME = re.compile(VOLUME_NAME)
MAX_VOLUMES = 100  # per account


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise ApiError(f"volume name {name!r}: letters, digits, _ and - (up to 64)")
    return name


def create(db: Session, account_id: str, name: str, size_limit: int, now: float) -> Volume:
    check_name(name)
    lock_account(db, account_id)
    if find(db, account_id, name) is not None:
        raise Conflict(f"you already have a volume named {name!r}")
    if len(listing(db, account_id)) >= MAX_VOLUMES:
        raise ApiError(f"at most {MAX_VOLUMES} volumes per account; remove one first")
    volume = Volume(
        id=f"vol-{secrets.token_hex(6)}",
        account_id=account_id,
        name=name,
        size_limit_bytes=size_limit,
        head=None,
        size_bytes=0,
        files=0,
        commits=0,
        created_at=now,
        updated_at=now,
    )
    db.add(volume)
    db.flush()
    return volume


def find(db: Session, account_id: str, name: str) -> Volume | None:
    return db.scalar(select(Volume).where(Volume.account_id == account_id, Volume.name == name))


def owned(db: Session, account_id: str, name: str) -> Volume:
    volume = find(db, account_id, check_name(name))
    if volume is None:
        raise NotFound(f"no volume {name!r} (`computeswarm volumes create {name}`)")
    return volume


def listing(db: Session, account_id: str) -> list[Volume]:
    return list(db.scalars(select(Volume).where(Volume.account_id == account_id)))


def remove(db: Session, volume: Volume) -> None:
    db.execute(delete(VolumeCommit).where(VolumeCommit.volume_id == volume.id))
    db.delete(volume)


def record_commit(
    db: Session, volume: Volume, base: str | None, head: Manifest, lease_id: str | None, now: float
) -> VolumeCommit:
    """`head` becomes the volume's contents. Call it with the volume's row read under the
    account's lock: commits to one volume are ordered."""
    volume.commits += 1
    commit = VolumeCommit(
        id=f"vc-{secrets.token_hex(6)}",
        volume_id=volume.id,
        number=volume.commits,
        base=base,
        head=head.id,
        size_bytes=head.size,
        lease_id=lease_id,
        committed_at=now,
    )
    volume.head, volume.size_bytes, volume.files = head.id, head.size, len(head.files)
    volume.updated_at, volume.last_error = now, None
    db.add(commit)
    db.flush()
    return commit


def view(volume: Volume) -> dict:
    return {
        "name": volume.name,
        "id": volume.id,
        "size_bytes": volume.size_bytes,
        "size_limit_bytes": volume.size_limit_bytes,
        "files": volume.files,
        "commits": volume.commits,
        "head": volume.head,
        "last_error": volume.last_error,
        "created_at": volume.created_at,
        "updated_at": volume.updated_at,
    }
