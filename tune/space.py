"""Search spaces of sweep specs: parsing, validation and the deterministic trial plan.

    search_space:
      training.learning_rate: {loguniform: [0.0001, 0.01]}
      lora.rank: {choice: [4, 8, 16]}
      lora.alpha: {grid: [8, 16]}

`expand` turns a space into THE plan: the ordered list of every trial's parameters, a pure
function of (space, num_samples, seed), so a sweep is reproducible and a restored one
continues the same list. Pure Python: no Ray, no torch.
"""

from __future__ import annotations

import copy
import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Choice:
    """One of `values`, drawn at random for each trial."""

    values: tuple


@dataclass(frozen=True)
class Grid:
    """Every one of `values`: the cartesian product of grids, each point `num_samples` times."""

    values: tuple


@dataclass(frozen=True)
class Uniform:
    lo: float
    hi: float


@dataclass(frozen=True)
class LogUniform:
    """Uniform in log space: for scales like learning rates. `lo` > 0."""

    lo: float
    hi: float


Domain = Choice | Grid | Uniform | LogUniform
DOMAIN_TYPES = ("choice", "grid", "uniform", "loguniform")
_EXAMPLE = "{loguniform: [0.0001, 0.01]}, {uniform: [0, 1]}, {choice: [4, 8]} or {grid: [4, 8]}"


def parse_domain(path: str, raw: Any) -> Domain:
    """A domain from its spec form (`{choice: [...]}` etc.); a `ValueError` names the path
    and the fix."""
    if not isinstance(raw, dict) or len(raw) != 1:
        raise ValueError(
            f"search_space.{path}: expected exactly one of {', '.join(DOMAIN_TYPES)}, "
            f"e.g. {_EXAMPLE}; got {raw!r}"
        )
    ((kind, values),) = raw.items()
    if kind not in DOMAIN_TYPES:
        raise ValueError(
            f"search_space.{path}: unknown domain type {kind!r}; valid: {', '.join(DOMAIN_TYPES)}"
        )
    if kind in ("choice", "grid"):
        if not isinstance(values, list | tuple) or not values:
            raise ValueError(f"search_space.{path}: {kind} needs a non-empty list of values")
        return (Choice if kind == "choice" else Grid)(tuple(values))
    if (
        not isinstance(values, list | tuple)
        or len(values) != 2
        or not all(_is_number(v) for v in values)
    ):
        raise ValueError(f"search_space.{path}: {kind} needs two numbers [lo, hi]; got {values!r}")
    lo, hi = float(values[0]), float(values[1])
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"search_space.{path}: {kind} bounds must be finite numbers")
    if lo >= hi:
        raise ValueError(f"search_space.{path}: {kind} needs lo < hi; got [{lo}, {hi}]")
    if kind == "loguniform":
        if lo <= 0:
            raise ValueError(
                f"search_space.{path}: loguniform needs lo > 0 (it samples in log space); "
                f"got {lo}; use uniform for ranges that include 0"
            )
        return LogUniform(lo, hi)
    return Uniform(lo, hi)


def check_space(space: dict, check_values: Callable[[dict], None] | None = None) -> None:
    """Parse every domain and offer each candidate value (every choice/grid value, the
    bounds of uniform/loguniform) to `check_values` as `{path: value}`; it raises
    `ValueError` for a value the trial cannot take. An empty space is valid."""
    if not isinstance(space, dict):
        raise ValueError(f"search_space: expected a mapping of path -> domain; got {space!r}")
    for path, raw in space.items():
        domain = parse_domain(path, raw)
        if check_values is None:
            continue
        for value in candidates(domain):
            try:
                check_values({path: value})
            except ValueError as e:
                raise ValueError(f"search_space.{path}: value {value!r} is invalid: {e}") from None


def candidates(domain: Domain) -> tuple:
    """The values that stand for a domain when validating it."""
    if isinstance(domain, Choice | Grid):
        return domain.values
    return (domain.lo, domain.hi)


def expand(space: dict, num_samples: int, seed: int) -> list[dict]:
    """The sweep's plan: one `{path: value}` per trial, in launch order.

    Like Tune's variant generation: the cartesian product of the grid domains is repeated
    `num_samples` times (sample-major: every grid point, then every grid point again), and
    choice/uniform/loguniform values are drawn from `random.Random(seed)` in plan order.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1; got {num_samples}")
    domains = {path: parse_domain(path, raw) for path, raw in space.items()}
    grid_paths = [path for path, d in domains.items() if isinstance(d, Grid)]
    points = list(itertools.product(*(domains[p].values for p in grid_paths)))
    rng = random.Random(seed)
    plan = []
    for _ in range(num_samples):
        for point in points:
            fixed = dict(zip(grid_paths, point, strict=True))
            plan.append(
                {
                    path: fixed[path] if path in fixed else _draw(domain, rng)
                    for path, domain in domains.items()
                }
            )
    return plan


def apply(base: dict, params: dict) -> dict:
    """A deep copy of `base` with each dotted path (`training.learning_rate`) set. A path
    whose parent is missing (or not a mapping) is refused: it would be silently ignored."""
    out = copy.deepcopy(base)
    for path, value in params.items():
        *parents, leaf = path.split(".")
        node = out
        for depth, key in enumerate(parents):
            if not isinstance(node.get(key), dict):
                where = ".".join(parents[: depth + 1])
                raise ValueError(f"{path}: the trial settings have no section {where!r}")
            node = node[key]
        node[leaf] = copy.deepcopy(value)
    return out


def _draw(domain: Domain, rng: random.Random):
    if isinstance(domain, Choice):
        return copy.deepcopy(rng.choice(domain.values))
    if isinstance(domain, Uniform):
        return rng.uniform(domain.lo, domain.hi)
    return math.exp(rng.uniform(math.log(domain.lo), math.log(domain.hi)))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
