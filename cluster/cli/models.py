"""Model commands: `models list | show NAME[@N] | download NAME[@N] --to DIR`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from computeswarm.cluster.cli.options import API_KEY, COORDINATOR, JSON
from computeswarm.cluster.cli.options import buyer_client as _client

models_app = typer.Typer(
    help="Your registered models: the adapters your training runs produced.",
    no_args_is_help=True,
)
REF = typer.Argument(..., help="NAME (its latest version) or NAME@N.")


@models_app.command("list")
def models_list(
    coordinator: str | None = COORDINATOR, api_key: str | None = API_KEY, as_json: bool = JSON
) -> None:
    """Your model versions, by name and version."""
    from computeswarm.cluster.api.schemas import ModelVersionView

    answer = _client(coordinator, api_key).models()
    if as_json:
        typer.echo(json.dumps(answer))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("model", "base model", "size", "job", "created")
    for v in (ModelVersionView.model_validate(a) for a in answer):
        table.add_row(v.ref, v.base_model, _size(v.size_bytes), v.job_id or "-", _when(v))
    Console(width=None if sys.stdout.isatty() else 200).print(table)


@models_app.command("show")
def models_show(
    ref: str = REF,
    coordinator: str | None = COORDINATOR,
    api_key: str | None = API_KEY,
    as_json: bool = JSON,
) -> None:
    """One version: where it came from (job, checkpoint, parent, hashes) and its metrics."""
    from computeswarm.cluster.api.schemas import ModelVersionView

    name, version = _split(ref)
    answer = _client(coordinator, api_key).model_version(name, version)
    if as_json:
        typer.echo(json.dumps(answer))
        return
    v = ModelVersionView.model_validate(answer)
    typer.echo(f"{v.ref} ({v.kind}, {_size(v.size_bytes)}), created {_when(v)}")
    for label, key in (
        ("base model", "base_model"),
        ("job", "job_id"),
        ("checkpoint", "checkpoint"),
        ("parent", "parent"),
        ("spec hash", "spec_hash"),
        ("dataset", "dataset"),
        ("data hash", "data_hash"),
    ):
        typer.echo(f"  {label + ':':<12} {getattr(v, key) or '-'}")
    for metric, value in sorted(v.metrics.items()):
        typer.echo(f"  {metric}: {value}")


@models_app.command("download")
def models_download(
    ref: str = REF,
    to: Path = typer.Option(..., "--to", help="A new (or empty) folder for the files."),
    coordinator: str | None = COORDINATOR,
    api_key: str | None = API_KEY,
) -> None:
    """Download a version's files into a folder."""
    from computeswarm.cluster.api.schemas import ModelVersionView

    name, version = _split(ref)
    client = _client(coordinator, api_key)
    # Pin the number first: `latest` could move while the files come down.
    exact = ModelVersionView.model_validate(client.model_version(name, version)).version
    dest = client.download_model(name, exact, to)
    typer.echo(f"{name}@{exact}: files in {dest}")


def _split(ref: str) -> tuple[str, int | str]:
    """NAME -> (NAME, "latest"); NAME@N -> (NAME, N); else one clear error."""
    from computeswarm.cluster.models.registry import parse_ref

    name, number = parse_ref(ref)
    return name, "latest" if number is None else number


def _size(size_bytes: int) -> str:
    size, unit = float(size_bytes), "B"
    for bigger in ("KiB", "MiB", "GiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{size_bytes} B" if unit == "B" else f"{size:.1f} {unit}"


def _when(version) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M", time.localtime(version.created_at))
