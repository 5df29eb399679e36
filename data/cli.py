"""Dataset commands: `datasets push PATH --name NAME | list | show NAME[@N] |
pull NAME@N --to DIR | share NAME --with ACCOUNT [--revoke]`, and `cp SRC DST`."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path

import typer

from computeswarm.cluster.cli.options import API_KEY, COORDINATOR, JSON
from computeswarm.cluster.cli.options import buyer_client as _client

datasets_app = typer.Typer(
    help="Your datasets: immutable versions that jobs name as NAME@N.", no_args_is_help=True
)


@datasets_app.command("push")
def datasets_push(
    path: Path = typer.Argument(..., help="A folder (or one file) to make a version of."),
    name: str = typer.Option(..., "--name", help="The dataset; the version is the next N."),
    streams: int = typer.Option(4, min=1, max=32, help="Chunks in flight at once."),
    coordinator: str | None = COORDINATOR,
    api_key: str | None = API_KEY,
    as_json: bool = JSON,
) -> None:
    """Send only the chunks the store lacks (a stopped push resumes), then the version."""
    from computeswarm.data.transfer import push

    folder = _as_folder(path)
    with _bar(f"push {name}", quiet=as_json) as (total, advance):
        pushed = push(
            _client(coordinator, api_key),
            folder,
            name,
            streams=streams,
            on_total=total,
            progress=advance,
        )
    if as_json:
        typer.echo(
            json.dumps(
                {
                    **pushed.version,
                    "chunks_sent": pushed.chunks_sent,
                    "bytes_sent": pushed.bytes_sent,
                }
            )
        )
        return
    v = pushed.version
    typer.echo(
        f"{v['ref']}: {v['files']} files, {_size(v['size_bytes'])}, id {v['id'][:12]}; sent "
        f"{pushed.chunks_sent} of {pushed.chunks} chunks ({_size(pushed.bytes_sent)})"
    )


@datasets_app.command("list")
def datasets_list(
    coordinator: str | None = COORDINATOR, api_key: str | None = API_KEY, as_json: bool = JSON
) -> None:
    """Your datasets and those shared with you, at their newest versions."""
    answer = _client(coordinator, api_key).datasets()
    if as_json:
        typer.echo(json.dumps(answer))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("dataset", "versions", "files", "size", "id")
    for d in answer:
        table.add_row(
            d["ref"],
            str(d.get("versions") or ""),
            str(d["files"]),
            _size(d["size_bytes"]),
            d["id"][:12],
        )
    Console(width=None if sys.stdout.isatty() else 200).print(table)


@datasets_app.command("show")
def datasets_show(
    ref: str = typer.Argument(..., help="NAME (every version), NAME@N, or OWNER/NAME@N."),
    coordinator: str | None = COORDINATOR,
    api_key: str | None = API_KEY,
    as_json: bool = JSON,
) -> None:
    """A dataset's versions, or one version's files."""
    client = _client(coordinator, api_key)
    owner, name, version = _split(ref)
    if version is None:
        answer = client.dataset(name, owner)
        if as_json:
            typer.echo(json.dumps(answer))
            return
        for v in answer["versions"]:
            typer.echo(
                f"{v['ref']}: {v['files']} files, {_size(v['size_bytes'])}, id {v['id'][:12]}"
            )
        if answer.get("shared_with"):
            typer.echo(f"shared with: {', '.join(answer['shared_with'])}")
        return
    manifest = client.dataset_manifest(name, version, owner)
    view = client.dataset_version(name, version, owner)
    if as_json:
        typer.echo(json.dumps({**view, "manifest": manifest}))
        return
    typer.echo(
        f"{view['ref']}: {view['files']} files, {_size(view['size_bytes'])}, id {view['id']}"
    )
    for f in manifest["files"]:
        typer.echo(f"  {f['path']}  {_size(f['size'])}  sha256 {f['sha256'][:12]}")


@datasets_app.command("pull")
def datasets_pull(
    ref: str = typer.Argument(..., help="NAME@N, NAME@N/FILE or OWNER/NAME@N."),
    to: Path = typer.Option(
        ..., "--to", help="The folder to write into (files there are kept if whole)."
    ),
    streams: int = typer.Option(4, min=1, max=32, help="Chunks in flight at once."),
    coordinator: str | None = COORDINATOR,
    api_key: str | None = API_KEY,
) -> None:
    """Fetch a version's files, each checked against its sha256."""
    from computeswarm.data.refs import parse_ref
    from computeswarm.data.transfer import pull

    try:
        parsed = parse_ref(ref)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    with _bar(f"pull {parsed.version_key}") as (total, advance):
        got = pull(
            _client(coordinator, api_key),
            parsed,
            to,
            streams=streams,
            on_total=total,
            progress=advance,
        )
    typer.echo(
        f"{got.files} files in {to}: {_size(got.bytes_fetched)} fetched, "
        f"{_size(got.bytes_kept)} already there"
    )


@datasets_app.command("share")
def datasets_share(
    name: str = typer.Argument(..., help="One of your datasets."),
    account: str = typer.Option(..., "--with", help="The account name that may read it."),
    revoke: bool = typer.Option(False, help="Stop sharing it with that account."),
    coordinator: str | None = COORDINATOR,
    api_key: str | None = API_KEY,
) -> None:
    """Let another account read every version (read-only); it names it OWNER/NAME@N."""
    answer = _client(coordinator, api_key).share_dataset(name, account, revoke)
    readers = ", ".join(answer.get("shared_with") or []) or "nobody"
    typer.echo(f"{name} is shared with: {readers}")


def _as_folder(path: Path) -> Path:
    if path.is_dir():
        return path
    raise typer.BadParameter(f"{path} is not a folder (put the files of a version in one)")


def _split(ref: str) -> tuple[str | None, str, int | None]:
    owner, _, rest = ref.rpartition("/") if "/" in ref else (None, "", ref)
    name, _, version = rest.partition("@")
    if version and not version.isdigit():
        raise typer.BadParameter(f"{ref!r}: the version after '@' is a number")
    return owner or None, name, int(version) if version else None


@contextmanager
def _bar(label: str, quiet: bool = False):
    """A progress bar with rate and ETA on a terminal; nothing otherwise."""
    if quiet or not sys.stderr.isatty():
        yield (lambda n: None), (lambda n: None)
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress("[bold]" + label, *columns, transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield (lambda n: bar.update(task, total=n)), (lambda n: bar.advance(task, n))


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def cp(
    src: str = typer.Argument(
        ..., help="A local path, ds:NAME@N[/FILE] (ds:OWNER/... shared), or vol:NAME[/PATH]."
    ),
    dst: str = typer.Argument(
        ..., help="A local folder, ds:NAME (a push: its next version), or vol:NAME[/PATH]."
    ),
    streams: int = typer.Option(4, min=1, max=32, help="Chunks in flight at once."),
    coordinator: str | None = COORDINATOR,
    api_key: str | None = API_KEY,
) -> None:
    """Copy between this machine and the store: `cp ds:sums@1 ./out`, `cp ./corpus ds:sums`,
    `cp ./weights vol:cache/models` (added; the volume's other files stay), `cp vol:cache ./out`."""
    from computeswarm.data.refs import parse_ref
    from computeswarm.data.transfer import pull, push
    from computeswarm.data.volume_transfer import pull_from, push_into

    client = _client(coordinator, api_key)
    remote = ("ds:", "vol:")
    if src.startswith(remote) == dst.startswith(remote):
        raise typer.BadParameter("one side is local and the other ds:... or vol:...")
    if src.startswith("vol:"):
        name, _, path = src[4:].partition("/")
        with _bar(f"cp {src}") as (total, advance):
            got = pull_from(
                client, name, path, Path(dst), streams=streams, on_total=total, progress=advance
            )
        typer.echo(f"{got.files} file(s) in {dst}: {_size(got.bytes_fetched)} fetched")
    elif dst.startswith("vol:"):
        name, _, path = dst[4:].partition("/")
        with _bar(f"cp {src}") as (total, advance):
            volume, sent = push_into(
                client,
                _as_folder(Path(src)),
                name,
                path,
                streams=streams,
                on_total=total,
                progress=advance,
            )
        typer.echo(f"volume {name}: {volume['files']} files; sent {_size(sent)}")
    elif src.startswith("ds:"):
        try:
            ref = parse_ref(src[3:])
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None
        with _bar(f"cp {src}") as (total, advance):
            got = pull(client, ref, Path(dst), streams=streams, on_total=total, progress=advance)
        typer.echo(f"{got.files} file(s) in {dst}: {_size(got.bytes_fetched)} fetched")
    else:
        name = dst[3:]
        if "@" in name or "/" in name:
            raise typer.BadParameter("a push names the dataset only (ds:NAME): versions are made")
        with _bar(f"cp {src}") as (total, advance):
            pushed = push(
                client,
                _as_folder(Path(src)),
                name,
                streams=streams,
                on_total=total,
                progress=advance,
            )
        typer.echo(f"{pushed.version['ref']}: sent {_size(pushed.bytes_sent)}")
