"""A typed client for the coordinator API, used by the CLI, the seller agent and tests.

Server errors come back as the same ApiError classes the server raised, so callers
handle `NotFound` or `RateLimited` rather than status codes. Answers are the API's JSON as
sent; the CLI reads them with the response models (`api/schemas.py`, `api/views.py`), which
parse leniently, so scripts and `--json` see exactly what the coordinator said.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from computeswarm.cluster import errors
from computeswarm.errors import UserError

UPLOAD_PIECE = 256 * 1024  # a progress bar's step
MAX_MODEL_BYTES = 16 * 2**30  # unpacked size a model download may have (zip bombs)

_BY_STATUS: dict[int, type[errors.ApiError]] = {
    401: errors.Unauthorized,
    403: errors.Forbidden,
    404: errors.NotFound,
    409: errors.Conflict,
}


class CoordinatorClient:
    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ):
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self.http.close()

    # -- enrollment ---------------------------------------------------------------------

    def hub(self) -> dict:
        return self._call("GET", "/v1/hub")

    def enroll(
        self,
        *,
        invite: str,
        public_key: str,
        proof: str,
        name: str,
        endpoint: str | None,
        behind_nat: bool,
    ) -> dict:
        return self._call(
            "POST",
            "/v1/enroll",
            json={
                "invite": invite,
                "public_key": public_key,
                "proof": proof,
                "name": name,
                "endpoint": endpoint,
                "behind_nat": behind_nat,
            },
        )

    def create_invite(self, ttl_s: float | None = None, note: str = "") -> dict:
        return self._call("POST", "/v1/invites", json={"ttl_s": ttl_s, "note": note})

    def create_account(self, name: str, role: str) -> dict:
        return self._call("POST", "/v1/accounts", json={"name": name, "role": role})

    # -- sellers ------------------------------------------------------------------------

    def sellers(self, include_left: bool = False) -> list[dict]:
        return self._call("GET", "/v1/sellers", params={"include_left": include_left})

    def seller(self, seller_id: str) -> dict:
        return self._call("GET", f"/v1/sellers/{seller_id}")

    def heartbeat(
        self,
        seller_id: str,
        *,
        gpus: list[dict],
        simulated: bool,
        rtt_ms: float | None = None,
        bandwidth_mbps: float | None = None,
        workers: dict[str, str] | None = None,
    ) -> dict:
        return self._call(
            "POST",
            f"/v1/sellers/{seller_id}/heartbeat",
            json={
                "gpus": gpus,
                "simulated": simulated,
                "rtt_ms": rtt_ms,
                "bandwidth_mbps": bandwidth_mbps,
                "workers": workers or {},
            },
        )

    # -- jobs, market, ledger -------------------------------------------------------------

    def submit_job(
        self,
        spec: dict,
        working_dir_zip: bytes | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict:
        """`progress(sent, total)` is called as the request's bytes go out (the upload)."""
        body = {"spec": spec, "working_dir_zip": None}
        if working_dir_zip is not None:
            body["working_dir_zip"] = base64.b64encode(working_dir_zip).decode()
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Content-Length": str(len(data))}
        if progress is None:
            return self._call("POST", "/v1/jobs", content=data, headers=headers)

        def pieces():
            for start in range(0, len(data), UPLOAD_PIECE):
                yield data[start : start + UPLOAD_PIECE]
                progress(min(start + UPLOAD_PIECE, len(data)), len(data))

        return self._call("POST", "/v1/jobs", content=pieces(), headers=headers)

    def jobs(self) -> list[dict]:
        return self._call("GET", "/v1/jobs")

    def job(self, job_id: str) -> dict:
        return self._call("GET", f"/v1/jobs/{job_id}")

    def job_logs(self, job_id: str, offset: int = 0) -> dict:
        return self._call("GET", f"/v1/jobs/{job_id}/logs", params={"offset": offset})

    def sweep(self, job_id: str) -> dict:
        return self._call("GET", f"/v1/sweeps/{job_id}")

    def cancel_job(self, job_id: str) -> dict:
        return self._call("POST", f"/v1/jobs/{job_id}/cancel")

    def dashboard_link(self, job_id: str) -> str:
        """A one-use URL (good for a minute) of the job's lease's Ray dashboard."""
        return self.url + self._call("POST", f"/v1/jobs/{job_id}/dashboard")["path"]

    def quote(self, spec: dict, explain: bool = False) -> dict:
        return self._call("POST", "/v1/market/quote", json={"spec": spec, "explain": explain})

    def ledger(self, account: str | None = None) -> dict:
        return self._call("GET", "/v1/ledger", params={"account": account} if account else None)

    def deposit(self, account_id: str, amount: str) -> dict:
        return self._call("POST", f"/v1/accounts/{account_id}/deposit", json={"amount": amount})

    def put_offer(
        self,
        seller_id: str,
        *,
        price_per_gpu_hour: str,
        max_lease_hours: int = 24,
        available_until: float | None = None,
    ) -> dict:
        return self._call(
            "PUT",
            f"/v1/sellers/{seller_id}/offer",
            json={
                "price_per_gpu_hour": price_per_gpu_hour,
                "max_lease_hours": max_lease_hours,
                "available_until": available_until,
            },
        )

    def seller_earnings(self, seller_id: str) -> dict:
        return self._call("GET", f"/v1/sellers/{seller_id}/earnings")

    def leave(self, seller_id: str) -> dict:
        return self._call("POST", f"/v1/sellers/{seller_id}/leave")

    def disable(self, seller_id: str) -> dict:
        return self._call("POST", f"/v1/sellers/{seller_id}/disable")

    # -- models ---------------------------------------------------------------------------

    def models(self) -> list[dict]:
        """Your model versions (admins: everyone's)."""
        return self._call("GET", "/v1/models")

    def model(self, name: str) -> dict:
        """`{"name": ..., "versions": [...]}`, oldest version first."""
        return self._call("GET", f"/v1/models/{name}")

    def model_version(self, name: str, version: int | str = "latest") -> dict:
        return self._call("GET", f"/v1/models/{name}/versions/{version}")

    def download_model(
        self,
        name: str,
        version: int | str,
        dest: Path,
        *,
        max_bytes: int = MAX_MODEL_BYTES,
    ) -> Path:
        """Unpack a version's files into `dest`, a new or empty folder.

        The zip is checked before anything is written (no absolute names, `..`, symlinks or
        zip bombs), unpacked beside `dest` and renamed into place, so `dest` is either
        complete or absent.
        """
        from computeswarm.jobs.upload import unpack_working_dir

        dest = Path(dest)
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise UserError(f"{dest} exists and is not an empty folder; pick a new one")
        response = self._send("GET", f"/v1/models/{name}/versions/{version}/download")
        _raise_for(response)
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.parent / f".{dest.name}.partial-{secrets.token_hex(4)}"
        try:
            unpack_working_dir(response.content, partial, max_bytes=max_bytes)
            if dest.exists():
                dest.rmdir()
            partial.rename(dest)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return dest

    # -- datasets -----------------------------------------------------------------------

    def datasets(self) -> list[dict]:
        """Yours and those shared with you, each at its newest version."""
        return self._call("GET", "/v1/datasets")

    def dataset(self, name: str, owner: str | None = None) -> dict:
        return self._call("GET", f"/v1/datasets/{name}", params=_owner(owner))

    def dataset_version(self, name: str, version: int | str, owner: str | None = None) -> dict:
        return self._call("GET", f"/v1/datasets/{name}/versions/{version}", params=_owner(owner))

    def dataset_manifest(self, name: str, version: int | str, owner: str | None = None) -> dict:
        path = f"/v1/datasets/{name}/versions/{version}/manifest"
        return self._call("GET", path, params=_owner(owner))

    def missing_chunks(self, name: str, chunks: list[tuple[str, int]]) -> list[str]:
        body = {"chunks": [{"sha256": sha, "size": size} for sha, size in chunks]}
        return self._retrying("POST", f"/v1/datasets/{name}/chunks/missing", json=body)["missing"]

    def put_chunk(self, name: str, sha256: str, data: bytes) -> bool:
        path = f"/v1/datasets/{name}/chunks/{sha256}"
        headers = {"Content-Type": "application/octet-stream"}
        return self._retrying("PUT", path, content=data, headers=headers)["stored"]

    def chunk(self, name: str, sha256: str, owner: str | None = None) -> bytes:
        path = f"/v1/datasets/{name}/chunks/{sha256}"
        return self._retrying("GET", path, params=_owner(owner), raw=True)

    def commit_dataset(self, name: str, manifest: dict) -> dict:
        return self._call("POST", f"/v1/datasets/{name}/versions", json={"manifest": manifest})

    def share_dataset(self, name: str, account: str, revoke: bool = False) -> dict:
        body = {"account": account, "revoke": revoke}
        return self._call("POST", f"/v1/datasets/{name}/shares", json=body)

    def lease_datasets(self, lease_id: str) -> list[dict]:
        """A seller's agent: the dataset versions a lease it serves reads."""
        return self._call("GET", f"/v1/leases/{lease_id}/datasets")

    def lease_chunk(self, lease_id: str, sha256: str) -> bytes:
        return self._retrying("GET", f"/v1/leases/{lease_id}/chunks/{sha256}", raw=True)

    # -- volumes ------------------------------------------------------------------------

    def create_volume(self, name: str, size_bytes: int | None = None) -> dict:
        return self._call("POST", "/v1/volumes", json={"name": name, "size_bytes": size_bytes})

    def volumes(self) -> list[dict]:
        return self._call("GET", "/v1/volumes")

    def volume(self, name: str) -> dict:
        return self._call("GET", f"/v1/volumes/{name}")

    def volume_files(self, name: str, path: str = "") -> list[dict]:
        return self._call("GET", f"/v1/volumes/{name}/files", params={"path": path})

    def volume_manifest(self, name: str) -> dict:
        return self._call("GET", f"/v1/volumes/{name}/manifest")

    def volume_chunk(self, name: str, sha256: str) -> bytes:
        return self._retrying("GET", f"/v1/volumes/{name}/chunks/{sha256}", raw=True)

    def volume_missing(self, name: str, chunks: list[tuple[str, int]]) -> list[str]:
        body = {"chunks": [{"sha256": sha, "size": size} for sha, size in chunks]}
        return self._retrying("POST", f"/v1/volumes/{name}/chunks/missing", json=body)["missing"]

    def volume_put_chunk(self, name: str, sha256: str, data: bytes) -> bool:
        headers = {"Content-Type": "application/octet-stream"}
        path = f"/v1/volumes/{name}/chunks/{sha256}"
        return self._retrying("PUT", path, content=data, headers=headers)["stored"]

    def commit_volume(self, name: str, base: str | None, manifest: dict) -> dict:
        body = {"base": base, "manifest": manifest}
        return self._call("POST", f"/v1/volumes/{name}/commits", json=body)

    def remove_volume(self, name: str) -> dict:
        return self._call("DELETE", f"/v1/volumes/{name}")

    def lease_volumes(self, lease_id: str) -> list[dict]:
        """A seller's agent: the volumes a lease it serves mounts, each's newest commit."""
        return self._call("GET", f"/v1/leases/{lease_id}/volumes")

    def lease_volume_chunk(self, lease_id: str, name: str, sha256: str) -> bytes:
        path = f"/v1/leases/{lease_id}/volumes/{name}/chunks/{sha256}"
        return self._retrying("GET", path, raw=True)

    def lease_volume_missing(self, lease_id: str, name: str, chunks: list[tuple[str, int]]):
        body = {"chunks": [{"sha256": sha, "size": size} for sha, size in chunks]}
        path = f"/v1/leases/{lease_id}/volumes/{name}/chunks/missing"
        return self._retrying("POST", path, json=body)["missing"]

    def lease_volume_put_chunk(self, lease_id: str, name: str, sha256: str, data: bytes) -> bool:
        path = f"/v1/leases/{lease_id}/volumes/{name}/chunks/{sha256}"
        headers = {"Content-Type": "application/octet-stream"}
        return self._retrying("PUT", path, content=data, headers=headers)["stored"]

    def lease_volume_commit(self, lease_id: str, name: str, base: str | None, manifest: dict):
        body = {"base": base, "manifest": manifest}
        return self._call("POST", f"/v1/leases/{lease_id}/volumes/{name}/commits", json=body)

    # -- measurements -------------------------------------------------------------------

    def rtt_ms(self, samples: int = 3) -> float:
        """Median time of a trivial request: the application-level round trip."""
        times = []
        for _ in range(samples):
            start = time.perf_counter()
            self._call("GET", "/healthz")
            times.append((time.perf_counter() - start) * 1000)
        return sorted(times)[len(times) // 2]

    def bandwidth_mbps(self, size: int = 1024 * 1024) -> float:
        start = time.perf_counter()
        response = self._send("GET", "/v1/probe/bytes", params={"size": size})
        _raise_for(response)
        elapsed = time.perf_counter() - start
        return len(response.content) * 8 / elapsed / 1e6

    # -- plumbing -----------------------------------------------------------------------

    def _call(self, method: str, path: str, **kwargs) -> dict | list:
        response = self._send(method, path, **kwargs)
        _raise_for(response)
        return response.json()

    def _retrying(self, method: str, path: str, *, raw: bool = False, attempts: int = 8, **kwargs):
        """For bulk transfer: waits out rate limits and a busy store, then gives up."""
        for attempt in range(attempts):
            try:
                response = self._send(method, path, **kwargs)
                _raise_for(response)
                return response.content if raw else response.json()
            except errors.RateLimited as e:
                if attempt == attempts - 1:
                    raise
                time.sleep(min(e.retry_after_s, 5.0))
            except errors.ApiError as e:
                if getattr(e, "status", 0) != 503 or attempt == attempts - 1:
                    raise
                time.sleep(min(0.25 * 2**attempt, 5.0))
        raise AssertionError("unreachable")

    def _send(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            return self.http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise errors.CoordinatorUnreachable(
                f"cannot reach the coordinator at {self.url}: {type(e).__name__}: {e}"
            ) from None


def _owner(owner: str | None) -> dict:
    return {"owner": owner} if owner else {}


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        body = response.json()
        code, detail = body.get("error", ""), body.get("detail", response.text)
    except ValueError:
        code, detail = "", response.text or response.reason_phrase
    if response.status_code == 429:
        raise errors.RateLimited(float(response.headers.get("retry-after", "1")))
    if code == "invalid_invite":
        raise errors.InvalidInvite(detail)
    error = _BY_STATUS.get(response.status_code, errors.ApiError)(detail)
    error.status = response.status_code
    raise error
