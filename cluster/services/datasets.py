"""What the coordinator does with datasets: take pushed chunks and versions, hand out
manifests and chunks to their readers (owners, shared accounts, the sellers of a lease
that reads them), share, and pin a spec's dataset to one version at submit.

Chunks are checked against their sha256 on the way in; a version is recorded only once
its manifest and every chunk it names are in the store.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy import select

from computeswarm.cluster.accounts.roles import Caller, Role
from computeswarm.cluster.datasets import registry
from computeswarm.cluster.errors import ApiError, Busy, NotFound
from computeswarm.cluster.leases.states import LeaseState, MemberState
from computeswarm.cluster.objects.client import UNAVAILABLE, ObjectMissing, ObjectStore
from computeswarm.cluster.objects.layout import chunk_key, dataset_prefix, manifest_key
from computeswarm.cluster.store.db import Store
from computeswarm.cluster.store.models import Job, Lease, LeaseMember, Seller
from computeswarm.data.manifest import SHA256, Manifest
from computeswarm.data.refs import DatasetRef, is_dataset_ref, may_name_a_dataset, parse_ref
from computeswarm.jobs.errors import SpecError
from computeswarm.jobs.spec import AnyJob

MAX_CHUNK_BYTES = 8 * 2**20
MAX_MANIFEST_BYTES = 64 * 2**20  # a request body on /v1/datasets/ (chunks are smaller)
MAX_ASKED = 10_000  # chunks per "which are missing?" request
USAGE_TTL_S = 5.0
LEASE_STATES = (LeaseState.PROVISIONING.value, LeaseState.RUNNING.value)


class DatasetsService:
    def __init__(
        self,
        store: Store,
        clock: Callable[[], float],
        objects: Callable[[], ObjectStore | None],
        quota_bytes: int,
    ):
        self.store, self.clock = store, clock
        self.objects = objects  # the store's root client, once it is up
        self.quota_bytes = quota_bytes
        self._manifests: OrderedDict[str, Manifest] = OrderedDict()  # by id, a small LRU
        self._chunk_sets: dict[str, frozenset[str]] = {}  # manifest id -> its chunks
        self._usage: dict[str, tuple[float, int]] = {}  # account -> (counted at, bytes)
        self._lock = threading.Lock()

    # -- pushing ------------------------------------------------------------------------

    def missing(self, caller: Caller, name: str, chunks: list[tuple[str, int]]) -> list[str]:
        """Which of these chunks the caller's dataset `name` lacks (only those are sent).
        Refuses up front when sending them would take the account past its quota."""
        _buyer(caller)
        registry.check_name(name)
        if len(chunks) > MAX_ASKED:
            raise ApiError(f"ask about at most {MAX_ASKED} chunks at a time")
        for sha, _ in chunks:
            _check_sha(sha)
        present = self._chunks_of(caller.account_id, name)
        missing = {sha: size for sha, size in chunks if sha not in present}
        self.check_quota(caller.account_id, sum(missing.values()))
        return list(missing)

    def put_chunk(self, caller: Caller, name: str, sha: str, data: bytes) -> bool:
        """Store one chunk; False if it was there already. Its bytes must hash to `sha`."""
        _buyer(caller)
        registry.check_name(name)
        _check_sha(sha)
        if len(data) > MAX_CHUNK_BYTES:
            raise ApiError(f"a chunk is at most {MAX_CHUNK_BYTES} bytes")
        if hashlib.sha256(data).hexdigest() != sha:
            raise ApiError(f"chunk {sha[:12]}: its bytes do not hash to its name")
        if self._chunks_of(caller.account_id, name, only=sha):
            return False
        self.check_quota(caller.account_id, len(data), cached=True)
        try:
            self._store().put_bytes(chunk_key(caller.account_id, name, sha), data)
        except UNAVAILABLE as e:
            raise Busy(f"the object store cannot take chunks now: {e}") from e
        with self._lock:
            at, used = self._usage.get(caller.account_id, (0.0, 0))
            self._usage[caller.account_id] = (at, used + len(data))
        return True

    def commit(self, caller: Caller, name: str, manifest_data: dict) -> dict:
        """Record the pushed folder as the next version of `name`."""
        _buyer(caller)
        registry.check_name(name)
        try:
            manifest = Manifest.model_validate(manifest_data)
        except ValidationError as e:
            raise ApiError(f"not a valid manifest: {e.errors()[0]['msg']}") from None
        present = self._chunks_of(caller.account_id, name)
        absent = [c for c in manifest.chunks() if present.get(c.sha256) != c.size]
        if absent:
            raise ApiError(
                f"{len(absent)} chunk(s) of this version are not in the store yet "
                f"(first {absent[0].sha256[:12]}); send them, then commit again"
            )
        try:
            self._store().put_bytes(
                manifest_key(caller.account_id, name, manifest.id), manifest.to_bytes()
            )
        except UNAVAILABLE as e:
            raise Busy(f"the object store cannot take the manifest now: {e}") from e
        with self.store.transaction() as db:
            version = registry.add_version(db, caller.account_id, name, manifest, self.clock())
            dataset = registry.readable(db, caller.account_id, name, None)
            return registry.view(dataset, version, None)

    # -- reading ------------------------------------------------------------------------

    def list(self, caller: Caller) -> list[dict]:
        """The caller's datasets and those shared with it, each at its newest version."""
        with self.store.transaction() as db:
            out = []
            for dataset, owner in registry.listing(db, caller.account_id):
                newest = registry.version_of(db, dataset, None)
                out.append({**registry.view(dataset, newest, owner), "versions": newest.version})
            return out

    def show(self, caller: Caller, name: str, owner: str | None) -> dict:
        with self.store.transaction() as db:
            dataset = registry.readable(db, caller.account_id, name, owner)
            mine = dataset.account_id == caller.account_id
            return {
                "name": name,
                "owner": owner,
                "versions": [
                    registry.view(dataset, v, owner) for v in registry.versions(db, dataset)
                ],
                "shared_with": registry.readers(db, dataset) if mine else [],
            }

    def version(self, caller: Caller, name: str, version: str, owner: str | None) -> dict:
        with self.store.transaction() as db:
            dataset = registry.readable(db, caller.account_id, name, owner)
            found = registry.version_of(db, dataset, _number(version))
            return registry.view(dataset, found, owner)

    def manifest(self, caller: Caller, name: str, version: str, owner: str | None) -> dict:
        with self.store.transaction() as db:
            dataset = registry.readable(db, caller.account_id, name, owner)
            found = registry.version_of(db, dataset, _number(version))
            owner_id, manifest_id = dataset.account_id, found.manifest_id
        return self._manifest(owner_id, name, manifest_id).model_dump(mode="json")

    def chunk(self, caller: Caller, name: str, sha: str, owner: str | None) -> bytes:
        _check_sha(sha)
        with self.store.transaction() as db:
            owner_id = registry.readable(db, caller.account_id, name, owner).account_id
        return self._read_chunk(owner_id, name, sha)

    def share(self, caller: Caller, name: str, account: str, revoke: bool) -> dict:
        _buyer(caller)
        with self.store.transaction() as db:
            registry.share(db, caller.account_id, name, account, self.clock(), revoke)
        return self.show(caller, name, None)

    # -- the sellers of a lease ---------------------------------------------------------

    def lease_datasets(self, caller: Caller, lease_id: str) -> list[dict]:
        """The dataset versions a lease's job reads, with their manifests: for the agents of
        its sellers, which fetch them into their caches before their nodes start."""
        pinned = self._lease_pins(caller, lease_id)
        return [
            {
                "ref": ref,
                "id": pin["id"],
                "manifest": self._pin_manifest(pin).model_dump(mode="json"),
            }
            for ref, pin in pinned.items()
        ]

    def lease_chunk(self, caller: Caller, lease_id: str, sha: str) -> bytes:
        _check_sha(sha)
        for pin in self._lease_pins(caller, lease_id).values():
            self._pin_manifest(pin)
            if sha in self._chunk_sets.get(pin["id"], ()):
                return self._read_chunk(pin["owner"], pin["name"], sha)
        raise NotFound(f"no chunk {sha[:12]} in lease {lease_id}'s datasets")

    # -- submit -------------------------------------------------------------------------

    def pin(self, caller: Caller, spec: AnyJob, working_dir: Path | None) -> tuple[AnyJob, dict]:
        """The spec with its dataset pinned to one version (`NAME` becomes `NAME@N` of the
        newest), and the record of what it pinned; a working_dir file is left as it is."""
        value = getattr(spec, "data_file", None)
        if value is None:
            return spec, {}
        if is_dataset_ref(value):
            try:
                ref = parse_ref(value)
            except ValueError as e:
                raise SpecError(str(e)) from None
        elif (working_dir and (working_dir / value).is_file()) or not may_name_a_dataset(value):
            return spec, {}
        else:
            ref = DatasetRef(name=value, version=0)
        with self.store.transaction() as db:
            try:
                dataset = registry.readable(db, caller.account_id, ref.name, ref.owner)
                found = registry.version_of(db, dataset, ref.version or None)
            except NotFound as e:
                if ref.version:
                    raise SpecError(f"dataset {value!r}: {e}") from None
                raise SpecError(
                    f"dataset {value!r} is neither a file in the working_dir nor one of your "
                    "datasets (`computeswarm datasets push`)"
                ) from None
            owner_id, manifest_id = dataset.account_id, found.manifest_id
            ref = DatasetRef(ref.name, found.version, ref.owner, ref.path)
        manifest = self._manifest(owner_id, ref.name, manifest_id)
        entry = _chosen_file(manifest, ref)
        ref = DatasetRef(ref.name, ref.version, ref.owner, entry.path)
        pin = {
            "owner": owner_id,
            "name": ref.name,
            "version": ref.version,
            "id": manifest_id,
            "path": entry.path,
            "sha256": entry.sha256,
        }
        return spec.with_data_file(str(ref)), {ref.version_key: pin}

    # -- helpers ------------------------------------------------------------------------

    def _lease_pins(self, caller: Caller, lease_id: str) -> dict[str, dict]:
        with self.store.transaction() as db:
            job = lease_job(db, caller, lease_id)
            return dict(job.datasets or {}) if job else {}

    def _pin_manifest(self, pin: dict) -> Manifest:
        return self._manifest(pin["owner"], pin["name"], pin["id"])

    def _manifest(self, owner_id: str, name: str, manifest_id: str) -> Manifest:
        with self._lock:
            if manifest_id in self._manifests:
                self._manifests.move_to_end(manifest_id)
                return self._manifests[manifest_id]
        try:
            raw = self._store().get_bytes(manifest_key(owner_id, name, manifest_id))
        except ObjectMissing:
            raise NotFound(f"the manifest of dataset {name} is missing from the store") from None
        except UNAVAILABLE as e:
            raise Busy(f"the object store cannot be read now: {e}") from e
        manifest = Manifest.model_validate_json(raw)
        if manifest.id != manifest_id:
            raise Busy(f"the stored manifest of dataset {name} does not match its id")
        with self._lock:
            self._manifests[manifest_id] = manifest
            self._chunk_sets[manifest_id] = frozenset(c.sha256 for c in manifest.chunks())
            while len(self._manifests) > 64:
                gone, _ = self._manifests.popitem(last=False)
                self._chunk_sets.pop(gone, None)
        return manifest

    def _read_chunk(self, owner_id: str, name: str, sha: str) -> bytes:
        try:
            return self._store().get_bytes(chunk_key(owner_id, name, sha))
        except ObjectMissing:
            raise NotFound(f"no chunk {sha[:12]} in dataset {name}") from None
        except UNAVAILABLE as e:
            raise Busy(f"the object store cannot be read now: {e}") from e

    def _chunks_of(self, account_id: str, name: str, only: str | None = None) -> dict[str, int]:
        """Chunks in the store under the dataset's prefix: {sha256: size}."""
        prefix = dataset_prefix(account_id, name) + "chunks/" + (only or "")
        try:
            return {o.key.rsplit("/", 1)[1]: o.size for o in self._store().list(prefix)}
        except UNAVAILABLE as e:
            raise Busy(f"the object store cannot be listed now: {e}") from e

    def check_quota(self, account_id: str, incoming: int, cached: bool = False) -> None:
        """Refuse what would take the account past its quota. `cached`: from a count at
        most USAGE_TTL_S old plus what was stored since (one listing per push, not one
        per chunk)."""
        with self._lock:
            at, used = self._usage.get(account_id, (0.0, 0))
        if not cached or self.clock() - at > USAGE_TTL_S:
            try:
                used = self._store().bytes_of(account_id)
            except UNAVAILABLE as e:
                raise Busy(f"the object store is unreachable ({type(e).__name__})") from e
            with self._lock:
                self._usage[account_id] = (self.clock(), used)
        if used + incoming > self.quota_bytes:
            raise ApiError(
                f"storage quota: {incoming} more bytes would take you past your "
                f"{self.quota_bytes} ({used} used); delete runs or ask the operator for more"
            )

    def _store(self) -> ObjectStore:
        store = self.objects()
        if store is None:
            raise Busy("the object store is not started yet; retry soon")
        return store


def lease_job(db, caller: Caller, lease_id: str, ended_after: float | None = None):
    """The job of a lease the calling seller is in (None for a lease without one), or
    NotFound. A running lease by default; with `ended_after`, also one that ended (or
    dropped this seller) since then, for what a node hands back as it stops."""
    caller.require(Role.SELLER)
    query = (
        select(LeaseMember, Lease)
        .join(Seller, Seller.id == LeaseMember.seller_id)
        .join(Lease, Lease.id == LeaseMember.lease_id)
        .where(LeaseMember.lease_id == lease_id, Seller.account_id == caller.account_id)
    )
    if ended_after is None:
        query = query.where(
            LeaseMember.state.in_([MemberState.ASSIGNED.value, MemberState.ATTACHED.value]),
            Lease.state.in_(LEASE_STATES),
        )
    row = db.execute(query).first()
    if row is None:
        raise NotFound(f"no lease {lease_id}")
    if ended_after is not None and (row.Lease.ended_at or ended_after) < ended_after:
        raise NotFound(f"no lease {lease_id}")
    return db.scalar(select(Job).where(Job.id == row.Lease.job_id)) if row.Lease.job_id else None


def _chosen_file(manifest: Manifest, ref: DatasetRef):
    if ref.path is not None:
        entry = manifest.file(ref.path)
        if entry is None:
            raise SpecError(f"dataset {ref.version_key} has no file {ref.path!r}")
        return entry
    if len(manifest.files) != 1:
        names = ", ".join(f.path for f in manifest.files[:5])
        raise SpecError(
            f"dataset {ref.version_key} holds {len(manifest.files)} files ({names}); "
            f"name one: {ref.version_key}/FILE"
        )
    return manifest.files[0]


def _buyer(caller: Caller) -> None:
    caller.require(Role.BUYER, Role.ADMIN)


def _check_sha(sha: str) -> None:
    if not SHA256.fullmatch(sha):
        raise ApiError(f"not a sha256: {sha[:80]!r}")


def _number(version: str) -> int | None:
    if version == "latest":
        return None
    if not version.isdigit():
        raise ApiError(f"a version is a number or 'latest', not {version!r}")
    return int(version)
