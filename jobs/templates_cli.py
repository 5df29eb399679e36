"""`computeswarm templates ...`: list, show and render job templates."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from computeswarm.cluster.cli.options import JSON
from computeswarm.jobs.cli import SET

templates_app = typer.Typer(
    help="Job templates: named specs with parameters, for `submit --template`.",
    no_args_is_help=True,
)
NAME = typer.Argument(..., help="A template name (see `templates list`) or a template file.")


@templates_app.command("list")
def templates_list(as_json: bool = JSON) -> None:
    """Every template: yours first (they override built-ins of the same name), then built-ins."""
    from computeswarm.jobs.templates import describe_templates

    rows = describe_templates()
    if as_json:
        typer.echo(json.dumps(rows))
        return
    name_w = max((len(r["name"]) for r in rows), default=4)
    kind_w = max((len(r["kind"]) for r in rows), default=4)
    desc_w = max((len(r["description"]) for r in rows), default=11)
    typer.echo(f"{'NAME':<{name_w}}  {'KIND':<{kind_w}}  {'DESCRIPTION':<{desc_w}}  SOURCE")
    for r in rows:
        typer.echo(
            f"{r['name']:<{name_w}}  {r['kind']:<{kind_w}}  "
            f"{r['description']:<{desc_w}}  {r['source']}"
        )


@templates_app.command("show")
def templates_show(name: str = NAME) -> None:
    """A template's parameters (type, default or required, choices, range) and its spec."""
    from computeswarm.jobs.templates import get_template, show_template

    typer.echo(show_template(get_template(name)), nl=False)


@templates_app.command("render")
def templates_render(
    name: str = NAME,
    sets: list[str] = SET,
    out: Path | None = typer.Option(
        None, "--out", "-o", dir_okay=False, help="Write the spec here instead of printing it."
    ),
) -> None:
    """The validated job spec a template makes with --set values, as YAML."""
    # Saved with --out, its working_dir is relative to the file's folder, as for any spec.
    from computeswarm.jobs.templates import dump_rendered, get_template, parse_sets, render

    template = get_template(name)
    text = dump_rendered(template, render(template, parse_sets(sets)))
    if out is None:
        typer.echo(text, nl=False)
        return
    out.write_text(text)
    typer.echo(f"wrote {out}", err=True)
