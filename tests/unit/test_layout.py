"""The repository's layout: every folder that is a package ships, and modules stay small."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PRODUCT = ("computeswarm", "tunnel", "cluster", "jobs", "tune", "serve", "configs")
# Modules allowed past MAX_LINES, each with the README's reason ("Module sizes").
LONG_MODULES: set[str] = set()
MAX_LINES = 420


def _package_of(folder: Path) -> str:
    """The import name setuptools gives a folder, from the pyproject's package-dir roots."""
    roots = PYPROJECT["tool"]["setuptools"]["package-dir"]
    rel = folder.relative_to(REPO)
    for name, root in sorted(roots.items(), key=lambda kv: -len(kv[1])):
        if rel == Path(root) or Path(root) in rel.parents:
            rest = rel.relative_to(root).parts
            return ".".join([name, *rest])
    raise AssertionError(f"{rel} lies under no package-dir root")


def test_every_folder_with_an_init_is_packaged():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    folders = [
        init.parent
        for top in (*PRODUCT, "tests")
        for init in (REPO / top).rglob("__init__.py")
        if ".venv" not in init.parts
    ]
    assert folders
    missing = sorted(_package_of(f) for f in folders if _package_of(f) not in listed)
    assert not missing, f"add to pyproject.toml [tool.setuptools] packages: {missing}"


def test_product_modules_stay_small():
    long = {
        str(path.relative_to(REPO)): len(path.read_text().splitlines())
        for top in PRODUCT
        for path in (REPO / top).rglob("*.py")
        if "migrations" not in path.parts
    }
    over = {p: n for p, n in long.items() if n > MAX_LINES and p not in LONG_MODULES}
    assert not over, f"split these modules (or give the README's reason): {over}"
