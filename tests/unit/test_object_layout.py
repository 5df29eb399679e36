"""Object keys and lease policies (pure): keys only from checked ids, policies that grant
a lease its own prefixes and nothing else."""

from __future__ import annotations

import pytest

from computeswarm.cluster.objects.layout import (
    Grant,
    account_of,
    job_prefix,
    lease_policy,
    model_prefix,
    run_prefix,
    segment,
)
from computeswarm.cluster.objects.plane import lease_env
from computeswarm.cluster.objects.server import Credentials
from computeswarm.jobs import contract


@pytest.mark.parametrize("bad", ["", "..", "a/b", "../x", "a..b", ".hidden", "x" * 200, "a b"])
def test_a_key_segment_refuses_path_tricks(bad):
    with pytest.raises(ValueError, match="not a valid object key segment"):
        segment(bad)


def test_prefixes_are_per_account_and_checked():
    assert job_prefix("acct1", "job9") == "acct1/jobs/job9/"
    assert run_prefix("acct1", "adder-1f2e") == "acct1/runs/adder-1f2e/"
    assert model_prefix("acct1", "adder", 3) == "acct1/models/adder/3/"
    assert account_of("acct1/runs/x/y.bin") == "acct1"
    with pytest.raises(ValueError):
        run_prefix("acct1", "../acct2")
    with pytest.raises(ValueError, match="trailing"):
        Grant(write=("acct1/jobs/x",))
    with pytest.raises(ValueError):
        Grant(read=("acct1/../acct2/",))


def test_a_lease_policy_names_only_its_prefixes():
    grant = Grant(read=("a/models/m/1/",), write=("a/jobs/j/",))
    statements = lease_policy("computeswarm", grant)["Statement"]
    resources = [r for s in statements for r in s["Resource"]]
    assert all(r.startswith("arn:aws:s3:::computeswarm") for r in resources)
    objects = {r for r in resources if "/" in r.removeprefix("arn:aws:s3:::")}
    assert objects == {
        "arn:aws:s3:::computeswarm/a/models/m/1/*",
        "arn:aws:s3:::computeswarm/a/jobs/j/*",
    }
    write = next(s for s in statements if "s3:PutObject" in s["Action"])
    assert write["Resource"] == ["arn:aws:s3:::computeswarm/a/jobs/j/*"]
    listing = next(s for s in statements if s["Action"] == ["s3:ListBucket"])
    assert listing["Condition"]["StringLike"]["s3:prefix"] == ["a/jobs/j/*", "a/models/m/1/*"]
    assert not any(r == "*" or r.endswith(":::*") for r in resources)


def test_a_lease_sees_its_own_key_and_prefix_only():
    env = lease_env(
        "http://10.90.0.1:9900",
        "computeswarm",
        Credentials("lease-L1", "s3cr3t"),
        Grant(write=("a/jobs/j/",)),
    )
    assert env["AWS_ACCESS_KEY_ID"] == "lease-L1" and env["AWS_SECRET_ACCESS_KEY"] == "s3cr3t"
    assert env[contract.S3_PREFIX] == "a/jobs/j/"
    assert env[contract.S3_ENDPOINT] == env["AWS_ENDPOINT_URL"] == "http://10.90.0.1:9900"
    assert env["AWS_REQUEST_CHECKSUM_CALCULATION"] == "WHEN_REQUIRED"


def test_storage_bytes_are_scraped_at_most_every_period_and_survive_a_store_outage():
    from computeswarm.cluster.metrics import StorageCollector

    calls = []

    def sizes():
        calls.append(1)
        if len(calls) == 2:
            raise ConnectionError("store down")
        return {"a": 10 * len(calls)}

    collector = StorageCollector(sizes, every_s=0)
    first = next(collector.collect()).samples
    assert [(s.labels["account"], s.value) for s in first] == [("a", 10)]
    down = next(collector.collect()).samples  # the store is down: the last figures stay
    assert [(s.labels["account"], s.value) for s in down] == [("a", 10)]
    assert [s.value for s in next(collector.collect()).samples] == [30]
    cached = StorageCollector(sizes, every_s=3600)
    next(cached.collect())
    next(cached.collect())
    assert len(calls) == 4  # once for the cached collector
