"""Strict models for what users write: unknown keys are errors that name the nearest key.

Every user-facing model (configs, job specs) derives from `StrictModel`; `validate_strict`
turns pydantic's errors into one readable message per problem, with a "did you mean".
"""

from __future__ import annotations

import difflib
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Unknown keys are errors; values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def validate_strict(model: type[M], data: Any, *, source: str) -> M:
    """Validate `data` as `model`; raise ValueError listing each problem with its fix."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(explain(model, err) for err in e.errors())
        raise ValueError(f"{source}: {problems}") from None


def explain(model: type[BaseModel], err: dict) -> str:
    """One pydantic error as a sentence; unknown keys get a "did you mean"."""
    loc = [str(p) for p in err["loc"]]
    where = ".".join(loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        valid = _fields_at(model, loc[:-1])
        near = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.6)
        hint = f"did you mean {near[0]!r}?" if near else f"valid keys: {', '.join(valid)}"
        return f"unknown key {where!r} ({hint})"
    return f"{where}: {err['msg']}"


def _fields_at(model: type[BaseModel], path: list[str]) -> list[str]:
    current: Any = model
    for part in path:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = field.annotation
    return sorted(getattr(current, "model_fields", {}))
