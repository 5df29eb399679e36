"""Buyer job specs: parsing, shorthands, every refusal with its message, the working folder's
confinement to the spec's folder, and the escrow arithmetic.
"""

from __future__ import annotations

import os
import re
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from computeswarm.errors import UserError
from computeswarm.jobs.errors import SpecError
from computeswarm.jobs.spec import (
    ScriptJob,
    load_job_spec,
    parse_job_spec,
    resolve_working_dir,
)
from computeswarm.jobs.spec_parts import GpuRequest

FULL = """\
kind: script
name: hello-swarm
entrypoint: python main.py
runtime_env: {working_dir: ., pip: [numpy], env_vars: {STEPS: "10"}}
resources: {gpus: "RTX4090:24GB:2", nodes: 2}
pricing: {max_price_per_gpu_hour: 0.60, budget: 2.00}
min_reliability: 0.9
max_duration: 30m
"""


def spec(**overrides) -> dict:
    """The smallest valid spec, as a dict, with `overrides` on top."""
    base = {
        "kind": "script",
        "name": "job",
        "entrypoint": "python main.py",
        "pricing": {"max_price_per_gpu_hour": "0.50"},
    }
    return {**base, **overrides}


def refused(data: str | dict) -> str:
    with pytest.raises(SpecError) as e:
        parse_job_spec(data)
    return str(e.value)


# --- a valid spec -----------------------------------------------------------------------------


def test_a_full_script_spec_parses_from_yaml():
    job = parse_job_spec(FULL)
    assert isinstance(job, ScriptJob)
    assert job.kind == "script"
    assert job.name == "hello-swarm"
    assert job.entrypoint == "python main.py"
    assert job.runtime_env.working_dir == "."
    assert job.runtime_env.pip == ["numpy"]
    assert job.runtime_env.env_vars == {"STEPS": "10"}
    assert job.resources.gpus == GpuRequest(model="RTX4090", min_vram_gb=24, count=2)
    assert job.resources.nodes == 2
    assert job.resources.gpus_per_node == 1
    assert job.pricing.max_price_per_gpu_hour == Decimal("0.60")
    assert job.pricing.max_price_micros == 600_000
    assert job.pricing.budget_micros == 2_000_000
    assert job.min_reliability == 0.9
    assert job.max_duration == 1800.0
    assert job.queue is True


def test_defaults_of_a_minimal_spec():
    job = parse_job_spec(spec())
    assert job.resources.gpus == GpuRequest(model=None, min_vram_gb=0, count=1)
    assert job.resources.nodes == 1
    assert job.pricing.budget_micros is None
    assert job.runtime_env.working_dir is None
    assert job.max_duration == 3600.0
    assert job.min_reliability == 0.0


def test_the_gpus_can_be_written_out_in_full():
    job = parse_job_spec(
        spec(resources={"gpus": {"model": "A100", "min_vram_gb": 40, "count": 4}, "nodes": 2})
    )
    assert job.resources.gpus == GpuRequest(model="A100", min_vram_gb=40, count=4)
    assert job.resources.gpus_per_node == 2


# --- GPU shorthand ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "model", "vram", "count"),
    [
        ("RTX4090:24GB:2", "RTX4090", 24, 2),
        ("any:16GB:4", None, 16, 4),
        ("ANY:16GB:4", None, 16, 4),
        ("rtx4090:24gb:2", "RTX4090", 24, 2),
        ("A100", "A100", 0, 1),
        ("A100:80GB", "A100", 80, 1),
        ("A100:8", "A100", 0, 8),
        (" H100:80 GB:8 ", "H100", 80, 8),
    ],
)
def test_gpu_shorthand(text, model, vram, count):
    assert GpuRequest.parse(text) == GpuRequest(model=model, min_vram_gb=vram, count=count)


@pytest.mark.parametrize("text", ["", "RTX4090:lots", "RTX 4090", "RTX4090:24GB:2:extra", ":2"])
def test_bad_gpu_shorthand_says_what_is_expected(text):
    with pytest.raises(ValueError, match="is not MODEL"):
        GpuRequest.parse(text)
    message = refused(spec(resources={"gpus": text}))
    assert "resources.gpus" in message
    assert "RTX4090:24GB:2" in message  # the example of the right form


def test_a_zero_gpu_count_is_refused():
    assert "resources.gpus.count" in refused(spec(resources={"gpus": "RTX4090:24GB:0"}))


def test_shorthand_in_a_spec_splits_over_nodes():
    job = parse_job_spec(spec(resources={"gpus": "any:16GB:4", "nodes": 2}))
    assert job.resources.gpus.model is None
    assert job.resources.gpus.min_vram_gb == 16
    assert job.resources.gpus_per_node == 2


# --- durations --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (90, 90.0),
        (90.5, 90.5),
        ("90", 90.0),
        ("45s", 45.0),
        ("30m", 1800.0),
        ("2h", 7200.0),
        ("1.5h", 5400.0),
        ("1d", 86400.0),
        ("30d", 30 * 86400.0),
    ],
)
def test_durations(value, seconds):
    assert parse_job_spec(spec(max_duration=value)).max_duration == seconds


def test_a_duration_in_yaml_text():
    assert parse_job_spec(FULL.replace("30m", "2h")).max_duration == 7200.0
    assert parse_job_spec(FULL.replace("30m", "90")).max_duration == 90.0


@pytest.mark.parametrize("value", ["2w", "abc", "-5m", "h", "1 day"])
def test_a_duration_that_is_not_one_says_the_form(value):
    assert "is not a duration like 90, 30m, 2h, 1d" in refused(spec(max_duration=value))


@pytest.mark.parametrize("value", [0, 0.5, "0s", "31d", 30 * 86400 + 1])
def test_a_duration_out_of_range_is_refused(value):
    assert "max_duration must be between 1 s and 30 days" in refused(spec(max_duration=value))


# --- money ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "micros"),
    [("0.123456", 123_456), (0.6, 600_000), ("1", 1_000_000), ("1000", 1_000_000_000)],
)
def test_prices_are_exact_micro_units(value, micros):
    job = parse_job_spec(spec(pricing={"max_price_per_gpu_hour": value}))
    assert job.pricing.max_price_micros == micros


@pytest.mark.parametrize("value", ["0.1234567", 0.1234567, "0.0000001"])
def test_a_price_with_more_than_6_decimals_is_refused(value):
    message = refused(spec(pricing={"max_price_per_gpu_hour": value}))
    assert "pricing.max_price_per_gpu_hour" in message
    assert "money has at most 6 decimals" in message


def test_a_budget_with_more_than_6_decimals_is_refused():
    message = refused(spec(pricing={"max_price_per_gpu_hour": "1", "budget": "2.0000001"}))
    assert "pricing.budget: Value error, money has at most 6 decimals" in message


@pytest.mark.parametrize("value", ["-0.5", -1, 0, "0"])
def test_a_price_must_be_positive(value):
    message = refused(spec(pricing={"max_price_per_gpu_hour": value}))
    assert "pricing.max_price_per_gpu_hour: Input should be greater than 0" in message


@pytest.mark.parametrize("value", ["-2", 0])
def test_a_budget_must_be_positive(value):
    message = refused(spec(pricing={"max_price_per_gpu_hour": "1", "budget": value}))
    assert "pricing.budget: Input should be greater than 0" in message


def test_a_price_over_the_ceiling_is_refused():
    assert "less than or equal to 1000" in refused(
        spec(pricing={"max_price_per_gpu_hour": "1000.000001"})
    )


def test_a_missing_price_is_refused():
    assert "pricing: Field required" in refused({k: v for k, v in spec().items() if k != "pricing"})


# --- unknown keys name the nearest one ----------------------------------------------------------


def test_an_unknown_key_names_the_nearest_key():
    data = spec(entrypont="python x.py")
    del data["entrypoint"]
    message = refused(data)
    assert "unknown key 'entrypont' (did you mean 'entrypoint'?)" in message
    assert "entrypoint: Field required" in message  # every problem, not just the first


def test_an_unknown_nested_key_names_the_nearest_key_at_its_level():
    message = refused(spec(pricing={"max_price_per_gpu_hr": "0.5"}))
    assert (
        "unknown key 'pricing.max_price_per_gpu_hr' (did you mean 'max_price_per_gpu_hour'?)"
        in message
    )


@pytest.mark.parametrize(
    ("data", "key", "near"),
    [
        (spec(resources={"gpu": "A100"}), "resources.gpu", "gpus"),
        (spec(runtime_env={"env_var": {}}), "runtime_env.env_var", "env_vars"),
        (spec(resources={"gpus": {"modle": "A100"}}), "resources.gpus.modle", "model"),
        (spec(min_reliabilty=0.9), "min_reliabilty", "min_reliability"),
    ],
)
def test_did_you_mean_at_every_level(data, key, near):
    assert f"unknown key {key!r} (did you mean {near!r}?)" in refused(data)


def test_an_unknown_key_with_nothing_near_lists_the_valid_keys():
    message = refused(spec(pricing={"max_price_per_gpu_hour": "1", "zzz": 1}))
    assert "unknown key 'pricing.zzz' (valid keys: budget, max_price_per_gpu_hour)" in message


def test_a_spec_error_is_a_user_error_and_names_its_source():
    with pytest.raises(UserError, match=r"^my.yaml: "):
        parse_job_spec(spec(bogus=1), source="my.yaml")


# --- kinds ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["scrip", "Script", 3, ["script"], {"a": 1}])  # L1: was a 500
def test_an_unknown_kind_is_refused(kind):
    assert refused(spec(kind=kind)) == (
        f"job spec: unknown kind {kind!r} (supported: script, lora, pipeline, sweep, serve)"
    )


def test_a_missing_kind_is_refused():
    data = spec()
    del data["kind"]
    assert (
        refused(data)
        == "job spec: missing `kind` (supported: script, lora, pipeline, sweep, serve)"
    )


@pytest.mark.parametrize("text", ["- a list", "just text", "42", ""])
def test_a_spec_must_be_a_mapping(text):
    assert refused(text) == "job spec: expected a mapping with a `kind` key"


def test_invalid_yaml_is_a_spec_error():
    assert refused("kind: script\nname: [").startswith("job spec: not valid YAML:")


# --- resources and env ----------------------------------------------------------------------


@pytest.mark.parametrize(("gpus", "nodes"), [("RTX4090:24GB:3", 2), ("A100:8", 3), ("A100", 2)])
def test_gpus_must_split_evenly_over_nodes(gpus, nodes):
    message = refused(spec(resources={"gpus": gpus, "nodes": nodes}))
    assert "cannot be split evenly" in message
    assert f"use a multiple of {nodes}" in message


@pytest.mark.parametrize("name", ["RAY_ADDRESS", "RAY_", "COMPUTESWARM_API_KEY", "COMPUTESWARM_"])
def test_reserved_env_var_names_are_refused(name):
    message = refused(spec(runtime_env={"env_vars": {name: "x"}}))
    assert f"{name} is reserved (RAY_*, COMPUTESWARM_* are set by the swarm)" in message


@pytest.mark.parametrize("name", ["RAYON_NUM_THREADS", "MY_RAY_ADDRESS", "ray_address", "_X"])
def test_names_that_only_look_reserved_are_fine(name):
    job = parse_job_spec(spec(runtime_env={"env_vars": {name: "x"}}))
    assert job.runtime_env.env_vars == {name: "x"}


@pytest.mark.parametrize("name", ["1ABC", "A-B", "A B", ""])
def test_invalid_env_var_names_are_refused(name):
    assert "is not a valid environment variable name" in refused(
        spec(runtime_env={"env_vars": {name: "x"}})
    )


@pytest.mark.parametrize("name", ["", "-starts-with-dash", "has space", "x" * 65])
def test_bad_job_names_are_refused(name):
    assert "name:" in refused(spec(name=name))


# --- working_dir stays inside the spec's folder -------------------------------------------------


def with_dir(working_dir: str | None) -> ScriptJob:
    return parse_job_spec(spec(runtime_env={"working_dir": working_dir}))


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """The spec's folder, with a `code` folder in it and a folder next to it."""
    (tmp_path / "spec" / "code" / "pkg").mkdir(parents=True)
    (tmp_path / "spec" / "code" / "main.py").write_text("print('hi')\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("s3cret\n")
    return tmp_path / "spec"


def test_no_working_dir_resolves_to_none(base):
    assert resolve_working_dir(with_dir(None), base) is None


@pytest.mark.parametrize("raw", ["code", "./code", "code/", "code/pkg/..", "."])
def test_a_working_dir_inside_the_spec_folder_resolves(base, raw):
    assert resolve_working_dir(with_dir(raw), base) == (base / raw).resolve()


def test_an_absolute_working_dir_inside_the_spec_folder_is_fine(base):
    assert resolve_working_dir(with_dir(str(base / "code")), base) == (base / "code").resolve()


@pytest.mark.parametrize("raw", ["..", "../outside", "code/../../outside", "code/../.."])
def test_dot_dot_out_of_the_spec_folder_is_refused(base, raw):
    with pytest.raises(SpecError, match="leads outside the spec's folder"):
        resolve_working_dir(with_dir(raw), base)


def test_an_absolute_working_dir_outside_the_spec_folder_is_refused(base):
    with pytest.raises(SpecError, match="leads outside the spec's folder"):
        resolve_working_dir(with_dir(str(base.parent / "outside")), base)
    with pytest.raises(SpecError, match="leads outside the spec's folder"):
        resolve_working_dir(with_dir("/"), base)


def test_a_sibling_folder_with_the_same_prefix_is_outside(base):
    (base.parent / "spec-evil").mkdir()
    with pytest.raises(SpecError, match="leads outside"):
        resolve_working_dir(with_dir("../spec-evil"), base)


def test_a_symlink_in_the_working_dir_that_leads_out_is_refused(base):
    os.symlink(base.parent / "outside" / "secret", base / "code" / "pkg" / "data")
    with pytest.raises(SpecError, match="is a symlink out of the spec's folder"):
        resolve_working_dir(with_dir("code"), base)


def test_a_symlink_to_a_folder_outside_is_refused(base):
    os.symlink(base.parent / "outside", base / "code" / "linked")
    with pytest.raises(SpecError, match="is a symlink out of the spec's folder"):
        resolve_working_dir(with_dir("code"), base)


def test_a_working_dir_that_is_itself_a_symlink_out_is_refused(base):
    os.symlink(base.parent / "outside", base / "link")
    with pytest.raises(SpecError, match="leads outside the spec's folder"):
        resolve_working_dir(with_dir("link"), base)


def test_a_symlink_that_stays_inside_is_fine(base):
    os.symlink(base / "code" / "main.py", base / "code" / "pkg" / "main-link.py")
    assert resolve_working_dir(with_dir("code"), base) == (base / "code").resolve()


def test_a_missing_working_dir_is_refused(base):
    with pytest.raises(SpecError, match=r"'nope' is not a folder"):
        resolve_working_dir(with_dir("nope"), base)


def test_a_file_is_not_a_working_dir(base):
    with pytest.raises(SpecError, match="is not a folder"):
        resolve_working_dir(with_dir("code/main.py"), base)


def test_load_job_spec_resolves_against_the_spec_files_folder(base):
    path = base / "job.yaml"
    path.write_text(FULL.replace("working_dir: .", "working_dir: code"))
    job, working_dir = load_job_spec(path)
    assert job.name == "hello-swarm"
    assert working_dir == (base / "code").resolve()


def test_load_job_spec_names_the_file_in_errors(base):
    path = base / "job.yaml"
    path.write_text(FULL.replace("entrypoint", "entrypont"))
    with pytest.raises(SpecError, match=rf"^{re.escape(str(path))}: .*did you mean 'entrypoint'"):
        load_job_spec(path)


def test_load_job_spec_refuses_an_escaping_working_dir(base):
    path = base / "job.yaml"
    path.write_text(FULL.replace("working_dir: .", "working_dir: ../outside"))
    with pytest.raises(SpecError, match="leads outside"):
        load_job_spec(path)


def test_load_job_spec_of_a_missing_file(tmp_path):
    with pytest.raises(SpecError, match=r"cannot read job spec .*No such file"):
        load_job_spec(tmp_path / "missing.yaml")


# --- escrow -----------------------------------------------------------------------------------


def escrow(price: str, gpus: int, nodes: int, duration, budget: str | None = None) -> int:
    pricing = {"max_price_per_gpu_hour": price}
    if budget is not None:
        pricing["budget"] = budget
    data = spec(
        pricing=pricing, resources={"gpus": f"any:{gpus}", "nodes": nodes}, max_duration=duration
    )
    return parse_job_spec(data).escrow_micros


def test_escrow_is_the_most_the_job_could_cost_without_a_budget():
    # 0.60/GPU-h x 2 GPUs x 0.5 h = 0.60
    assert escrow("0.60", 2, 2, "30m") == 600_000
    # 1.25/GPU-h x 8 GPUs x 1 d = 240
    assert escrow("1.25", 8, 4, "1d") == 1_250_000 * 8 * 24 == 240_000_000


def test_escrow_is_capped_by_the_budget():
    assert escrow("0.60", 2, 2, "30m", budget="2.00") == 600_000  # the ceiling is lower
    assert escrow("0.60", 2, 2, "30m", budget="0.50") == 500_000
    assert escrow("0.60", 2, 2, "30m", budget="0.600000") == 600_000
    assert escrow("0.60", 2, 2, "30m", budget="0.599999") == 599_999


def test_escrow_rounds_a_fraction_of_a_micro_up():
    # 1 micro/GPU-h for 90 s is 1/40 micro: held as 1.
    assert escrow("0.000001", 1, 1, 90) == 1
    # 0.000007/GPU-h x 3 GPUs x 1000 s = 21000/3600 = 5.83 micros: held as 6.
    assert escrow("0.000007", 3, 1, 1000) == 6


def test_the_full_specs_escrow():
    assert parse_job_spec(FULL).escrow_micros == 600_000


@given(
    price_micros=st.integers(1, 1_000_000_000),
    gpus_per_node=st.integers(1, 8),
    nodes=st.integers(1, 4),
    seconds=st.integers(1, 30 * 86400),
    budget_micros=st.none() | st.integers(1, 1_000_000_000_000),
)
def test_escrow_is_min_of_budget_and_price_x_gpus_x_duration(
    price_micros, gpus_per_node, nodes, seconds, budget_micros
):
    gpus = gpus_per_node * nodes
    pricing = {"max_price_per_gpu_hour": str(Decimal(price_micros) / 1_000_000)}
    if budget_micros is not None:
        pricing["budget"] = str(Decimal(budget_micros) / 1_000_000)
    job = parse_job_spec(
        spec(
            pricing=pricing,
            resources={"gpus": f"A100:{gpus}", "nodes": nodes},
            max_duration=seconds,
        )
    )
    ceiling = -(-price_micros * gpus * seconds // 3600)  # integer ceiling, no floats
    expected = ceiling if budget_micros is None else min(budget_micros, ceiling)
    assert job.escrow_micros == expected


def test_escrow_covers_a_fractional_duration():
    # 1000/GPU-h x 1 GPU x 1.5 s = 416,666.67 micros: the escrow must hold at least that
    # (truncating to 1 s would hold only 277,778), and at most the cost of 2 s.
    exact = -(-1_000_000_000 * 3 // 7200)
    assert exact == 416_667
    assert exact <= escrow("1000", 1, 1, "1.5s") <= -(-1_000_000_000 * 2 // 3600)
