"""Model routes: registered versions, one model's versions, one version and its files."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from computeswarm.cluster.accounts.roles import Caller
from computeswarm.cluster.api import deps
from computeswarm.cluster.api.schemas import ModelVersions, ModelVersionView
from computeswarm.cluster.services.models import ModelsService

router = APIRouter(tags=["models"])
Models = Depends(deps.models)
Who = Depends(deps.caller)


@router.get("/v1/models", response_model=list[ModelVersionView])
def list_models(
    account: str | None = None, who: Caller = Who, models: ModelsService = Models
) -> list[ModelVersionView]:
    """Your model versions (admins: every account's, or one with `?account=`)."""
    return models.list(who, account)


@router.get("/v1/models/{name}", response_model=ModelVersions)
def get_model(
    name: str, account: str | None = None, who: Caller = Who, models: ModelsService = Models
) -> ModelVersions:
    """All versions of one of your models, oldest first."""
    return models.versions(who, name, account)


@router.get("/v1/models/{name}/versions/{version}", response_model=ModelVersionView)
def get_model_version(
    name: str,
    version: str,
    account: str | None = None,
    who: Caller = Who,
    models: ModelsService = Models,
) -> ModelVersionView:
    """One version: `N`, or `latest`."""
    return models.version(who, name, version, account)


@router.get("/v1/models/{name}/versions/{version}/download", response_class=Response)
def download_model_version(
    name: str,
    version: str,
    account: str | None = None,
    who: Caller = Who,
    models: ModelsService = Models,
) -> Response:
    """The version's files as a zip."""
    filename, data = models.download(who, name, version, account)
    return Response(
        data,
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
