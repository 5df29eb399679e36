"""Job templates: named, parameterised job specs rendered with `--set key=value`.

A template is a file NAME.yaml (or .yml) with three top-level keys:

    description: LoRA fine-tuning of a local model on a JSONL dataset.
    parameters:
      model: {type: str, default: ./model, description: Model folder in working_dir.}
      rank: {type: int, default: 8, min: 1, max: 1024, description: LoRA rank r.}
      schedule: {type: str, default: gpipe, choices: [gpipe, 1f1b]}
      entrypoint: {type: str, required: true, description: Command to run.}
    spec:
      kind: lora
      name: lora-${rank}
      lora:
        rank: ${rank}
      ...

* `type` is str (the default), int, float or bool; `--set` text is parsed to it, then
  checked against `choices` and, for numbers, `min` / `max` (inclusive).
* A parameter has a `default` or `required: true`, never both. `default: null` makes it
  optional with no value; such a parameter may only be used as a whole value.
* A value that is exactly `${name}` becomes the parameter's typed value (`rank: ${rank}`
  renders the int 8); quoted (`STEPS: "${steps}"`) or inside a longer string it is replaced
  by its text. `$${` writes a literal `${` (a shell variable in an entrypoint). References
  go in values, not keys; YAML flow style (`[...]`, `{...}`) needs them quoted, so there
  they are text.
* Every reference names a declared parameter and every parameter is used: a template that
  breaks this is refused when it is loaded, before anyone renders it.

Templates are found, first match wins, in each folder of $COMPUTESWARM_TEMPLATES
(os.pathsep-separated), then ~/.computeswarm/templates, then the built-ins in
configs/templates/; a user template overrides a built-in of the same name. `render` checks
the values, then checks the rendered spec with `parse_job_spec`, so a bad render fails
before anything is submitted.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

import computeswarm.configs
from computeswarm.jobs.errors import SpecError
from computeswarm.jobs.spec import (
    KINDS,
    AnyJob,
    check_inputs,
    parse_job_spec,
    resolve_working_dir,
)
from computeswarm.jobs.template_refs import (
    TemplateDumper,
    TemplateLoader,
    references,
    substitute,
)
from computeswarm.profile import profile_path
from computeswarm.strict import StrictModel, explain

BUILT_IN_DIR = Path(computeswarm.configs.__file__).parent / "templates"
ENV_VAR = "COMPUTESWARM_TEMPLATES"
SUFFIXES = (".yaml", ".yml")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_PARAM = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


class Parameter(StrictModel):
    """One template parameter, as declared under `parameters:`."""

    type: Literal["str", "int", "float", "bool"] = Field(
        "str", description="How `--set` text is parsed: str, int, float or bool."
    )
    description: str = Field("", description="What the parameter sets, for `templates show`.")
    default: Any = Field(None, description="The value when not `--set`; null: no value.")
    required: bool = Field(False, description="Must be `--set`; excludes `default`.")
    choices: list[Any] | None = Field(None, min_length=1, description="The allowed values.")
    min: float | None = Field(None, description="Smallest allowed number (int and float).")
    max: float | None = Field(None, description="Largest allowed number (int and float).")

    @model_validator(mode="after")
    def _consistent(self) -> Parameter:
        has_default = "default" in self.model_fields_set
        if self.required and has_default:
            raise ValueError("give either a default or required: true, not both")
        if not self.required and not has_default:
            raise ValueError("give a default, or required: true")
        if (self.min is not None or self.max is not None) and self.type not in ("int", "float"):
            raise ValueError(f"min and max apply to int and float, not {self.type}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} > max {self.max:g}")
        for choice in self.choices or []:
            self._typed(choice, "choice")
        if self.default is not None:
            self.check(self.default, "default")
        return self

    def parse(self, text: str) -> Any:
        """`--set` text as this parameter's type, checked; ValueError says what is wrong."""
        value: Any = text
        stripped = text.strip()
        try:
            if self.type == "int":
                value = int(stripped)
            elif self.type == "float":
                value = float(stripped)
        except ValueError:
            article = "an" if self.type == "int" else "a"
            raise ValueError(f"{text!r} is not {article} {self.type}") from None
        if self.type == "float" and not math.isfinite(value):
            raise ValueError(f"{text!r} is not a finite number")
        if self.type == "bool":
            if stripped.lower() not in _TRUE + _FALSE:
                raise ValueError(f"{text!r} is not a bool (true/false, yes/no, on/off, 1/0)")
            value = stripped.lower() in _TRUE
        return self.check(value, "value")

    def check(self, value: Any, what: str) -> Any:
        """`value` if it has this type and fits choices and range; raises ValueError."""
        value = self._typed(value, what)
        if self.choices is not None and value not in self.choices:
            allowed = ", ".join(str(c) for c in self.choices)
            raise ValueError(f"{what} {value!r} is not one of: {allowed}")
        if self.min is not None and value < self.min:
            raise ValueError(f"{what} {value!r} is below min {self.min:g}")
        if self.max is not None and value > self.max:
            raise ValueError(f"{what} {value!r} is above max {self.max:g}")
        return value

    def _typed(self, value: Any, what: str) -> Any:
        # bool is an int in Python; a template that says int means a number, not true.
        ok = {
            "str": isinstance(value, str),
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, int | float) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
        }[self.type]
        if ok:
            return float(value) if self.type == "float" else value
        hint = ""
        if self.type == "float" and isinstance(value, str) and _is_float(value):
            hint = " (YAML reads 1e-3 as text: write 1.0e-3 or 0.001)"
        raise ValueError(f"{what} {value!r} is {type(value).__name__}, not {self.type}{hint}")


class TemplateFile(StrictModel):
    """What a template file holds: a description, its parameters and the spec body."""

    description: str = Field(min_length=1, description="One line for `templates list`.")
    parameters: dict[str, Parameter] = Field(
        default_factory=dict, description="Parameters by name, referenced as ${name}."
    )
    spec: dict[str, Any] = Field(description="The job spec, with ${name} references.")

    @field_validator("parameters")
    @classmethod
    def _names(cls, value: dict[str, Parameter]) -> dict[str, Parameter]:
        for name in value:
            if not _PARAM.match(name):
                raise ValueError(f"{name!r} is not a parameter name (letters, digits, _)")
        return value

    @field_validator("spec")
    @classmethod
    def _kind(cls, value: dict[str, Any]) -> dict[str, Any]:
        kind = value.get("kind")
        if kind not in KINDS:
            raise ValueError(
                f"spec.kind must be written out as one of {', '.join(KINDS)} (got {kind!r})"
            )
        return value


@dataclass(frozen=True)
class Template:
    """A loaded, checked template: every reference is declared, every parameter used."""

    name: str
    path: Path
    description: str
    parameters: dict[str, Parameter]
    spec: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.spec["kind"]

    @property
    def source(self) -> str:
        return f"template {self.name!r} ({self.path})"


@dataclass(frozen=True)
class TemplateRef:
    """A template file found on the search path, and the files of the same name it hides."""

    name: str
    path: Path
    overrides: tuple[Path, ...] = ()

    @property
    def built_in(self) -> bool:
        return self.path.parent.resolve() == BUILT_IN_DIR.resolve()


def search_path(environ: Mapping[str, str] | None = None) -> list[Path]:
    """Folders searched for templates, first match wins: $COMPUTESWARM_TEMPLATES,
    ~/.computeswarm/templates (under COMPUTESWARM_HOME if set), the built-ins."""
    environ = os.environ if environ is None else environ
    user = [Path(p).expanduser() for p in environ.get(ENV_VAR, "").split(os.pathsep) if p]
    return [*user, profile_path().parent / "templates", BUILT_IN_DIR]


def find_templates(dirs: Sequence[Path] | None = None) -> list[TemplateRef]:
    """Every template on the search path by name; missing folders are skipped."""
    found: dict[str, list[Path]] = {}
    for folder in search_path() if dirs is None else dirs:
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix in SUFFIXES and path.is_file() and _NAME.match(path.stem):
                found.setdefault(path.stem, []).append(path)
    return [TemplateRef(name, paths[0], tuple(paths[1:])) for name, paths in sorted(found.items())]


def get_template(name: str, dirs: Sequence[Path] | None = None) -> Template:
    """The template called `name` on the search path, or a template file given by path."""
    if Path(name).suffix in SUFFIXES:
        return load_template(Path(name))
    refs = {ref.name: ref for ref in find_templates(dirs)}
    if name in refs:
        return load_template(refs[name].path)
    near = difflib.get_close_matches(name, list(refs), n=1, cutoff=0.6)
    hint = f"did you mean {near[0]!r}?" if near else f"known: {', '.join(refs) or 'none'}"
    raise SpecError(f"no template named {name!r} ({hint}); see `computeswarm templates list`")


def load_template(path: Path) -> Template:
    """Read and check one template file."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise SpecError(f"cannot read template {path}: {e.strerror}") from None
    return parse_template(text, name=Path(path).stem, path=Path(path))


def parse_template(text: str, *, name: str, path: Path) -> Template:
    """A checked template from its YAML text; SpecError names the file and each problem."""
    source = f"template {name!r} ({path})"
    try:
        data = yaml.load(text, Loader=TemplateLoader)  # a SafeLoader: no Python objects
    except yaml.YAMLError as e:
        raise SpecError(f"{source}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping with description, parameters and spec")
    try:
        body = TemplateFile.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(_explain(err) for err in e.errors())
        raise SpecError(f"{source}: {problems}") from None
    used: set[str] = set()
    problems = []
    for where, ref in references(body.spec, "spec"):
        if ref is None:
            problems.append(
                f"{where}: an unclosed `${{` or a reference in a key; references go in "
                "values as ${name}, and $${ writes a literal ${"
            )
            continue
        used.add(ref)
        if ref not in body.parameters:
            near = difflib.get_close_matches(ref, list(body.parameters), n=1, cutoff=0.6)
            hint = f" (did you mean ${{{near[0]}}}?)" if near else ""
            problems.append(f"{where}: ${{{ref}}} is not a declared parameter{hint}")
    problems += [
        f"parameter {unused!r} is declared but never used in spec"
        for unused in body.parameters
        if unused not in used
    ]
    if problems:
        raise SpecError(f"{source}: {'; '.join(problems)}")
    return Template(name, Path(path), body.description, body.parameters, body.spec)


def parse_sets(pairs: Sequence[str]) -> dict[str, str]:
    """`--set key=value` flags as a dict; a later flag for the same key wins."""
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--set expects KEY=VALUE, got {pair!r}")
        values[key.strip()] = value
    return values


def render(template: Template, values: Mapping[str, str]) -> dict:
    """The job spec `template` makes with `values` (`--set` text by parameter name),
    checked by `parse_job_spec`; SpecError lists every problem."""
    return _render(template, values)[0]


def render_job_spec(
    name: str, values: Mapping[str, str], base: Path, dirs: Sequence[Path] | None = None
) -> tuple[AnyJob, Path | None]:
    """Like `load_job_spec` for a template: its working_dir is resolved against `base`
    (the current directory, or --dir) and its inputs checked the same way."""
    template = get_template(name, dirs)
    _, spec = _render(template, values)
    working_dir = resolve_working_dir(spec, base)
    check_inputs(spec, working_dir)
    return spec, working_dir


def describe_templates(dirs: Sequence[Path] | None = None) -> list[dict[str, Any]]:
    """One row per template for `templates list`; a broken file is listed with its error
    rather than hiding the others."""
    rows = []
    for ref in find_templates(dirs):
        row: dict[str, Any] = {"name": ref.name, "path": str(ref.path), "error": None}
        try:
            template = load_template(ref.path)
            row |= {"kind": template.kind, "description": template.description}
        except SpecError as e:
            row |= {"kind": "?", "description": "invalid, see `templates show`", "error": str(e)}
        source = "built-in" if ref.built_in else str(ref.path)
        if ref.overrides:
            hidden = ref.overrides[0]
            what = "built-in" if hidden.parent.resolve() == BUILT_IN_DIR.resolve() else hidden
            source += f" (overrides {what})"
        row |= {"source": source, "overrides": [str(p) for p in ref.overrides]}
        rows.append(row)
    return rows


def show_template(template: Template) -> str:
    """A template's parameters and its raw spec, for `templates show`."""
    lines = [f"{template.name} ({template.kind}): {template.description}"]
    lines.append(f"file: {template.path}")
    required = [k for k, p in template.parameters.items() if p.required]
    usage = "".join(f" --set {k}=VALUE" for k in required)
    lines.append(f"render: computeswarm templates render {template.name}{usage}")
    lines.append("parameters:")
    width = max((len(k) for k in template.parameters), default=0)
    for key, param in template.parameters.items():
        facts = [param.type, "required" if param.required else f"default {param.default!r}"]
        if param.choices is not None:
            facts.append("one of " + "|".join(str(c) for c in param.choices))
        if param.min is not None or param.max is not None:
            low = "" if param.min is None else f"{param.min:g}"
            high = "" if param.max is None else f"{param.max:g}"
            facts.append(f"range {low}..{high}")
        lines.append(f"  {key:<{width}}  {', '.join(facts)}")
        if param.description:
            lines.append(f"  {'':<{width}}    {param.description}")
    lines.append("spec:")
    spec = yaml.dump(template.spec, Dumper=TemplateDumper, sort_keys=False).rstrip("\n")
    lines += [f"  {line}" for line in spec.splitlines()]
    return "\n".join(lines) + "\n"


def dump_rendered(template: Template, data: dict) -> str:
    """A rendered spec as YAML, saying where it came from."""
    return f"# rendered from {template.source}\n" + yaml.safe_dump(data, sort_keys=False)


def _render(template: Template, values: Mapping[str, str]) -> tuple[dict, AnyJob]:
    params = template.parameters
    problems = []
    for key in values:
        if key not in params:
            near = difflib.get_close_matches(key, list(params), n=1, cutoff=0.6)
            hint = f"did you mean {near[0]!r}?" if near else f"parameters: {', '.join(params)}"
            problems.append(f"unknown parameter {key!r} ({hint})")
    resolved: dict[str, Any] = {}
    for key, param in params.items():
        if key in values:
            try:
                resolved[key] = param.parse(values[key])
            except ValueError as e:
                problems.append(f"{key}: {e}")
        elif param.required:
            problems.append(f"missing required parameter {key!r}: add --set {key}=VALUE")
        elif param.default is not None:
            resolved[key] = param.check(param.default, "default")
        else:
            resolved[key] = None
    if problems:
        raise SpecError(f"{template.source}: {'; '.join(problems)}")
    data = substitute(template.spec, resolved, "spec", template.source)
    spec = parse_job_spec(data, source=f"{template.source}, rendered spec")
    return data, spec


def _explain(err: dict) -> str:
    # Errors inside one parameter are explained against Parameter, so a misspelt key gets
    # its "did you mean" (explain cannot look inside dict values).
    loc = tuple(err["loc"])
    if len(loc) > 2 and loc[0] == "parameters":
        return f"parameters.{loc[1]}: " + explain(Parameter, {**err, "loc": loc[2:]})
    return explain(TemplateFile, err)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
