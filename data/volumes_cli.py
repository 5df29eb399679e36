"""Volume commands: `volumes create NAME [--size 50GB] | list | ls NAME[/PATH] | du |
rm NAME`. Jobs mount volumes (`volumes: {/workspace/data: NAME}` in a spec); `cp`
copies between this machine and a volume (`vol:NAME[/PATH]`)."""

from __future__ import annotations

import json
import re

import typer

from computeswarm.cluster.cli.options import API_KEY, COORDINATOR, JSON
from computeswarm.cluster.cli.options import buyer_client as _client

volumes_app = typer.Typer(
    help="Your volumes: files that persist across jobs, mounted where a spec says.",
    no_args_is_help=True,
)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str) -> int:
    """`50GB`, `512MiB`, `1.5TB`, or bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match[2].upper() not in _UNITS:
        raise typer.BadParameter(f"{text!r} is not a size like 50GB or 512MiB")
    return int(float(match[1]) * _UNITS[match[2].upper()])


@volumes_app.command("create")
def volumes_create(
    name: str = typer.Argument(..., help="Letters, digits, _ and -."),
    size: str = typer.Option("10GiB", "--size", help="Its limit: a commit past it is refused."),
    coordinator: str | None = COORDINATOR,
    api_key: str | None = API_KEY,
    as_json: bool = JSON,
) -> None:
    made = _client(coordinator, api_key).create_volume(name, parse_size(size))
    typer.echo(json.dumps(made) if as_json else f"volume {name}: {_size(made['size_limit_bytes'])}")


@volumes_app.command("list")
def volumes_list(
    coordinator: str | None = COORDINATOR, api_key: str | None = API_KEY, as_json: bool = JSON
) -> None:
    """Your volumes: what each holds, its limit, commits, and a refused commit's reason."""
    answer = _client(coordinator, api_key).volumes()
    if as_json:
        typer.echo(json.dumps(answer))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("volume", "files", "used", "limit", "commits", "last error")
    for v in answer:
        table.add_row(
            v["name"],
            str(v["files"]),
            _size(v["size_bytes"]),
            _size(v["size_limit_bytes"]),
            str(v["commits"]),
            v["last_error"] or "",
        )
    Console().print(table)


@volumes_app.command("ls")
def volumes_ls(
    target: str = typer.Argument(..., help="NAME or NAME/PATH."),
    coordinator: str | None = COORDINATOR,
    api_key: str | None = API_KEY,
    as_json: bool = JSON,
) -> None:
    """The files of the newest commit (under PATH)."""
    name, _, path = target.partition("/")
    files = _client(coordinator, api_key).volume_files(name, path)
    if as_json:
        typer.echo(json.dumps(files))
        return
    for f in files:
        typer.echo(f"{_size(f['size']):>10}  {f['path']}")


@volumes_app.command("du")
def volumes_du(
    coordinator: str | None = COORDINATOR, api_key: str | None = API_KEY, as_json: bool = JSON
) -> None:
    """What each volume uses of its limit, and in all."""
    answer = _client(coordinator, api_key).volumes()
    if as_json:
        typer.echo(json.dumps({v["name"]: v["size_bytes"] for v in answer}))
        return
    for v in answer:
        share = v["size_bytes"] / v["size_limit_bytes"]
        limit = _size(v["size_limit_bytes"])
        typer.echo(f"{_size(v['size_bytes']):>10}  {v['name']} ({share:.0%} of {limit})")
    typer.echo(f"{_size(sum(v['size_bytes'] for v in answer)):>10}  total")


@volumes_app.command("rm")
def volumes_rm(
    name: str = typer.Argument(...),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask."),
    coordinator: str | None = COORDINATOR,
    api_key: str | None = API_KEY,
) -> None:
    """Remove the volume and its files (refused while an unfinished job mounts it)."""
    if not yes:
        typer.confirm(f"remove volume {name} and every file in it?", abort=True)
    gone = _client(coordinator, api_key).remove_volume(name)
    typer.echo(f"volume {name} removed ({gone['files']} files, {_size(gone['size_bytes'])})")


def _size(n: float) -> str:
    from computeswarm.data.cli import _size as size

    return size(n)
