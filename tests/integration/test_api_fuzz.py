"""Schemathesis against the coordinator's own OpenAPI, over real HTTP: every operation,
generated and boundary inputs, as an admin and as a buyer. Goal: no server error (5xx)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.http_server import ServerThread

ST = Path(sys.executable).parent / "st"


@pytest.fixture
def served_head(sqlite_head):
    sqlite_head.coordinator.stop_loops()  # nothing else writes while it runs
    with ServerThread(sqlite_head.http.app) as server:
        yield sqlite_head, server.url


@pytest.mark.skipif(not ST.exists() and not shutil.which("st"), reason="schemathesis missing")
@pytest.mark.parametrize("role", ["admin", "buyer"])
def test_no_input_makes_the_api_fail_with_a_server_error(served_head, role, tmp_path):
    head, url = served_head
    key = head.admin_key if role == "admin" else head.account("buyer")
    done = subprocess.run(
        [
            str(ST),
            "run",
            f"{url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "-H",
            f"Authorization: Bearer {key}",
            "-n",
            "30",
            "--generation-deterministic",
            "--request-timeout",
            "10",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    cases = re.search(r"(\d+) generated", done.stdout)
    print(
        f"schemathesis ({role}): {cases.group(1) if cases else '?'} requests, rc {done.returncode}"
    )
    assert done.returncode == 0, done.stdout[-4000:]
    assert cases and int(cases.group(1)) > 500  # it really exercised the API
