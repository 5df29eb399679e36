"""Volume routes: the owner's (create, list, show, ls, remove, read its files), and a
lease's, for the agents of its sellers (the volumes its job mounts; chunks in and out;
the commit of what a node's copy holds)."""

from __future__ import annotations

from fastapi import APIRouter, Body, Depends, Response

from computeswarm.cluster.accounts.roles import Caller
from computeswarm.cluster.api import deps
from computeswarm.cluster.api.schemas import (
    ChunksAsked,
    ChunksMissing,
    ChunkStored,
    LeaseVolume,
    VolumeCommitRequest,
    VolumeCreate,
    VolumeFile,
    VolumeView,
)
from computeswarm.cluster.services.volumes import VolumesService

router = APIRouter(tags=["volumes"])
Volumes = Depends(deps.volumes)
Who = Depends(deps.caller)
OCTETS = "application/octet-stream"


@router.post("/v1/volumes", response_model=VolumeView, status_code=201)
def create_volume(body: VolumeCreate, who: Caller = Who, volumes: VolumesService = Volumes) -> dict:
    return volumes.create(who, body.name, body.size_bytes)


@router.get("/v1/volumes", response_model=list[VolumeView])
def list_volumes(who: Caller = Who, volumes: VolumesService = Volumes) -> list[dict]:
    return volumes.list(who)


@router.get("/v1/volumes/{name}", response_model=VolumeView)
def get_volume(name: str, who: Caller = Who, volumes: VolumesService = Volumes) -> dict:
    return volumes.show(who, name)


@router.delete("/v1/volumes/{name}", response_model=VolumeView)
def remove_volume(name: str, who: Caller = Who, volumes: VolumesService = Volumes) -> dict:
    """The volume and its files; refused while an unfinished job mounts it."""
    return volumes.remove(who, name)


@router.get("/v1/volumes/{name}/files", response_model=list[VolumeFile])
def list_files(
    name: str, path: str = "", who: Caller = Who, volumes: VolumesService = Volumes
) -> list[dict]:
    """The newest commit's files under `path`."""
    return volumes.ls(who, name, path)


@router.get("/v1/volumes/{name}/manifest")
def get_manifest(name: str, who: Caller = Who, volumes: VolumesService = Volumes) -> dict:
    return volumes.manifest(who, name)


@router.get("/v1/volumes/{name}/chunks/{sha256}", response_class=Response)
def get_chunk(
    name: str, sha256: str, who: Caller = Who, volumes: VolumesService = Volumes
) -> Response:
    return Response(volumes.chunk(who, name, sha256), media_type=OCTETS)


@router.post("/v1/volumes/{name}/chunks/missing", response_model=ChunksMissing)
def missing_chunks(
    name: str, body: ChunksAsked, who: Caller = Who, volumes: VolumesService = Volumes
) -> dict:
    return {"missing": volumes.missing(who, name, [(c.sha256, c.size) for c in body.chunks])}


@router.put("/v1/volumes/{name}/chunks/{sha256}", response_model=ChunkStored)
def put_chunk(
    name: str,
    sha256: str,
    data: bytes = Body(..., media_type=OCTETS),
    who: Caller = Who,
    volumes: VolumesService = Volumes,
) -> dict:
    return {"sha256": sha256, "stored": volumes.put_chunk(who, name, sha256, data)}


@router.post("/v1/volumes/{name}/commits", response_model=VolumeView)
def commit(
    name: str, body: VolumeCommitRequest, who: Caller = Who, volumes: VolumesService = Volumes
) -> dict:
    """A folder's contents, started from commit `base`, merged per file onto the newest."""
    return volumes.commit(who, name, body.base, body.manifest)


@router.get("/v1/leases/{lease_id}/volumes", response_model=list[LeaseVolume])
def lease_volumes(
    lease_id: str, who: Caller = Who, volumes: VolumesService = Volumes
) -> list[dict]:
    """For a seller in the lease: the volumes its job mounts, each's newest commit."""
    return volumes.lease_volumes(who, lease_id)


@router.get("/v1/leases/{lease_id}/volumes/{name}/chunks/{sha256}", response_class=Response)
def lease_chunk(
    lease_id: str, name: str, sha256: str, who: Caller = Who, volumes: VolumesService = Volumes
) -> Response:
    return Response(volumes.lease_chunk(who, lease_id, name, sha256), media_type=OCTETS)


@router.post("/v1/leases/{lease_id}/volumes/{name}/chunks/missing", response_model=ChunksMissing)
def lease_missing(
    lease_id: str,
    name: str,
    body: ChunksAsked,
    who: Caller = Who,
    volumes: VolumesService = Volumes,
) -> dict:
    asked = [(c.sha256, c.size) for c in body.chunks]
    return {"missing": volumes.lease_missing(who, lease_id, name, asked)}


@router.put("/v1/leases/{lease_id}/volumes/{name}/chunks/{sha256}", response_model=ChunkStored)
def lease_put_chunk(
    lease_id: str,
    name: str,
    sha256: str,
    data: bytes = Body(..., media_type=OCTETS),
    who: Caller = Who,
    volumes: VolumesService = Volumes,
) -> dict:
    return {"sha256": sha256, "stored": volumes.lease_put_chunk(who, lease_id, name, sha256, data)}


@router.post("/v1/leases/{lease_id}/volumes/{name}/commits", response_model=VolumeView)
def lease_commit(
    lease_id: str,
    name: str,
    body: VolumeCommitRequest,
    who: Caller = Who,
    volumes: VolumesService = Volumes,
) -> dict:
    """What the node's copy holds, merged per file onto the newest commit."""
    return volumes.lease_commit(who, lease_id, name, body.base, body.manifest)
