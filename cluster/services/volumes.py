"""What the coordinator does with volumes: make, list, show, remove them for their owner;
hand the sellers of a lease that mounts one its newest contents (manifest and chunks);
take back what the job wrote (only the chunks the volume lacks, then a commit merged per
file onto whatever was committed meanwhile), within the volume's size limit.

A volume is only its owner's: another account's request, and a lease of another
account's job, find no such volume.
"""

from __future__ import annotations

import hashlib

from pydantic import ValidationError
from sqlalchemy import select

from computeswarm.cluster.accounts.roles import Caller, Role
from computeswarm.cluster.config import StorageConfig
from computeswarm.cluster.errors import ApiError, Busy, Conflict, NotFound
from computeswarm.cluster.ledger.storage import StorageMeter, storage_micros
from computeswarm.cluster.models.registry import lock_account
from computeswarm.cluster.objects.client import UNAVAILABLE, ObjectMissing, ObjectStore
from computeswarm.cluster.objects.layout import (
    volume_chunk_key,
    volume_manifest_key,
    volume_prefix,
)
from computeswarm.cluster.services.datasets import (
    MAX_ASKED,
    MAX_CHUNK_BYTES,
    DatasetsService,
    lease_job,
)
from computeswarm.cluster.store.models import Job, Volume
from computeswarm.cluster.volumes import registry
from computeswarm.data.manifest import SHA256, Manifest
from computeswarm.data.merge import merge
from computeswarm.jobs.errors import SpecError
from computeswarm.jobs.money import money_text
from computeswarm.jobs.spec import AnyJob
from computeswarm.jobs.states import JobState

EMPTY = Manifest(files=())
COMMIT_GRACE_S = 900.0  # a node's last commit may arrive this long after its lease ended
DEFAULT_SIZE = 10 * 2**30


class VolumesService:
    def __init__(self, datasets: DatasetsService, storage: StorageConfig):
        self.store, self.clock, self.objects = datasets.store, datasets.clock, datasets.objects
        self.datasets = datasets  # the account's storage quota, counted once for both
        self.meter = StorageMeter(
            self.store, self.clock, self.objects, storage.price_per_gb_hour, storage.meter_every_s
        )

    # -- the owner ----------------------------------------------------------------------

    def create(self, caller: Caller, name: str, size_limit: int | None) -> dict:
        _buyer(caller)
        size = DEFAULT_SIZE if size_limit is None else size_limit
        quota = self.datasets.quota_bytes
        if not 0 < size <= quota:
            raise ApiError(f"a volume's size is 1 byte to your storage quota ({quota} bytes)")
        with self.store.transaction() as db:
            return registry.view(registry.create(db, caller.account_id, name, size, self.clock()))

    def list(self, caller: Caller) -> list[dict]:
        with self.store.transaction() as db:
            return [registry.view(v) for v in registry.listing(db, caller.account_id)]

    def show(self, caller: Caller, name: str) -> dict:
        with self.store.transaction() as db:
            return registry.view(registry.owned(db, caller.account_id, name))

    def ls(self, caller: Caller, name: str, path: str = "") -> list[dict]:
        """The files of the newest commit under `path` (a folder or one file)."""
        path = path.strip("/")
        head = self._head(self._owned(caller, name))
        return [
            {"path": f.path, "size": f.size, "sha256": f.sha256}
            for f in head.files
            if not path or f.path == path or f.path.startswith(path + "/")
        ]

    def manifest(self, caller: Caller, name: str) -> dict:
        return self._head(self._owned(caller, name)).model_dump(mode="json")

    def chunk(self, caller: Caller, name: str, sha: str) -> bytes:
        return self._read_chunk(self._owned(caller, name), _check_sha(sha))

    def remove(self, caller: Caller, name: str) -> dict:
        """The volume and everything it holds; refused while a job that mounts it is not
        finished (its nodes would commit into nothing)."""
        _buyer(caller)
        with self.store.transaction() as db:
            volume = registry.owned(db, caller.account_id, name)
            if users := self._unfinished_users(db, caller.account_id, name):
                raise Conflict(
                    f"volume {name!r} is mounted by unfinished job(s) {', '.join(users)}"
                )
            gone = registry.view(volume)
            registry.remove(db, volume)
        try:
            self._store().delete_prefix(volume_prefix(caller.account_id, gone["id"]))
        except UNAVAILABLE as e:  # the rows are gone: the objects are unreachable garbage
            raise Busy(f"volume removed; the store could not delete its objects yet: {e}") from e
        return gone

    # -- submit -------------------------------------------------------------------------

    def check_spec(self, caller: Caller, spec: AnyJob) -> None:
        """Every volume the spec mounts is one of the caller's."""
        with self.store.transaction() as db:
            for path, mount in spec.volumes.items():
                if registry.find(db, caller.account_id, mount.name) is None:
                    raise SpecError(
                        f"volumes: {path}: you have no volume {mount.name!r} "
                        f"(`computeswarm volumes create {mount.name}`)"
                    )

    def quote(self, caller: Caller, spec: AnyJob) -> dict:
        """What storage costs the buyer while the job runs (and after: it is billed until
        removed): all it keeps now, and each volume the job mounts when full."""
        price, hours = self.meter.price, spec.max_duration / 3600
        held = self.meter.held(caller.account_id)
        with self.store.transaction() as db:
            mounted = {
                m.name: registry.find(db, caller.account_id, m.name) for m in spec.volumes.values()
            }
        return {
            "price_per_gb_hour": str(price),
            "held_bytes": held,
            "per_hour": money_text(storage_micros(held, 3600, price)),
            "per_month": money_text(storage_micros(held, 730 * 3600, price)),
            "during_job": money_text(storage_micros(held, hours * 3600, price)),
            "volumes": {
                name: {
                    "size_bytes": v.size_bytes,
                    "size_limit_bytes": v.size_limit_bytes,
                    "per_hour_when_full": money_text(
                        storage_micros(v.size_limit_bytes, 3600, price)
                    ),
                }
                for name, v in mounted.items()
                if v is not None
            },
        }

    # -- the sellers of a lease ---------------------------------------------------------

    def lease_volumes(self, caller: Caller, lease_id: str) -> list[dict]:
        """The volumes the lease's job mounts, each with its newest contents."""
        with self.store.transaction() as db:
            job = lease_job(db, caller, lease_id)
            if job is None:
                return []
            mounts, owner = _mounts(job), job.account_id
            volumes = {v.name: (v.id, v.head) for v in registry.listing(db, owner)}
        out = []
        for path, mount in mounts.items():
            if mount["name"] not in volumes:
                raise NotFound(f"volume {mount['name']!r} is gone")
            volume_id, head = volumes[mount["name"]]
            manifest = self._manifest(owner, volume_id, head)
            out.append(
                {
                    "mount": path,
                    "name": mount["name"],
                    "readonly": mount["readonly"],
                    "head": head,
                    "manifest": manifest.model_dump(mode="json"),
                }
            )
        return out

    def lease_chunk(self, caller: Caller, lease_id: str, name: str, sha: str) -> bytes:
        volume = self._lease_volume(caller, lease_id, name, write=False)
        return self._read_chunk(volume, _check_sha(sha))

    def lease_missing(
        self, caller: Caller, lease_id: str, name: str, chunks: list[tuple[str, int]]
    ) -> list[str]:
        return self._missing(self._lease_volume(caller, lease_id, name, write=True), chunks)

    def lease_put_chunk(
        self, caller: Caller, lease_id: str, name: str, sha: str, data: bytes
    ) -> bool:
        volume = self._lease_volume(caller, lease_id, name, write=True)
        return self._put_chunk(volume, sha, data)

    def lease_commit(
        self, caller: Caller, lease_id: str, name: str, base: str | None, theirs: dict
    ) -> dict:
        """What a node's copy of the volume holds now, started from commit `base`: merged
        onto the newest commit, per file (the last commit wins)."""
        volume = self._lease_volume(caller, lease_id, name, write=True)
        return self._commit(volume, base, theirs, lease_id)

    # -- the owner's own pushes (`computeswarm cp ./folder vol:NAME`) ---------------------

    def missing(self, caller: Caller, name: str, chunks: list[tuple[str, int]]) -> list[str]:
        _buyer(caller)
        return self._missing(self._owned(caller, name), chunks)

    def put_chunk(self, caller: Caller, name: str, sha: str, data: bytes) -> bool:
        _buyer(caller)
        return self._put_chunk(self._owned(caller, name), sha, data)

    def commit(self, caller: Caller, name: str, base: str | None, theirs: dict) -> dict:
        _buyer(caller)
        return self._commit(self._owned(caller, name), base, theirs, None)

    # -- one volume -----------------------------------------------------------------------

    def _missing(self, volume: Volume, chunks: list[tuple[str, int]]) -> list[str]:
        if len(chunks) > MAX_ASKED:
            raise ApiError(f"ask about at most {MAX_ASKED} chunks at a time")
        present = self._chunks_of(volume)
        missing = {_check_sha(sha): size for sha, size in chunks if sha not in present}
        self.datasets.check_quota(volume.account_id, sum(missing.values()))
        return list(missing)

    def _put_chunk(self, volume: Volume, sha: str, data: bytes) -> bool:
        _check_sha(sha)
        if len(data) > MAX_CHUNK_BYTES:
            raise ApiError(f"a chunk is at most {MAX_CHUNK_BYTES} bytes")
        if hashlib.sha256(data).hexdigest() != sha:
            raise ApiError(f"chunk {sha[:12]}: its bytes do not hash to its name")
        self.datasets.check_quota(volume.account_id, len(data), cached=True)
        try:
            self._store().put_bytes(volume_chunk_key(volume.account_id, volume.id, sha), data)
        except UNAVAILABLE as e:
            raise Busy(f"the object store cannot take chunks now: {e}") from e
        return True

    def _commit(self, volume: Volume, base: str | None, data: dict, lease_id: str | None) -> dict:
        try:
            theirs = Manifest.model_validate(data)
        except ValidationError as e:
            raise ApiError(f"not a valid manifest: {e.errors()[0]['msg']}") from None
        present = self._chunks_of(volume)
        if absent := [c for c in theirs.chunks() if present.get(c.sha256) != c.size]:
            raise ApiError(
                f"{len(absent)} chunk(s) of this commit are not in the store yet "
                f"(first {absent[0].sha256[:12]}); send them, then commit again"
            )
        start = self._manifest(volume.account_id, volume.id, base)
        self._put_manifest(volume, theirs)  # the base of the writer's next commit
        with self.store.transaction() as db:
            lock_account(db, volume.account_id)  # commits to one account's volumes in order
            current = db.get(Volume, volume.id)
            if current is None:
                raise NotFound(f"volume {volume.name!r} is gone")
            head = self._manifest(current.account_id, current.id, current.head)
            merged = merge(head, start, theirs)
            refused = None
            if merged.size > current.size_limit_bytes:
                refused = (
                    f"volume {volume.name!r} is full: this commit would hold {merged.size} "
                    f"bytes, its limit is {current.size_limit_bytes}; nothing was committed"
                )
                current.last_error = refused  # shown by `volumes list`
            elif merged.id != current.head:
                self._put_manifest(current, merged)
                registry.record_commit(db, current, base, merged, lease_id, self.clock())
            shown = registry.view(current)
        if refused:
            raise ApiError(refused)
        return shown

    # -- helpers ------------------------------------------------------------------------

    def _owned(self, caller: Caller, name: str) -> Volume:
        with self.store.transaction() as db:
            return _detached(db, registry.owned(db, caller.account_id, name))

    def _lease_volume(self, caller: Caller, lease_id: str, name: str, write: bool) -> Volume:
        """The volume `name` of the lease's job, if the job mounts it (read-write for
        `write`). A node's last commit may come a while after its lease ended."""
        ended_after = self.clock() - COMMIT_GRACE_S if write else None
        with self.store.transaction() as db:
            job = lease_job(db, caller, lease_id, ended_after)
            mounted = [m for m in _mounts(job).values() if m["name"] == name]
            if not mounted or (write and all(m["readonly"] for m in mounted)):
                raise NotFound(
                    f"lease {lease_id} mounts no volume {name!r}" + " read-write" * write
                )
            volume = registry.find(db, job.account_id, name)
            if volume is None:
                raise NotFound(f"volume {name!r} is gone")
            return _detached(db, volume)

    def _unfinished_users(self, db, account_id: str, name: str) -> list[str]:
        unfinished = [s.value for s in JobState if not s.is_terminal]
        jobs = db.scalars(
            select(Job).where(Job.account_id == account_id, Job.state.in_(unfinished))
        )
        return [j.id for j in jobs if name in {m["name"] for m in _mounts(j).values()}]

    def _head(self, volume: Volume) -> Manifest:
        return self._manifest(volume.account_id, volume.id, volume.head)

    def _manifest(self, owner: str, volume_id: str, manifest_id: str | None) -> Manifest:
        if manifest_id is None:
            return EMPTY
        try:
            raw = self._store().get_bytes(volume_manifest_key(owner, volume_id, manifest_id))
        except ObjectMissing:
            raise NotFound("a commit of this volume is missing from the store") from None
        except UNAVAILABLE as e:
            raise Busy(f"the object store cannot be read now: {e}") from e
        manifest = Manifest.model_validate_json(raw)
        if manifest.id != manifest_id:
            raise Busy("a stored commit of this volume does not match its id")
        return manifest

    def _put_manifest(self, volume: Volume, manifest: Manifest) -> None:
        key = volume_manifest_key(volume.account_id, volume.id, manifest.id)
        try:
            self._store().put_bytes(key, manifest.to_bytes())
        except UNAVAILABLE as e:
            raise Busy(f"the object store cannot take the commit now: {e}") from e

    def _read_chunk(self, volume: Volume, sha: str) -> bytes:
        try:
            return self._store().get_bytes(volume_chunk_key(volume.account_id, volume.id, sha))
        except ObjectMissing:
            raise NotFound(f"no chunk {sha[:12]} in volume {volume.name}") from None
        except UNAVAILABLE as e:
            raise Busy(f"the object store cannot be read now: {e}") from e

    def _chunks_of(self, volume: Volume) -> dict[str, int]:
        prefix = volume_prefix(volume.account_id, volume.id) + "chunks/"
        try:
            return {o.key.rsplit("/", 1)[1]: o.size for o in self._store().list(prefix)}
        except UNAVAILABLE as e:
            raise Busy(f"the object store cannot be listed now: {e}") from e

    def _store(self) -> ObjectStore:
        store = self.objects()
        if store is None:
            raise Busy("the object store is not started yet; retry soon")
        return store


def _detached(db, volume: Volume) -> Volume:
    """The row, usable after its session ends (its attributes are loaded)."""
    db.flush()
    db.refresh(volume)
    db.expunge(volume)
    return volume


def _mounts(job: Job | None) -> dict[str, dict]:
    """{mount path: {name, readonly}} of a stored job's spec."""
    if job is None:
        return {}
    return {
        path: {"name": m["name"], "readonly": bool(m.get("readonly"))}
        for path, m in (job.spec.get("volumes") or {}).items()
    }


def _buyer(caller: Caller) -> None:
    caller.require(Role.BUYER, Role.ADMIN)


def _check_sha(sha: str) -> str:
    if not SHA256.fullmatch(sha):
        raise ApiError(f"not a sha256: {sha[:80]!r}")
    return sha
