"""The dataset registry: versions numbered 1, 2, 3... per (account, name), each a manifest
id, and shares that let another account read a dataset (every version) by name.

What a caller may not read does not exist for it: NotFound, never Forbidden.
"""

from __future__ import annotations

import secrets

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from computeswarm.cluster.errors import ApiError, NotFound
from computeswarm.cluster.models.registry import lock_account
from computeswarm.cluster.store.models import Account, Dataset, DatasetShare, DatasetVersion
from computeswarm.data.manifest import Manifest
from computeswarm.data.refs import NAME, DatasetRef


def check_name(name: str) -> str:
    if not NAME.fullmatch(name) or ".." in name:
        raise ApiError(f"dataset name {name!r}: letters, digits and ._- (up to 64)")
    return name


def add_version(
    db: Session, account_id: str, name: str, manifest: Manifest, now: float
) -> DatasetVersion:
    """The next version of `name` holding `manifest`; pushing what the newest version
    already holds adds nothing and returns it. Call it in a transaction of its own: the
    account's lock orders concurrent pushes."""
    check_name(name)
    lock_account(db, account_id)
    dataset = db.scalar(
        select(Dataset).where(Dataset.account_id == account_id, Dataset.name == name)
    )
    if dataset is None:
        dataset = Dataset(
            id=f"ds-{secrets.token_hex(6)}", account_id=account_id, name=name, created_at=now
        )
        db.add(dataset)
        db.flush()
    newest = _newest(db, dataset.id)
    if newest is not None and newest.manifest_id == manifest.id:
        return newest
    version = DatasetVersion(
        id=f"dv-{secrets.token_hex(6)}",
        dataset_id=dataset.id,
        version=(newest.version if newest else 0) + 1,
        manifest_id=manifest.id,
        files=len(manifest.files),
        size_bytes=manifest.size,
        created_at=now,
    )
    db.add(version)
    db.flush()
    return version


def readable(db: Session, reader_id: str, name: str, owner: str | None) -> Dataset:
    """The dataset `name` of `owner` (an account name; None: the reader's own), if the
    reader owns it or it is shared with the reader."""
    check_name(name)
    if owner is None:
        owner_id = reader_id
    else:
        owner_id = db.scalar(select(Account.id).where(Account.name == owner))
    dataset = db.scalar(select(Dataset).where(Dataset.account_id == owner_id, Dataset.name == name))
    if dataset is None or (dataset.account_id != reader_id and not _shared(db, dataset, reader_id)):
        whose = f"{owner}/" if owner else ""
        raise NotFound(f"no dataset {whose}{name}")
    return dataset


def version_of(db: Session, dataset: Dataset, number: int | None) -> DatasetVersion:
    """Version `number`, or the newest (None)."""
    if number is None:
        found = _newest(db, dataset.id)
    else:
        found = db.scalar(
            select(DatasetVersion).where(
                DatasetVersion.dataset_id == dataset.id, DatasetVersion.version == number
            )
        )
    if found is None:
        newest = _newest(db, dataset.id)
        hint = f"; its newest is {dataset.name}@{newest.version}" if newest else ""
        raise NotFound(f"dataset {dataset.name!r} has no version {number}{hint}")
    return found


def resolve(db: Session, reader_id: str, ref: DatasetRef) -> tuple[Dataset, DatasetVersion]:
    dataset = readable(db, reader_id, ref.name, ref.owner)
    return dataset, version_of(db, dataset, ref.version)


def versions(db: Session, dataset: Dataset) -> list[DatasetVersion]:
    return list(
        db.scalars(
            select(DatasetVersion)
            .where(DatasetVersion.dataset_id == dataset.id)
            .order_by(DatasetVersion.version)
        )
    )


def listing(db: Session, reader_id: str) -> list[tuple[Dataset, str | None]]:
    """The reader's datasets and those shared with it, with the owner's name (None: own)."""
    own = [(d, None) for d in db.scalars(select(Dataset).where(Dataset.account_id == reader_id))]
    shared = db.execute(
        select(Dataset, Account.name)
        .join(DatasetShare, DatasetShare.dataset_id == Dataset.id)
        .join(Account, Account.id == Dataset.account_id)
        .where(DatasetShare.account_id == reader_id)
    ).all()
    return sorted([*own, *[(d, n) for d, n in shared]], key=lambda p: (p[1] or "", p[0].name))


def share(db: Session, owner_id: str, name: str, reader: str, now: float, revoke: bool) -> str:
    """Let the account named `reader` read `name` (or stop it); returns its id."""
    dataset = readable(db, owner_id, name, None)
    reader_id = db.scalar(select(Account.id).where(Account.name == reader))
    if reader_id is None or reader_id == owner_id:
        raise NotFound(f"no other account named {reader!r}")
    existing = db.scalar(
        select(DatasetShare).where(
            DatasetShare.dataset_id == dataset.id, DatasetShare.account_id == reader_id
        )
    )
    if revoke and existing is not None:
        db.delete(existing)
    elif not revoke and existing is None:
        db.add(
            DatasetShare(
                id=f"sh-{secrets.token_hex(6)}",
                dataset_id=dataset.id,
                account_id=reader_id,
                created_at=now,
            )
        )
    return reader_id


def readers(db: Session, dataset: Dataset) -> list[str]:
    return list(
        db.scalars(
            select(Account.name)
            .join(DatasetShare, DatasetShare.account_id == Account.id)
            .where(DatasetShare.dataset_id == dataset.id)
            .order_by(Account.name)
        )
    )


def view(dataset: Dataset, version: DatasetVersion, owner: str | None) -> dict:
    ref = DatasetRef(name=dataset.name, version=version.version, owner=owner)
    return {
        "ref": str(ref),
        "name": dataset.name,
        "owner": owner,
        "version": version.version,
        "id": version.manifest_id,
        "files": version.files,
        "size_bytes": version.size_bytes,
        "created_at": version.created_at,
    }


def _newest(db: Session, dataset_id: str) -> DatasetVersion | None:
    number = db.scalar(
        select(func.max(DatasetVersion.version)).where(DatasetVersion.dataset_id == dataset_id)
    )
    if number is None:
        return None
    return db.scalar(
        select(DatasetVersion).where(
            DatasetVersion.dataset_id == dataset_id, DatasetVersion.version == number
        )
    )


def _shared(db: Session, dataset: Dataset, reader_id: str) -> bool:
    return (
        db.scalar(
            select(DatasetShare.id).where(
                DatasetShare.dataset_id == dataset.id, DatasetShare.account_id == reader_id
            )
        )
        is not None
    )
