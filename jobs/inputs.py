"""The files a spec names, checked against its working_dir before anything is leased.

Pure path checks with no knowledge of job kinds: each spec model (`jobs/spec.py`) says
which of its fields name files (`check_inputs`)."""

from __future__ import annotations

from pathlib import Path

from computeswarm.data.refs import is_dataset_ref, may_name_a_dataset, parse_ref
from computeswarm.jobs.errors import SpecError


def adapter_is_path(ref: str) -> bool:
    """`adder@2` and `adder` name registered versions; `./x` and `a/b` are folders."""
    return ref.startswith((".", "/", "~")) or "/" in ref


def relative_dataset(value: str) -> str:
    """A dataset named in a spec: a version pushed with `computeswarm datasets push`
    (`NAME@N[/FILE]`, `OWNER/NAME@N[/FILE]`), or a file inside the working_dir, never a
    path out of it."""
    if is_dataset_ref(value):
        parse_ref(value)  # ValueError says what a reference looks like
        return value
    if value.startswith("/") or ".." in Path(value).parts:
        raise ValueError(f"{value!r}: the dataset is a file inside the job's working_dir")
    return value


def inside(working_dir: Path, relative: str) -> Path:
    path = (working_dir / relative).resolve()
    if working_dir.resolve() not in path.parents:
        raise SpecError(f"{relative!r} leads outside the working_dir")
    return path


def check_dataset(working_dir: Path, dataset: str) -> None:
    """A working_dir file. A stored version is the coordinator's to check, and so is a
    plain name that is no file here (it may be a dataset, pinned to its newest version)."""
    if is_dataset_ref(dataset):
        return
    path = (working_dir / dataset).resolve()
    if working_dir.resolve() not in path.parents:
        raise SpecError(f"dataset {dataset!r} is not a file in the working_dir")
    if not path.is_file() and not (may_name_a_dataset(dataset) and not path.exists()):
        raise SpecError(f"dataset {dataset!r} is not a file in the working_dir")


def check_model(working_dir: Path, model: str) -> None:
    """A model folder in the working_dir, or a hub id: a model that is not a folder is taken
    as a hub id only when it does not look like a path."""
    if model.startswith(("/", "~")):
        # A path on the coordinator's host says nothing of the sellers' disks, and named
        # other buyers' files there (M7); a lease's sandbox sees none of them anyway.
        raise SpecError(
            f"model {model!r}: absolute paths are not allowed; put the model folder "
            "(save_pretrained output) in the working_dir, or name a hub id"
        )
    local = working_dir / model
    if local.is_dir():
        if working_dir.resolve() not in local.resolve().parents:
            raise SpecError(f"model {model!r} leads outside the working_dir")
        if not (local / "config.json").is_file():
            raise SpecError(f"model folder {model!r} has no config.json (save_pretrained output)")
    elif looks_like_path(model):
        raise SpecError(
            f"model path {model!r} not found in the working_dir; "
            "put the model folder (save_pretrained output) next to the spec"
        )


def looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or model.count("/") > 1


def resolve_working_dir(raw: str | None, base: Path) -> Path | None:
    """The working_dir as a real folder inside `base`; refuses `..`, absolute paths out of
    `base`, and symlinks that lead out of it."""
    if raw is None:
        return None
    base = base.resolve()
    target = (base / raw).resolve()
    if target != base and base not in target.parents:
        raise SpecError(
            f"runtime_env.working_dir {raw!r} leads outside the spec's folder "
            f"{base}; put the code next to the spec"
        )
    if not target.is_dir():
        raise SpecError(f"runtime_env.working_dir {raw!r} is not a folder ({target})")
    for path in target.rglob("*"):
        if path.is_symlink() and base not in path.resolve().parents:
            raise SpecError(f"{path} is a symlink out of the spec's folder; copy the file in")
    return target
