"""Pure parts of the model registry: references, file hashes, the API view."""

from __future__ import annotations

import pytest

from computeswarm.cluster.errors import ApiError
from computeswarm.cluster.models.registry import hash_files, parse_ref, view
from computeswarm.cluster.store.models import ModelVersion
from computeswarm.errors import UserError


@pytest.mark.parametrize(
    ("ref", "parsed"),
    [
        ("qwen-lora", ("qwen-lora", None)),
        ("qwen-lora@3", ("qwen-lora", 3)),
        ("a.b_c@12", ("a.b_c", 12)),
    ],
)
def test_refs_name_a_model_and_maybe_a_version(ref, parsed):
    assert parse_ref(ref) == parsed


@pytest.mark.parametrize(
    "ref", ["", "@1", "x@", "x@0", "x@-1", "x@1.5", "x@latest", "../x", "a/b", "x@1@2", ".x"]
)
def test_bad_refs_say_the_shape(ref):
    with pytest.raises(ApiError, match=r"not NAME or NAME@N"):
        parse_ref(ref)


def test_hash_files_is_over_contents_in_a_stable_order(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_bytes(b"ab")
    b.write_bytes(b"c")
    first = hash_files([a, b])
    assert first == hash_files([b, a])  # order given does not matter
    assert len(first) == 64
    b.write_bytes(b"d")
    assert hash_files([a, b]) != first  # contents do


def test_hash_files_keeps_file_boundaries(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"ab")
    b.write_bytes(b"c")
    joined = hash_files([a, b])
    a.write_bytes(b"a")
    b.write_bytes(b"bc")
    assert hash_files([a, b]) != joined


def test_hash_files_walks_folders(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "x.jsonl").write_text('{"text": "hi"}\n')
    (data / "sub" / "y.jsonl").write_text('{"text": "yo"}\n')
    assert hash_files([data]) == hash_files([data / "sub" / "y.jsonl", data / "x.jsonl"])
    (data / "link").symlink_to(data / "x.jsonl")
    with pytest.raises(UserError, match="symlink"):
        hash_files([data])


def test_view_hides_where_the_files_live():
    version = ModelVersion(
        id="mv-1",
        account_id="acct-1",
        name="m",
        version=2,
        kind="lora-adapter",
        base_model="base",
        spec_hash="s",
        data_hash="d",
        metrics={"loss": 0.5},
        checkpoint="ckpt",
        parent="mv-0",
        job_id="j-1",
        artifact_path="/var/lib/computeswarm/coordinator/models/acct-1/m/2",
        size_bytes=10,
        created_at=1.0,
    )
    shown = view(version)
    assert shown["ref"] == "m@2" and shown["parent"] == "mv-0"
    assert shown["metrics"] == {"loss": 0.5}
    assert "artifact_path" not in shown


@pytest.mark.parametrize("ref", ["adder@²¹", "adder@٣x", "adder@0", "adder@-1", "adder@"])
def test_a_version_that_is_not_ascii_digits_is_refused_not_a_server_error(ref):
    """Found by schemathesis: "²¹".isdigit() is true and int() of it raises (a 500)."""
    with pytest.raises(ApiError):
        parse_ref(ref)
