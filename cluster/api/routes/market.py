"""Market routes: a quote for a spec, without leasing anything."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from computeswarm.cluster.accounts.roles import Caller
from computeswarm.cluster.api import deps
from computeswarm.cluster.api.schemas import QuoteRequest
from computeswarm.cluster.api.views import Quote
from computeswarm.cluster.services.jobs import JobsService

router = APIRouter(tags=["jobs"])


@router.post("/v1/market/quote", response_model=Quote, response_model_exclude_unset=True)
def quote(
    body: QuoteRequest, who: Caller = Depends(deps.caller), jobs: JobsService = Depends(deps.jobs)
) -> dict:
    """The sellers, price and cost the market would choose now; nothing is leased."""
    return jobs.quote(who, body.spec, body.explain)
