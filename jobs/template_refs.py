"""`${name}` references in a template's spec body: finding them, and substituting values.

A value that is exactly `${name}` becomes the parameter's typed value; quoted, or inside a
longer string, it is replaced by its text; `$${` writes a literal `${`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import yaml

from computeswarm.jobs.errors import SpecError

# At each `$`: an escape `$${`, a reference `${...}`, or else an unclosed `${`.
_TOKEN = re.compile(r"\$\$\{|\$\{(?P<ref>[^}]*)\}|\$\{")
_WHOLE = re.compile(r"\$\{(?P<ref>[A-Za-z_][A-Za-z0-9_]*)\}")


class Quoted(str):
    """A quoted `${name}` in a template file: it renders as text, as YAML quotes mean."""


class TemplateLoader(yaml.SafeLoader):
    """YAML as usual, except that quoted whole references are marked `Quoted`."""


class TemplateDumper(yaml.SafeDumper):
    """Shows `Quoted` references quoted again, as they were written."""


def _construct_str(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> str:
    value = loader.construct_scalar(node)
    return Quoted(value) if node.style in ('"', "'") and _WHOLE.fullmatch(value) else value


TemplateLoader.add_constructor("tag:yaml.org,2002:str", _construct_str)
TemplateDumper.add_representer(
    Quoted, lambda dumper, data: dumper.represent_scalar("tag:yaml.org,2002:str", data, '"')
)


def references(node: Any, where: str) -> Iterator[tuple[str, str | None]]:
    """Where each `${...}` in the spec body is, with its name, or None if malformed."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str) and "${" in key:
                yield f"{where}.{key}", None
            yield from references(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from references(item, f"{where}[{i}]")
    elif isinstance(node, str):
        for match in _TOKEN.finditer(node):
            if match[0] != "$${":
                yield where, match["ref"]


def substitute(node: Any, values: Mapping[str, Any], where: str, source: str) -> Any:
    if isinstance(node, dict):
        return {k: substitute(v, values, f"{where}.{k}", source) for k, v in node.items()}
    if isinstance(node, list):
        return [substitute(v, values, f"{where}[{i}]", source) for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node
    whole = _WHOLE.fullmatch(node)
    if whole and not isinstance(node, Quoted):
        return _value(whole["ref"], values, where, source)  # keeps the parameter's type

    def text(match: re.Match) -> str:
        if match[0] == "$${":
            return "${"
        value = _value(match["ref"] or "", values, where, source)
        if value is None:
            raise SpecError(
                f"{source}: {where}: ${{{match['ref']}}} has no value and is used inside "
                f"a string; add --set {match['ref']}=VALUE"
            )
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    return str(_TOKEN.sub(text, node))


def _value(ref: str, values: Mapping[str, Any], where: str, source: str) -> Any:
    if ref not in values:
        raise SpecError(f"{source}: {where}: unresolved reference ${{{ref}}}")
    return values[ref]
