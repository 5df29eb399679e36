"""The model registry: each finished LoRA run's adapter becomes a numbered model version.

A version is a `model_versions` row plus a folder `<models_root>/<account>/<name>/<N>/`.
The folder is copied under a staging name first and renamed into place inside the
transaction that inserts the row, so a version anyone can see always has all its files.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import event, func, select, update
from sqlalchemy.orm import Session

from computeswarm.cluster.errors import ApiError, Conflict, NotFound
from computeswarm.cluster.store.models import Account, ModelVersion
from computeswarm.errors import SystemError_, UserError

LORA_ADAPTER = "lora-adapter"
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # also a safe folder name
STAGING_PREFIX = ".staging-"
_HASH_CHUNK = 1 << 20


def register(
    db: Session,
    *,
    account_id: str,
    name: str,
    source_dir: Path,
    base_model: str,
    spec_hash: str,
    data_hash: str,
    metrics: dict,
    checkpoint: str,
    job_id: str | None,
    parent: str | None,
    now: float,
    models_root: Path,
    dataset: str | None = None,
) -> ModelVersion:
    """Add the adapter in `source_dir` as the next version of `account_id`'s model `name`.

    The row is added to `db`; the version exists once the caller commits. Files are copied
    before any lock is taken. Then the account row is locked (a no-op UPDATE: a row lock on
    PostgreSQL, the write lock on SQLite), so concurrent registrations of one name get
    consecutive numbers; the unique (account, name, version) constraint backs this up. Call
    it in a transaction of its own, since the lock is held until the commit. If that
    transaction rolls back, the version's folder is removed again.
    """
    _check_name(name)
    if not _is_name(account_id):  # a folder name below; ids are acct-<hex>
        raise NotFound(f"no account {account_id}")
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise UserError(f"cannot register {name}: {source_dir} is not a folder")
    if not adapter_files(source_dir):
        raise UserError(f"cannot register {name}: {source_dir} has no files")
    home = Path(models_root) / account_id / name
    staging = _stage(source_dir, home)
    try:
        lock_account(db, account_id)
        if parent is not None:
            _check_parent(db, account_id, parent)
        number = _next_version(db, account_id, name)
        final = home / str(number)
        version = ModelVersion(
            id=f"mv-{secrets.token_hex(6)}",
            account_id=account_id,
            name=name,
            version=number,
            kind=LORA_ADAPTER,
            base_model=base_model,
            spec_hash=spec_hash,
            data_hash=data_hash,
            metrics=metrics,
            checkpoint=checkpoint,
            parent=parent,
            job_id=job_id,
            dataset=dataset,
            artifact_path=str(final),
            size_bytes=sum(p.stat().st_size for p in adapter_files(staging)),
            created_at=now,
        )
        db.add(version)
        db.flush()
        _remove_on_rollback(db, final)
        _move_into_place(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return version


def resolve(db: Session, account_id: str | None, ref: str) -> ModelVersion:
    """The version `ref` names, `NAME` (its latest) or `NAME@N`, among `account_id`'s models.

    Other accounts' models do not exist as far as the caller can tell: NotFound, never
    Forbidden. `account_id=None` (admins) searches every account; the name must then
    belong to one account only.
    """
    name, number = parse_ref(ref)
    versions = list_versions(db, account_id, name)
    owners = sorted({v.account_id for v in versions})
    if len(owners) > 1:
        raise Conflict(
            f"several accounts have a model named {name!r} ({', '.join(owners)}); "
            "say which account (`?account=` in the API)"
        )
    if number is None:
        return versions[-1]
    for version in versions:
        if version.version == number:
            return version
    raise NotFound(
        f"model {name!r} has no version {number}; its latest is {name}@{versions[-1].version}"
    )


def list_versions(
    db: Session, account_id: str | None, name: str | None = None
) -> list[ModelVersion]:
    """Versions owned by `account_id` (None: every account), oldest first within a name.

    With `name`, an unknown name is NotFound rather than an empty list.
    """
    query = select(ModelVersion).order_by(
        ModelVersion.account_id, ModelVersion.name, ModelVersion.version
    )
    if account_id is not None:
        query = query.where(ModelVersion.account_id == account_id)
    if name is not None:
        _check_name(name)
        query = query.where(ModelVersion.name == name)
    versions = list(db.scalars(query))
    if name is not None and not versions:
        raise NotFound(f"no model named {name!r}")
    return versions


def view(version: ModelVersion) -> dict:
    """What the API shows of a version (not where its files live on the coordinator)."""
    return {
        "id": version.id,
        "account_id": version.account_id,
        "name": version.name,
        "version": version.version,
        "ref": f"{version.name}@{version.version}",
        "kind": version.kind,
        "base_model": version.base_model,
        "spec_hash": version.spec_hash,
        "data_hash": version.data_hash,
        "metrics": version.metrics or {},
        "checkpoint": version.checkpoint,
        "parent": version.parent,
        "job_id": version.job_id,
        "dataset": version.dataset,
        "size_bytes": version.size_bytes,
        "created_at": version.created_at,
    }


def pack(version: ModelVersion) -> bytes:
    """The version's files as a zip (for downloads)."""
    from computeswarm.jobs.upload import pack_working_dir

    folder = Path(version.artifact_path)
    if not folder.is_dir():
        raise SystemError_(f"the files of {version.name}@{version.version} are missing: {folder}")
    return pack_working_dir(folder, max_bytes=version.size_bytes)


def hash_files(paths: Iterable[Path]) -> str:
    """sha256 over the files' contents, in sorted path order (folders: their files, sorted).

    Each file's content is preceded by its length, so moving bytes from one file to the
    next changes the hash. Names are not hashed: the same data under other names hashes
    the same.
    """
    files: list[Path] = []
    for path in sorted(Path(p) for p in paths):
        files.extend(adapter_files(path) if path.is_dir() else [path])
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.stat().st_size.to_bytes(8, "big"))
        with path.open("rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def parse_ref(ref: str) -> tuple[str, int | None]:
    """`NAME` -> (NAME, None), `NAME@N` -> (NAME, N); anything else is an ApiError (400)."""
    name, at, number = ref.partition("@")
    usage = f"model reference {ref!r} is not NAME or NAME@N (N = 1, 2, ...)"
    if not _is_name(name):
        raise ApiError(usage)
    if not at:
        return name, None
    if not (number.isascii() and number.isdigit()) or int(number) < 1:  # "²" isdigit
        raise ApiError(usage)
    return name, int(number)


def _is_name(name: str) -> bool:
    return MODEL_NAME.fullmatch(name) is not None


def _check_name(name: str) -> None:
    if not _is_name(name):
        raise ApiError(
            f"model name {name!r} is not valid: 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


def adapter_files(root: Path) -> list[Path]:
    """The regular files under `root`, sorted; symlinks and special files are refused
    (a link could point at the coordinator's own files and ship them in a download)."""
    files = []
    for folder, dirs, names in os.walk(root):
        for entry in (*dirs, *names):
            path = Path(folder) / entry
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise UserError(f"cannot register {root}: {path} is a symlink")
            if entry in names:
                if not stat.S_ISREG(mode):
                    raise UserError(f"cannot register {root}: {path} is not a regular file")
                files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _stage(source_dir: Path, home: Path) -> Path:
    """A complete copy of `source_dir` under a staging name in `home` (same filesystem as
    the final folder, so moving it into place is one rename)."""
    home.mkdir(parents=True, exist_ok=True)
    staging = home / f"{STAGING_PREFIX}{secrets.token_hex(6)}"
    try:
        shutil.copytree(source_dir, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def lock_account(db: Session, account_id: str) -> None:
    # A no-op write: PostgreSQL locks the account's row, SQLite takes its write lock; either
    # way the next version number is read by one registration at a time per account.
    locked = db.execute(
        update(Account)
        .where(Account.id == account_id)
        .values(role=Account.role)
        .execution_options(synchronize_session=False)
    )
    if locked.rowcount == 0:
        raise NotFound(f"no account {account_id}")


def _check_parent(db: Session, account_id: str, parent: str) -> None:
    found = db.get(ModelVersion, parent)
    if found is None or found.account_id != account_id:
        raise NotFound(f"no model version {parent} to start from")


def _next_version(db: Session, account_id: str, name: str) -> int:
    latest = db.scalar(
        select(func.max(ModelVersion.version)).where(
            ModelVersion.account_id == account_id, ModelVersion.name == name
        )
    )
    return (latest or 0) + 1


def _remove_on_rollback(db: Session, final: Path) -> None:
    """If the transaction that adds this version rolls back, its folder goes too."""
    committed = False

    def on_commit(_session: Session) -> None:
        nonlocal committed
        committed = True

    def on_rollback(_session: Session) -> None:
        if not committed:
            shutil.rmtree(final, ignore_errors=True)

    event.listen(db, "after_commit", on_commit, once=True)
    event.listen(db, "after_rollback", on_rollback, once=True)


def _move_into_place(staging: Path, final: Path) -> None:
    if final.exists():
        # Left by a registration that died between its rename and its commit: no row owns
        # it (the number is past every committed version, and the account is locked).
        shutil.rmtree(final)
    os.rename(staging, final)


def made_by(db, job_id: str) -> ModelVersion | None:
    """The version a job registered, if any."""
    return db.scalars(select(ModelVersion).where(ModelVersion.job_id == job_id)).first()
