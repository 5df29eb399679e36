"""Dataset routes: push (which chunks are missing, each chunk, the version), read
(listings, versions, manifests, chunks), share; and a lease's datasets for its sellers."""

from __future__ import annotations

from fastapi import APIRouter, Body, Depends, Response

from computeswarm.cluster.accounts.roles import Caller
from computeswarm.cluster.api import deps
from computeswarm.cluster.api.schemas import (
    ChunksAsked,
    ChunksMissing,
    ChunkStored,
    DatasetVersionView,
    DatasetView,
    LeaseDataset,
    ManifestUpload,
    ShareRequest,
)
from computeswarm.cluster.services.datasets import DatasetsService

router = APIRouter(tags=["datasets"])
Datasets = Depends(deps.datasets)
Who = Depends(deps.caller)
OCTETS = "application/octet-stream"
OWNER = None  # ?owner=ACCOUNT: a dataset another account shared with you


@router.get("/v1/datasets", response_model=list[DatasetVersionView])
def list_datasets(who: Caller = Who, datasets: DatasetsService = Datasets) -> list[dict]:
    """Your datasets and those shared with you, each at its newest version."""
    return datasets.list(who)


@router.get("/v1/datasets/{name}", response_model=DatasetView)
def get_dataset(
    name: str, owner: str | None = OWNER, who: Caller = Who, datasets: DatasetsService = Datasets
) -> dict:
    """Every version of one dataset, and (yours) whom it is shared with."""
    return datasets.show(who, name, owner)


@router.get("/v1/datasets/{name}/versions/{version}", response_model=DatasetVersionView)
def get_dataset_version(
    name: str,
    version: str,
    owner: str | None = OWNER,
    who: Caller = Who,
    datasets: DatasetsService = Datasets,
) -> dict:
    """One version: `N`, or `latest`."""
    return datasets.version(who, name, version, owner)


@router.get("/v1/datasets/{name}/versions/{version}/manifest")
def get_dataset_manifest(
    name: str,
    version: str,
    owner: str | None = OWNER,
    who: Caller = Who,
    datasets: DatasetsService = Datasets,
) -> dict:
    """The version's files: path, size, sha256 and chunks of each."""
    return datasets.manifest(who, name, version, owner)


@router.get("/v1/datasets/{name}/chunks/{sha256}", response_class=Response)
def get_chunk(
    name: str,
    sha256: str,
    owner: str | None = OWNER,
    who: Caller = Who,
    datasets: DatasetsService = Datasets,
) -> Response:
    return Response(datasets.chunk(who, name, sha256, owner), media_type=OCTETS)


@router.post("/v1/datasets/{name}/chunks/missing", response_model=ChunksMissing)
def missing_chunks(
    name: str, body: ChunksAsked, who: Caller = Who, datasets: DatasetsService = Datasets
) -> dict:
    """Which of these chunks the store lacks: a push sends only those (and resumes)."""
    asked = [(c.sha256, c.size) for c in body.chunks]
    return {"missing": datasets.missing(who, name, asked)}


@router.put("/v1/datasets/{name}/chunks/{sha256}", response_model=ChunkStored)
def put_chunk(
    name: str,
    sha256: str,
    data: bytes = Body(..., media_type=OCTETS),
    who: Caller = Who,
    datasets: DatasetsService = Datasets,
) -> dict:
    """One chunk, named by the sha256 of its bytes."""
    return {"sha256": sha256, "stored": datasets.put_chunk(who, name, sha256, data)}


@router.post("/v1/datasets/{name}/versions", response_model=DatasetVersionView)
def commit_version(
    name: str, body: ManifestUpload, who: Caller = Who, datasets: DatasetsService = Datasets
) -> dict:
    """The next version: every chunk the manifest names must be in the store."""
    return datasets.commit(who, name, body.manifest)


@router.post("/v1/datasets/{name}/shares", response_model=DatasetView)
def share_dataset(
    name: str, body: ShareRequest, who: Caller = Who, datasets: DatasetsService = Datasets
) -> dict:
    """Let another account read this dataset, every version (`revoke: true` stops it)."""
    return datasets.share(who, name, body.account, body.revoke)


@router.get("/v1/leases/{lease_id}/datasets", response_model=list[LeaseDataset])
def lease_datasets(
    lease_id: str, who: Caller = Who, datasets: DatasetsService = Datasets
) -> list[dict]:
    """For a seller in the lease: the dataset versions its job reads, with manifests."""
    return datasets.lease_datasets(who, lease_id)


@router.get("/v1/leases/{lease_id}/chunks/{sha256}", response_class=Response)
def lease_chunk(
    lease_id: str, sha256: str, who: Caller = Who, datasets: DatasetsService = Datasets
) -> Response:
    return Response(datasets.lease_chunk(who, lease_id, sha256), media_type=OCTETS)
