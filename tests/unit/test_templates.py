"""Job templates: typed rendering, strict parameters, user overrides, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from computeswarm import cli
from computeswarm.jobs import cli as jobs_cli
from computeswarm.jobs.errors import SpecError
from computeswarm.jobs.spec import parse_job_spec
from computeswarm.jobs.templates import (
    BUILT_IN_DIR,
    describe_templates,
    find_templates,
    get_template,
    load_template,
    parse_sets,
    parse_template,
    render,
    search_path,
    show_template,
)

pytestmark = pytest.mark.unit
REQUIRED = {"script": {"entrypoint": "python main.py"}}
TINY = """\
description: A tiny script template for tests.
parameters:
  entrypoint: {required: true}
  steps: {type: int, default: 10, min: 1, max: 100}
  lr: {type: float, default: 0.5}
  queue: {type: bool, default: true}
  mode: {default: fast, choices: [fast, slow]}
spec:
  kind: script
  name: tiny-${mode}
  entrypoint: ${entrypoint} --steps ${steps} --lr ${lr} --queue ${queue} --home $${HOME}
  runtime_env:
    env_vars:
      STEPS: "${steps}"
  pricing: {max_price_per_gpu_hour: 0.5}
  queue: ${queue}
"""


@pytest.fixture(autouse=True)
def _no_user_templates(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The developer's own ~/.computeswarm/templates must not leak into these tests.
    monkeypatch.setenv("COMPUTESWARM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("COMPUTESWARM_TEMPLATES", raising=False)


def tiny(text: str = TINY, path: Path = Path("/t/tiny.yaml")):
    return parse_template(text, name=path.stem, path=path)


def refused(template_text: str) -> str:
    with pytest.raises(SpecError) as e:
        tiny(template_text)
    return str(e.value)


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


# Rendering


def test_whole_value_references_keep_the_parameters_type():
    data = render(tiny(), {"entrypoint": "python main.py", "steps": "20", "queue": "no"})
    assert data["queue"] is False
    lora = render(get_template("lora-finetune"), {"rank": "16", "alpha": "32"})
    assert lora["lora"] == {"rank": 16, "alpha": 32.0}
    assert isinstance(lora["lora"]["alpha"], float)
    assert lora["deepspeed"]["zero_stage"] == 2


def test_references_inside_strings_are_text():
    data = render(tiny(), {"entrypoint": "python main.py", "steps": "20", "queue": "off"})
    assert data["name"] == "tiny-fast"
    assert data["entrypoint"] == "python main.py --steps 20 --lr 0.5 --queue false --home ${HOME}"
    assert data["runtime_env"]["env_vars"] == {"STEPS": "20"}
    pipeline = render(
        get_template("pipeline-train"), {"gpu_model": "RTX4090", "vram_gb": "24", "nodes": "3"}
    )
    assert pipeline["resources"] == {"gpus": "RTX4090:24GB:3", "nodes": 3}


def test_a_quoted_whole_reference_is_text():
    data = render(tiny(), {"entrypoint": "run", "steps": "7"})
    assert data["runtime_env"]["env_vars"] == {"STEPS": "7"}
    assert 'STEPS: "${steps}"' in show_template(tiny())  # shown as written


def test_defaults_fill_what_is_not_set():
    data = render(tiny(), {"entrypoint": "run"})
    assert data["entrypoint"] == "run --steps 10 --lr 0.5 --queue true --home ${HOME}"
    assert data["queue"] is True


def test_an_int_default_of_a_float_parameter_renders_a_float():
    text = TINY.replace("lr: {type: float, default: 0.5}", "lr: {type: float, default: 2}")
    assert "--lr 2.0 " in render(tiny(text), {"entrypoint": "run"})["entrypoint"]


def test_missing_and_unknown_parameters_are_refused_together():
    with pytest.raises(SpecError) as e:
        render(tiny(), {"step": "3", "colour": "red"})
    message = str(e.value)
    assert message.startswith("template 'tiny' (/t/tiny.yaml): ")
    assert "unknown parameter 'step' (did you mean 'steps'?)" in message
    assert "unknown parameter 'colour' (parameters: entrypoint, steps, lr, queue, mode)" in message
    assert "missing required parameter 'entrypoint': add --set entrypoint=VALUE" in message


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("steps", "ten", "steps: 'ten' is not an int"),
        ("steps", "1.5", "steps: '1.5' is not an int"),
        ("steps", "0", "steps: value 0 is below min 1"),
        ("steps", "101", "steps: value 101 is above max 100"),
        ("lr", "fast", "lr: 'fast' is not a float"),
        ("lr", "nan", "lr: 'nan' is not a finite number"),
        ("queue", "maybe", "queue: 'maybe' is not a bool"),
        ("mode", "medium", "mode: value 'medium' is not one of: fast, slow"),
    ],
)
def test_values_are_checked_against_type_choices_and_range(key, value, problem):
    with pytest.raises(SpecError) as e:
        render(tiny(), {"entrypoint": "run", key: value})
    assert problem in str(e.value)


def test_a_render_that_makes_an_invalid_spec_fails_before_submit():
    with pytest.raises(SpecError) as e:
        render(get_template("lora-finetune"), {"nodes": "2"})
    message = str(e.value)
    assert "lora-finetune.yaml" in message and "rendered spec" in message
    assert "1 GPUs cannot be split evenly over 2 nodes" in message


def test_an_optional_parameter_without_value_renders_null_only_as_a_whole_value():
    text = TINY.replace("  mode: {default: fast", "  tag: {default: null}\n  mode: {default: fast")
    whole = text.replace("  queue: ${queue}\n", "  queue: ${queue}\n  min_reliability: ${tag}\n")
    with pytest.raises(SpecError) as e:
        render(tiny(whole), {"entrypoint": "run"})
    assert "min_reliability" in str(e.value)  # None reached the spec, which wants a number
    assert render(tiny(whole), {"entrypoint": "run", "tag": "0.5"})["min_reliability"] == "0.5"
    embedded = text.replace("name: tiny-${mode}", "name: tiny-${mode}-${tag}")
    with pytest.raises(SpecError) as e:
        render(tiny(embedded), {"entrypoint": "run"})
    assert "spec.name: ${tag} has no value and is used inside a string" in str(e.value)


def test_set_flags_split_at_the_first_equals_and_the_last_one_wins():
    assert parse_sets(["a=b=c", "x=1", "x=2", "empty="]) == {"a": "b=c", "x": "2", "empty": ""}
    with pytest.raises(SpecError, match="--set expects KEY=VALUE, got 'rank'"):
        parse_sets(["rank"])


# Built-ins


def test_the_built_ins_cover_every_training_kind_and_script():
    kinds = {load_template(ref.path).kind for ref in find_templates([BUILT_IN_DIR])}
    assert kinds == {"script", "lora", "pipeline"}
    names = {ref.name for ref in find_templates([BUILT_IN_DIR])}
    assert {"lora-finetune", "pipeline-train", "script"} <= names


@pytest.mark.parametrize("ref", find_templates([BUILT_IN_DIR]), ids=lambda ref: ref.name)
def test_every_built_in_renders_a_valid_spec_with_its_defaults(ref):
    template = load_template(ref.path)
    data = render(template, REQUIRED.get(ref.name, {}))
    spec = parse_job_spec(data)
    assert spec.kind == template.kind
    assert spec.runtime_env.working_dir == "."
    if spec.kind != "script":
        assert (spec.model, spec.dataset) == ("./model", "data.jsonl")
    assert yaml.safe_load(yaml.safe_dump(data)) == data  # plain YAML types only


def test_built_in_templates_ship_as_package_data():
    pyproject = (BUILT_IN_DIR.parents[1] / "pyproject.toml").read_text()
    assert '"computeswarm.configs" = ["*.yaml", "*.yml", "*.toml", "*.service", "**/*"]' in (
        pyproject
    )
    assert BUILT_IN_DIR.parent.name == "configs"


# Template files that are wrong


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda t: t.replace("spec:\n", "spec: [\n"), "not valid YAML"),
        (lambda t: "- a list\n", "expected a mapping with description, parameters and spec"),
        (
            lambda t: t.replace("--home", "--x ${stesp} --home"),
            "spec.entrypoint: ${stesp} is not a declared parameter (did you mean ${steps}?)",
        ),
        (
            lambda t: t.replace(" --lr ${lr}", ""),
            "parameter 'lr' is declared but never used in spec",
        ),
        (
            lambda t: t.replace("{type: int, default: 10,", "{type: int, defualt: 10,"),
            "parameters.steps: unknown key 'defualt' (did you mean 'default'?)",
        ),
        (
            lambda t: t.replace("{required: true}", "{required: true, default: x}"),
            "give either a default or required: true, not both",
        ),
        (lambda t: t.replace("{required: true}", "{}"), "give a default, or required: true"),
        (
            lambda t: t.replace("default: 10, min: 1", "default: ten, min: 1"),
            "default 'ten' is str, not int",
        ),
        (
            lambda t: t.replace("default: 0.5}", "default: 1e-3}"),
            "(YAML reads 1e-3 as text: write 1.0e-3 or 0.001)",
        ),
        (lambda t: t.replace("default: 10, min: 1", "default: 0, min: 1"), "below min 1"),
        (lambda t: t.replace("default: fast,", "default: quick,"), "not one of: fast, slow"),
        (
            lambda t: t.replace("{default: fast,", "{min: 1, default: fast,"),
            "min and max apply to int and float, not str",
        ),
        (
            lambda t: t.replace("  steps:", "  bad-name: {default: x}\n  steps:"),
            "'bad-name' is not a parameter name",
        ),
        (lambda t: t.replace("kind: script", "kind: ${mode}"), "spec.kind must be written out"),
        (lambda t: t.replace("description: A tiny", "descripton: A tiny"), "'descripton'"),
        (lambda t: t.replace("tiny-${mode}", "tiny-${mode"), "spec.name: an unclosed `${`"),
        (
            lambda t: t.replace('STEPS: "${steps}"', 'S_${mode}: "${steps}"'),
            "spec.runtime_env.env_vars.S_${mode}: an unclosed `${` or a reference in a key",
        ),
    ],
)
def test_bad_template_files_are_refused_when_loaded(change, problem):
    message = refused(change(TINY))
    assert message.startswith("template 'tiny' (/t/tiny.yaml): ")
    assert problem in message


def test_an_unreadable_template_names_its_file(tmp_path):
    with pytest.raises(SpecError, match=r"cannot read template .*nope\.yaml"):
        load_template(tmp_path / "nope.yaml")


def test_an_unknown_template_name_gets_a_hint(tmp_path):
    write(tmp_path, "lora-ft.yaml", TINY)
    with pytest.raises(SpecError, match=r"no template named 'lora' \(did you mean 'lora-ft'\?\)"):
        get_template("lora", [tmp_path])
    with pytest.raises(SpecError, match=r"\(known: lora-ft\); see `computeswarm templates list`"):
        get_template("zzz", [tmp_path])


# Search path and user templates


def test_search_path_order_is_env_then_home_then_built_in(monkeypatch, tmp_path):
    monkeypatch.setenv("COMPUTESWARM_TEMPLATES", f"{tmp_path / 'a'}:{tmp_path / 'b'}:")
    assert search_path() == [
        tmp_path / "a",
        tmp_path / "b",
        tmp_path / "home" / "templates",
        BUILT_IN_DIR,
    ]


def test_a_user_template_overrides_a_built_in_and_list_says_so(monkeypatch, tmp_path):
    mine = write(tmp_path / "mine", "script.yaml", TINY)
    monkeypatch.setenv("COMPUTESWARM_TEMPLATES", str(tmp_path / "mine"))
    assert get_template("script").path == mine
    assert get_template("script").description == "A tiny script template for tests."
    rows = {row["name"]: row for row in describe_templates()}
    assert rows["script"]["source"] == f"{mine} (overrides built-in)"
    assert rows["script"]["overrides"] == [str(BUILT_IN_DIR / "script.yaml")]
    assert rows["lora-finetune"]["source"] == "built-in"


def test_home_templates_are_found_and_env_folders_win_over_them(monkeypatch, tmp_path):
    home = write(tmp_path / "home" / "templates", "tiny.yaml", TINY)
    assert get_template("tiny").path == home
    first = write(tmp_path / "first", "tiny.yaml", TINY.replace("A tiny", "The first"))
    monkeypatch.setenv("COMPUTESWARM_TEMPLATES", str(tmp_path / "first"))
    assert get_template("tiny").path == first
    row = next(r for r in describe_templates() if r["name"] == "tiny")
    assert row["source"] == f"{first} (overrides {home})"


def test_a_broken_user_template_is_listed_with_its_error(monkeypatch, tmp_path):
    write(tmp_path / "mine", "broken.yaml", "description: [\n")
    monkeypatch.setenv("COMPUTESWARM_TEMPLATES", str(tmp_path / "mine"))
    rows = {row["name"]: row for row in describe_templates()}
    assert rows["broken"]["kind"] == "?" and "not valid YAML" in rows["broken"]["error"]
    assert rows["script"]["error"] is None
    with pytest.raises(SpecError, match=r"broken\.yaml"):
        get_template("broken")


def test_a_template_file_path_works_as_a_name(tmp_path):
    path = write(tmp_path, "anything.yaml", TINY)
    assert get_template(str(path)).name == "anything"


# CLI


runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(cli.app, list(args))


def test_cli_list_shows_built_ins_and_overrides(monkeypatch, tmp_path):
    write(tmp_path / "mine", "script.yaml", TINY)
    monkeypatch.setenv("COMPUTESWARM_TEMPLATES", str(tmp_path / "mine"))
    result = invoke("templates", "list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["NAME", "KIND", "DESCRIPTION", "SOURCE"]
    lora = next(line for line in lines if line.startswith("lora-finetune "))
    assert lora.split()[1] == "lora" and lora.endswith("built-in")
    script = next(line for line in lines if line.startswith("script "))
    assert "A tiny script template" in script and script.endswith("(overrides built-in)")
    as_json = json.loads(invoke("templates", "list", "--json").output)
    assert {row["name"]: row["kind"] for row in as_json}["pipeline-train"] == "pipeline"


def test_cli_show_prints_parameters_and_the_raw_spec():
    result = invoke("templates", "show", "script")
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith("script (script): ")
    assert "render: computeswarm templates render script --set entrypoint=VALUE" in out
    assert "  entrypoint    str, required" in out
    assert "  nodes         int, default 1, range 1..64" in out
    assert "  queue         bool, default True" in out
    assert "  entrypoint: ${entrypoint}" in out  # unrendered


def test_cli_render_prints_yaml_that_parses_as_a_spec():
    result = invoke(
        "templates", "render", "pipeline-train", "--set", "nodes=4", "-s", "schedule=1f1b"
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("# rendered from template 'pipeline-train' (")
    spec = parse_job_spec(result.output)
    assert spec.num_stages == 4 and spec.pipeline.schedule == "1f1b"


def test_cli_render_writes_a_file(tmp_path):
    out = tmp_path / "job.yaml"
    result = invoke(
        "templates", "render", "script", "--set", "entrypoint=python main.py", "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    assert parse_job_spec(out.read_text()).entrypoint == "python main.py"


def test_cli_render_errors_are_spec_errors():
    result = invoke("templates", "render", "script", "--set", "nodes=two")
    assert isinstance(result.exception, SpecError)
    assert "nodes: 'two' is not an int" in str(result.exception)


class FakeCoordinator:
    def __init__(self) -> None:
        self.submitted: list[tuple[dict, bytes | None]] = []
        self.quoted: list[dict] = []

    def submit_job(self, spec: dict, upload: bytes | None) -> dict:
        self.submitted.append((spec, upload))
        return {"id": "job-1", "name": spec["name"], "state": "pending"}

    def quote(self, spec: dict, explain: bool) -> dict:
        self.quoted.append(spec)
        return {"matched": False, "reason": "no supply"}


@pytest.fixture
def coordinator(monkeypatch) -> FakeCoordinator:
    fake = FakeCoordinator()
    monkeypatch.setattr(jobs_cli, "_client", lambda *_: fake)
    return fake


def test_submit_a_template_uploads_the_working_dir_under_dir(coordinator, tmp_path):
    (tmp_path / "main.py").write_text("print('hi')\n")
    result = invoke(
        "submit", "--template", "script", "--set", "entrypoint=python main.py", "--dir",
        str(tmp_path),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    [(spec, upload)] = coordinator.submitted
    assert spec["kind"] == "script" and spec["entrypoint"] == "python main.py"
    assert upload is not None and b"main.py" in upload


def test_submit_a_template_checks_inputs_like_a_spec_file(coordinator, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("submit", "--template", "lora-finetune")
    assert isinstance(result.exception, SpecError)
    assert "dataset 'data.jsonl' is not a file in the working_dir" in str(result.exception)
    result = invoke("submit", "-t", "script", "--set", "entrypoint=x", "--set", "working_dir=..")
    assert "leads outside" in str(result.exception)
    assert coordinator.submitted == []


def test_submit_takes_a_spec_file_or_a_template(coordinator, tmp_path):
    spec_file = write(tmp_path, "job.yaml", "kind: script\n")
    both = invoke("submit", str(spec_file), "--template", "script")
    assert "give a job spec file or --template NAME" in str(both.exception)
    neither = invoke("submit")
    assert "give a job spec file or --template NAME" in str(neither.exception)
    stray = invoke("submit", str(spec_file), "--set", "a=b")
    assert "--set and --dir go with --template" in str(stray.exception)


def test_market_quote_takes_a_template(coordinator, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("market", "quote", "-t", "script", "-s", "entrypoint=run", "-s", "nodes=2",
                    "-s", "gpus=any:8GB:2")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "no match now: no supply" in result.output
    assert coordinator.quoted[0]["resources"]["nodes"] == 2
