"""Datasets' pure core and local disk: manifests, references, content-defined chunks,
assembling files from chunks, and the seller's cache."""

from __future__ import annotations

import hashlib
import os
import random

import pytest
from pydantic import ValidationError

from computeswarm.data.assemble import IntegrityError, materialize
from computeswarm.data.cache import DatasetCache
from computeswarm.data.chunking import Chunker, scan
from computeswarm.data.manifest import Manifest
from computeswarm.data.refs import DatasetRef, parse_ref
from computeswarm.errors import UserError


def random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def chunk_store(found) -> dict[str, bytes]:
    return {sha: piece.read() for sha, piece in found.pieces.items()}


def test_references_name_a_version_a_file_and_an_owner():
    assert parse_ref("adder@2") == DatasetRef("adder", 2)
    assert parse_ref("adder@2/train/part-0.jsonl") == DatasetRef(
        "adder", 2, None, "train/part-0.jsonl"
    )
    assert parse_ref("alice/adder@3/x.jsonl") == DatasetRef("adder", 3, "alice", "x.jsonl")
    assert str(parse_ref("alice/adder@3/x.jsonl")) == "alice/adder@3/x.jsonl"
    assert parse_ref("alice/adder@3").version_key == "alice/adder@3"
    for bad in (
        "adder@0",
        "adder@x",
        "a/b/adder@1",
        "adder@1/../../etc/passwd",
        "adder@1/",
        "@1",
        "a@1@2",
    ):
        with pytest.raises(ValueError):
            parse_ref(bad)


def test_a_manifest_id_is_what_the_files_are_not_how_they_were_cut(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.bin").write_bytes(random_bytes(3 * 2**20, 1))
    (tmp_path / "d" / "sub").mkdir()
    (tmp_path / "d" / "sub" / "b.txt").write_bytes(b"hello")
    (tmp_path / "d" / "empty").write_bytes(b"")
    cdc = scan(tmp_path / "d")
    fixed = scan(tmp_path / "d", Chunker(avg_size=2**19, fixed=True))
    assert [f.chunks for f in cdc.manifest.files] != [f.chunks for f in fixed.manifest.files]
    assert cdc.manifest.id == fixed.manifest.id
    assert [f.path for f in cdc.manifest.files] == ["a.bin", "empty", "sub/b.txt"]
    entry = cdc.manifest.file("sub/b.txt")
    assert entry.sha256 == hashlib.sha256(b"hello").hexdigest() and entry.size == 5
    # Round trip: what the store keeps parses back to the same id.
    assert Manifest.model_validate_json(cdc.manifest.to_bytes()).id == cdc.manifest.id
    (tmp_path / "d" / "sub" / "b.txt").write_bytes(b"hellO")
    assert scan(tmp_path / "d").manifest.id != cdc.manifest.id


@pytest.mark.parametrize(
    "path",
    ["../x", "/etc/passwd", "a/../../b", "a//b", "", ".", "a/./b", ".hidden/../x", "a\\b", "a\nb"],
)
def test_hostile_manifest_paths_are_refused(path):
    entry = {"path": path, "size": 0, "sha256": "0" * 64, "chunks": []}
    with pytest.raises(ValidationError):
        Manifest.model_validate({"files": [entry]})


def test_manifests_whose_sizes_lie_or_whose_paths_clash_are_refused():
    chunk = {"sha256": "a" * 64, "size": 10}
    lying = {"path": "a", "size": 11, "sha256": "0" * 64, "chunks": [chunk]}
    with pytest.raises(ValidationError, match="add up"):
        Manifest.model_validate({"files": [lying]})
    one = {"path": "a", "size": 10, "sha256": "0" * 64, "chunks": [chunk]}
    with pytest.raises(ValidationError, match="unique and sorted"):
        Manifest.model_validate({"files": [one, one]})
    inner = {**one, "path": "a/b"}
    with pytest.raises(ValidationError, match="both a file and a folder"):
        Manifest.model_validate({"files": [one, inner]})
    with pytest.raises(ValidationError):
        Manifest.model_validate({"files": [{**one, "extra": 1}]})


def test_an_insertion_moves_few_content_defined_chunks_but_every_fixed_one(tmp_path):
    data = random_bytes(24 * 2**20, 2)
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    (tmp_path / "v1" / "big.bin").write_bytes(data)
    middle = len(data) // 3
    (tmp_path / "v2" / "big.bin").write_bytes(data[:middle] + b"!" + data[middle:])

    def new_chunks(chunker: Chunker) -> tuple[int, int]:
        old = set(scan(tmp_path / "v1", chunker).pieces)
        new = scan(tmp_path / "v2", chunker).pieces
        return len(set(new) - old), len(new)

    cdc_new, cdc_total = new_chunks(Chunker())
    fixed_new, fixed_total = new_chunks(Chunker(fixed=True))
    assert cdc_total >= 10 and cdc_new <= 2, (cdc_new, cdc_total)
    assert fixed_new >= fixed_total * 0.6, (fixed_new, fixed_total)


def test_symlinks_and_odd_names_are_refused_when_scanning(tmp_path):
    (tmp_path / "d").mkdir()
    os.symlink("/etc/passwd", tmp_path / "d" / "link")
    with pytest.raises(UserError, match="symlink"):
        scan(tmp_path / "d")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "a b.txt").write_text("x")
    with pytest.raises(UserError, match="file names"):
        scan(tmp_path / "e")


def test_files_are_assembled_checked_and_a_stopped_pull_keeps_whole_files(tmp_path):
    (tmp_path / "src").mkdir()
    for i in range(4):
        (tmp_path / "src" / f"f{i}.bin").write_bytes(random_bytes(2 * 2**20 + i, 10 + i))
    found = scan(tmp_path / "src")
    chunks = chunk_store(found)
    calls: list[str] = []

    def read(sha: str) -> bytes:
        calls.append(sha)
        return chunks[sha]

    got = materialize(found.manifest, tmp_path / "out", read)
    assert got.bytes_fetched == found.manifest.size and got.bytes_kept == 0
    for i in range(4):
        assert (tmp_path / "out" / f"f{i}.bin").read_bytes() == (
            tmp_path / "src" / f"f{i}.bin"
        ).read_bytes()
    # Two files lost: only their chunks are fetched again.
    (tmp_path / "out" / "f1.bin").unlink()
    (tmp_path / "out" / "f3.bin").write_bytes(b"truncated")
    calls.clear()
    again = materialize(found.manifest, tmp_path / "out", read)
    lost = {
        c.sha256 for f in found.manifest.files if f.path in ("f1.bin", "f3.bin") for c in f.chunks
    }
    assert set(calls) == lost
    assert again.bytes_kept == found.manifest.size - again.bytes_fetched
    assert not list((tmp_path / "out").glob(".*partial*"))


def test_a_corrupt_chunk_is_caught_and_leaves_no_file(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.bin").write_bytes(random_bytes(3 * 2**20, 3))
    found = scan(tmp_path / "src")
    chunks = chunk_store(found)
    victim = found.manifest.files[0].chunks[-1].sha256

    def read(sha: str) -> bytes:
        data = chunks[sha]
        return data[:-1] + bytes([data[-1] ^ 1]) if sha == victim else data

    with pytest.raises(IntegrityError, match=victim[:12]):
        materialize(found.manifest, tmp_path / "out", read)
    assert not (tmp_path / "out" / "a.bin").exists()
    assert not list((tmp_path / "out").glob(".*partial*"))


def test_the_cache_fetches_a_version_once_and_a_new_version_only_its_new_files(tmp_path):
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "same.bin").write_bytes(random_bytes(2**20, 4))
    (tmp_path / "v1" / "changes.bin").write_bytes(random_bytes(2**20, 5))
    v1 = scan(tmp_path / "v1")
    chunks = chunk_store(v1)  # (read now: the file changes below)
    (tmp_path / "v1" / "changes.bin").write_bytes(random_bytes(2**20, 6))
    v2 = scan(tmp_path / "v1")
    chunks |= chunk_store(v2)
    cache = DatasetCache(tmp_path / "cache", limit_bytes=10 * 2**20)

    folder, first = cache.view(v1.manifest, chunks.__getitem__)
    assert first.bytes_fetched == v1.manifest.size
    assert (folder / "same.bin").read_bytes() == (tmp_path / "v1" / "same.bin").read_bytes()
    assert oct(folder.stat().st_mode & 0o777) == "0o555"
    assert oct((folder / "same.bin").stat().st_mode & 0o777) == "0o444"
    again_folder, again = cache.view(v1.manifest, lambda sha: pytest.fail("fetched again"))
    assert again_folder == folder and again.bytes_fetched == 0
    _, second = cache.view(v2.manifest, chunks.__getitem__)
    assert second.bytes_fetched == 2**20 and second.bytes_kept == 2**20  # only changes.bin
    assert cache.size() == 3 * 2**20  # same.bin is kept once


def test_the_cache_evicts_least_recently_used_versions_but_never_one_in_use(tmp_path):
    versions = []
    for i in range(3):
        (tmp_path / f"v{i}").mkdir()
        (tmp_path / f"v{i}" / "x.bin").write_bytes(random_bytes(2**20, 20 + i))
        versions.append(scan(tmp_path / f"v{i}"))
    chunks = {sha: data for v in versions for sha, data in chunk_store(v).items()}
    cache = DatasetCache(tmp_path / "cache", limit_bytes=2 * 2**20 + 100)
    first, _ = cache.view(versions[0].manifest, chunks.__getitem__)
    cache.view(versions[1].manifest, chunks.__getitem__)
    # The first is in use by a running lease: the second goes instead.
    cache.view(versions[2].manifest, chunks.__getitem__, in_use={versions[0].manifest.id})
    assert (first / "x.bin").exists()
    assert not (tmp_path / "cache" / "versions" / versions[1].manifest.id).exists()
    assert cache.size() <= cache.limit_bytes
    too_big = DatasetCache(tmp_path / "small", limit_bytes=100)
    with pytest.raises(OSError, match="larger than this seller's cache"):
        too_big.view(versions[0].manifest, chunks.__getitem__)
