"""A run folder as a driver and its workers see it: a prefix in the object store (the
lease's own key, from the environment the coordinator gives every lease) or, for a driver
run by hand and in unit tests, a local folder. One pyarrow file system for both, the one
Ray Train and Tune write checkpoints through.

Sellers are separate machines: nothing a run must keep (checkpoints, progress, results)
is written to a seller's disk or read from the coordinator's. Every write is one whole
object (an S3 PUT is whole or absent; locally a rename), so a reader never sees half a
file, and appending is read-modify-write by the run's one writer of that file (rank 0).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from computeswarm.jobs import contract

REGION_DEFAULT = "us-east-1"
# A lease outlives its coordinator's crash, the embedded store does not (it restarts with
# the coordinator): 12 attempts back off for about 2 minutes (measured: 3, pyarrow's
# default, give up after ~1 s of "connection refused"; 8 after ~60 s), long enough for a
# restart, so a checkpoint written meanwhile waits instead of failing the run.
STORE_ATTEMPTS = 12


@dataclass(frozen=True)
class RunStore:
    """`root`: the run folder, `bucket/prefix/run` in the store or an absolute path."""

    root: str
    in_store: bool

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> RunStore:
        """The run the coordinator chose: its prefix in the store (`COMPUTESWARM_RUN_PREFIX`
        with the lease's key), or its folder (`COMPUTESWARM_RUN_DIR`)."""
        prefix = env.get(contract.RUN_PREFIX)
        if prefix:
            bucket = env.get(contract.S3_BUCKET)
            if not bucket or not env.get(contract.S3_ENDPOINT):
                raise KeyError(f"{contract.RUN_PREFIX} is set without the store's endpoint")
            return cls(f"{bucket}/{prefix.strip('/')}", True)
        return cls(str(contract.run_dir(env).resolve()), False)

    @classmethod
    def of(cls, described: Mapping) -> RunStore:
        """Rebuilt on a worker from `describe()` (the lease's key is in its environment)."""
        return cls(str(described["root"]), bool(described["in_store"]))

    def describe(self) -> dict:
        return {"root": self.root, "in_store": self.in_store}

    @property
    def name(self) -> str:
        return posixpath.basename(self.root.rstrip("/"))

    @property
    def parent(self) -> str:
        """Ray Train's `storage_path`; the run is `name` below it."""
        return posixpath.dirname(self.root.rstrip("/"))

    @cached_property
    def fs(self):
        """The pyarrow file system Ray Train is given (`storage_filesystem`)."""
        import pyarrow.fs

        if not self.in_store:
            return pyarrow.fs.LocalFileSystem()
        return pyarrow.fs.PyFileSystem(_Keys.from_env())

    def path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}" if name else self.root

    def write_text(self, name: str, text: str) -> None:
        fs, path = self.fs, self.path(name)
        if not self.in_store:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            partial = f"{path}.partial"
            Path(partial).write_text(text)
            os.replace(partial, path)  # whole or absent, as a PUT is
            return
        with fs.open_output_stream(path) as out:
            out.write(text.encode())

    def read_text(self, name: str) -> str | None:
        """The file's text, or None if the run has none (yet)."""
        import pyarrow.fs

        fs, path = self.fs, self.path(name)
        if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
            return None
        with fs.open_input_stream(path) as f:
            return f.read().decode()

    def append_text(self, name: str, text: str) -> None:
        """For the file's one writer: what was there, plus `text`."""
        self.write_text(name, (self.read_text(name) or "") + text)

    def listdir(self, name: str = "") -> list[str]:
        """Names directly below `name` (files and folders), sorted; [] if there is none."""
        import pyarrow.fs

        selector = pyarrow.fs.FileSelector(self.path(name), allow_not_found=True)
        return sorted(posixpath.basename(i.path) for i in self.fs.get_file_info(selector))

    def download(self, name: str, to: Path) -> Path:
        """The folder `name` of the run copied into the local folder `to`."""
        import pyarrow.fs

        # File by file from one listing: pyarrow's copy_files first asks for the folder
        # itself (a HEAD of the key without its '/'), which a key that may read only the
        # prefix is refused.
        to.mkdir(parents=True, exist_ok=True)
        base = self.path(name).rstrip("/")
        selector = pyarrow.fs.FileSelector(base, recursive=True)
        for info in self.fs.get_file_info(selector):
            if info.type != pyarrow.fs.FileType.File:
                continue
            relative = posixpath.relpath(info.path, base)
            if relative.startswith("..") or posixpath.isabs(relative):
                continue  # a key no folder below `to` can hold
            target = to / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with self.fs.open_input_stream(info.path) as src, open(target, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
        return to


def _keys_handler_base():
    import pyarrow.fs

    return pyarrow.fs.FileSystemHandler


class _Keys(_keys_handler_base()):
    """The store as a lease key may use it: S3 has no folders, so making one is a no-op.
    (pyarrow's own `create_dir` first asks whether the bucket exists, which needs
    ListBucket on the whole bucket: a key that may list only its own prefixes is refused,
    and Ray Train makes its run folder that way.) Everything else is pyarrow's."""

    def __init__(self, s3):
        self.s3 = s3

    @classmethod
    def from_env(cls) -> _Keys:
        """Through the key of the lease this process runs in."""
        import pyarrow.fs

        env = os.environ
        return cls(
            pyarrow.fs.S3FileSystem(
                access_key=env["AWS_ACCESS_KEY_ID"],
                secret_key=env["AWS_SECRET_ACCESS_KEY"],
                region=env.get("AWS_REGION") or REGION_DEFAULT,
                endpoint_override=env[contract.S3_ENDPOINT],  # with its scheme: pyarrow needs it
                allow_bucket_creation=False,
                retry_strategy=pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=STORE_ATTEMPTS),
            )
        )

    def __reduce__(self):
        # Ray ships the file system to every worker, and Tune pickles it into the
        # experiment state in the store: it travels without the key, and whoever unpickles
        # it uses the key of their own lease (a resumed sweep runs on a new lease, whose
        # key is not the revoked one of the lease that wrote the state).
        return (_Keys.from_env, ())

    def __eq__(self, other):
        return isinstance(other, _Keys) and self.s3.equals(other.s3)

    def get_type_name(self):
        return "computeswarm-s3"

    def normalize_path(self, path):
        return self.s3.normalize_path(path)

    def get_file_info(self, paths):
        return self.s3.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.s3.get_file_info(selector)

    def create_dir(self, path, recursive):
        pass

    def delete_dir(self, path):
        self.delete_dir_contents(path, missing_dir_ok=True)
        self._delete_marker(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        # Object by object: pyarrow deletes a folder with DeleteObjects, which MinIO-era
        # servers (JuiceFS's gateway) refuse without Content-MD5, which it does not send.
        # Ray Train deletes old checkpoints this way (`CheckpointConfig.num_to_keep`).
        import pyarrow.fs

        selector = pyarrow.fs.FileSelector(path, recursive=True, allow_not_found=missing_dir_ok)
        infos = self.s3.get_file_info(selector)
        for info in infos:
            if info.type == pyarrow.fs.FileType.File:
                self.s3.delete_file(info.path)
        for info in sorted(infos, key=lambda i: i.path, reverse=True):  # deepest first
            if info.type == pyarrow.fs.FileType.Directory:
                self._delete_marker(info.path)

    def _delete_marker(self, path):
        """The empty `folder/` object pyarrow leaves so that a folder outlives its files."""
        import pyarrow.fs

        if self.s3.get_file_info(path).type == pyarrow.fs.FileType.Directory:
            # Empty now: one DeleteObject of the marker (or none: only its keys implied it).
            with contextlib.suppress(OSError):
                self.s3.delete_dir(path)

    def delete_root_dir_contents(self):
        raise PermissionError("a lease never empties the bucket")

    def delete_file(self, path):
        self.s3.delete_file(path)

    def move(self, src, dest):
        self.s3.move(src, dest)

    def copy_file(self, src, dest):
        self.s3.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.s3.open_input_stream(path)

    def open_input_file(self, path):
        return self.s3.open_input_file(path)

    def open_output_stream(self, path, metadata):
        return self.s3.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        raise OSError("objects cannot be appended to; write the whole object")


class StepsLog:
    """`steps.log`, written by one rank: "<step> <loss> ..." per line. The whole file
    is one object, rewritten at most every `every_s` (and by `flush`): a run restarted
    on another seller reads what was there and goes on after it."""

    def __init__(self, run: RunStore, every_s: float | None = None):
        # A PUT per step would cost more than a tiny step; a local file is cheap to
        # rewrite, and the training benchmark times steps by it.
        self.run = run
        self.every_s = every_s if every_s is not None else (0.5 if run.in_store else 0.0)
        self.text = run.read_text(contract.STEPS_LOG) or ""
        self._written = time.monotonic()

    def add(self, line: str) -> None:
        self.text += f"{line}\n"
        if time.monotonic() - self._written >= self.every_s:
            self.flush()

    def flush(self) -> None:
        self.run.write_text(contract.STEPS_LOG, self.text)
        self._written = time.monotonic()
