"""The pure parts of volumes: per-file merging of two writers, mount paths a spec may
use, sizes on the command line, and the untrusted walk of a job's folder."""

from __future__ import annotations

import hashlib
import os

import pytest
import typer

from computeswarm.data.manifest import Chunk, FileEntry, Manifest
from computeswarm.data.merge import merge
from computeswarm.data.untrusted import scan_and_send
from computeswarm.data.volumes_cli import parse_size
from computeswarm.jobs.errors import SpecError
from computeswarm.jobs.spec import parse_job_spec


def entry(path: str, data: bytes) -> FileEntry:
    sha = hashlib.sha256(data).hexdigest()
    chunks = (Chunk(sha256=sha, size=len(data)),) if data else ()
    return FileEntry(path=path, size=len(data), sha256=sha, chunks=chunks)


def tree(**files: bytes) -> Manifest:
    entries = [entry(p.replace("__", "/"), d) for p, d in files.items()]
    return Manifest(files=tuple(sorted(entries, key=lambda e: e.path)))


def as_dict(m: Manifest) -> dict[str, str]:
    return {f.path: f.sha256[:8] for f in m.files}


def test_a_commit_applies_only_what_it_changed_since_its_base():
    base = tree(a=b"0", b=b"0", c=b"0")
    head = tree(a=b"other", b=b"0", c=b"0", d=b"other")  # someone committed meanwhile
    theirs = tree(a=b"0", b=b"mine", e=b"mine")  # changed b, deleted c, added e
    assert as_dict(merge(head, base, theirs)) == as_dict(
        tree(a=b"other", b=b"mine", d=b"other", e=b"mine")
    )


def test_the_last_commit_wins_a_file_both_changed():
    base = tree(a=b"0")
    assert as_dict(merge(tree(a=b"first"), base, tree(a=b"second"))) == as_dict(tree(a=b"second"))


def test_a_path_this_commit_writes_replaces_a_clashing_file_or_folder():
    base = tree()
    head = tree(x=b"a file", y__z=b"in a folder")
    theirs = tree(x__inner=b"now a folder", y=b"now a file")
    assert as_dict(merge(head, base, theirs)) == as_dict(theirs)


def test_an_unchanged_commit_changes_nothing():
    head = tree(a=b"1", b=b"2")
    assert merge(head, tree(a=b"0"), tree(a=b"0")).id == head.id


def spec(volumes) -> dict:
    return {
        "kind": "script",
        "name": "v",
        "entrypoint": "true",
        "pricing": {"max_price_per_gpu_hour": "1"},
        "volumes": volumes,
    }


def test_mounts_are_absolute_plain_paths_outside_the_node_s_own_folders():
    parsed = parse_job_spec(
        spec({"/workspace/data": "cache", "/w": {"name": "x", "readonly": True}})
    )
    assert parsed.volumes["/workspace/data"].name == "cache"
    assert parsed.volumes["/w"].readonly
    for bad, why in [
        ({"data": "a"}, "absolute path"),
        ({"/a/../etc": "a"}, "plain segments"),
        ({"/etc/cron.d": "a"}, "node's own"),
        ({"/usr": "a"}, "node's own"),
        ({"/tmp/x": "a"}, "node's own"),
        ({"/a": "a", "/a/b": "b"}, "is inside /a"),
        ({"/a": "../b"}, "name"),
        ({f"/m{i}": "a" for i in range(9)}, "at most 8"),
    ]:
        with pytest.raises(SpecError, match=why):
            parse_job_spec(spec(bad))


def test_sizes_on_the_command_line():
    assert parse_size("50GB") == 50 * 10**9
    assert parse_size("512MiB") == 512 * 2**20
    assert parse_size("1.5 TB") == 1.5 * 10**12
    assert parse_size("1000") == 1000
    with pytest.raises(typer.BadParameter):
        parse_size("lots")


def test_the_walk_skips_links_fifos_and_odd_names_and_sends_from_open_files(tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "ok.txt").write_bytes(b"ok")
    (tmp_path / "v" / ".hidden").write_bytes(b"h")
    (tmp_path / "v" / "sub").mkdir()
    (tmp_path / "v" / "sub" / "deep.bin").write_bytes(os.urandom(100))
    (tmp_path / "secret").write_bytes(b"secret")
    (tmp_path / "v" / "link").symlink_to(tmp_path / "secret")
    (tmp_path / "v" / "dirlink").symlink_to(tmp_path)
    (tmp_path / "v" / "odd name").write_bytes(b"x")
    os.mkfifo(tmp_path / "v" / "fifo")
    sent: dict[str, bytes] = {}
    walked = scan_and_send(
        tmp_path / "v", lambda pieces: sent.update({s: p.read() for s, p in pieces.items()})
    )
    assert [f.path for f in walked.manifest.files] == [".hidden", "ok.txt", "sub/deep.bin"]
    assert sorted(walked.skipped) == ["dirlink", "fifo", "link", "odd name"]
    assert b"secret" not in sent.values()
    assert {hashlib.sha256(d).hexdigest() for d in sent.values()} == {
        c.sha256 for c in walked.manifest.chunks()
    }


def test_storage_is_charged_per_gb_hour_rounded_down_to_a_micro_unit():
    from decimal import Decimal

    from computeswarm.cluster.ledger.storage import storage_micros

    price = Decimal("0.00003")  # the default: ~0.022 per GB-month
    assert storage_micros(10**9, 3600, price) == 30
    assert storage_micros(10**9, 730 * 3600, price) == 21_900
    assert storage_micros(5 * 10**8, 3600, price) == 15
    assert storage_micros(10**6, 3600, price) == 0  # 0.03 of a micro-unit: not billed
    assert storage_micros(0, 10**6, price) == 0
