"""The volumes a lease's job mounts, on this seller: fetched before its node starts (the
newest commit, as chunks through the coordinator over the overlay) into a fresh folder
of the lease's own, bound at the mount path in the sandbox; committed back while the job
runs (every COMMIT_EVERY_S, and when the job asks), and once more after its node stopped.

A commit sends only the chunks the volume lacks and names the commit the folder started
from, so the coordinator merges it per file onto what others committed meanwhile. The
folder is the job's to write: it is read as an untrusted tree (`data/untrusted.py`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from computeswarm.cluster.client import CoordinatorClient
from computeswarm.cluster.errors import NotFound
from computeswarm.data.assemble import materialize
from computeswarm.data.chunking import Piece
from computeswarm.data.manifest import Manifest
from computeswarm.data.transfer import send_missing
from computeswarm.data.untrusted import scan_and_send
from computeswarm.jobs import contract

log = logging.getLogger("computeswarm.agent")
COMMIT_EVERY_S = 60.0
MOUNTS_FILE = "mounts.json"  # per lease folder: its volumes, for a restarted agent
STREAMS = 4


@dataclass
class Mounted:
    mount: str  # where the job sees it
    name: str
    folder: Path  # where it is on this seller
    readonly: bool
    base: str | None  # the commit the folder holds (what the next commit started from)


class LeaseVolumes:
    def __init__(self, client: CoordinatorClient, root: Path, every_s: float = COMMIT_EVERY_S):
        self.client, self.root, self.every_s = client, root, every_s
        self.mounted: dict[str, list[Mounted]] = {}
        self._watchers: dict[str, tuple[threading.Event, threading.Thread]] = {}
        self._locks: dict[str, threading.Lock] = {}

    def fetch(self, lease_id: str, uid: int | None) -> list[Mounted]:
        """Each mounted volume's newest commit in a folder of its own, owned by the
        lease's uid (when sandboxed) so the job can write it."""
        shutil.rmtree(self.root / lease_id, ignore_errors=True)  # a previous agent's
        mounts = []
        for i, item in enumerate(self.client.lease_volumes(lease_id)):
            manifest = Manifest.model_validate(item["manifest"])
            if (item["head"] or Manifest(files=()).id) != manifest.id:
                raise ValueError(f"volume {item['name']}: the manifest is not its commit's")
            folder = self.root / lease_id / str(i)
            name = item["name"]
            materialize(
                manifest,
                folder,
                lambda sha, n=name: self.client.lease_volume_chunk(lease_id, n, sha),
            )
            if uid is not None and not item["readonly"]:
                _chown_tree(folder, uid)
            mounts.append(Mounted(item["mount"], name, folder, item["readonly"], item["head"]))
            log.info(
                "lease %s: volume %s at %s (%d files)",
                lease_id,
                name,
                item["mount"],
                len(manifest.files),
            )
        self.mounted[lease_id] = mounts
        self._locks[lease_id] = threading.Lock()
        self._record(lease_id)
        return mounts

    def recover(self) -> None:
        """After this agent was killed: commit what the folders its predecessor left hold
        (their nodes are stopped by now), then remove them. A lease that ended over
        COMMIT_GRACE_S ago is refused by the coordinator: its writes are lost."""
        for record in sorted(self.root.glob(f"*/{MOUNTS_FILE}")):
            lease_id = record.parent.name
            try:
                saved = json.loads(record.read_text())
                self.mounted[lease_id] = [
                    Mounted(m["mount"], m["name"], Path(m["folder"]), m["readonly"], m["base"])
                    for m in saved
                ]
                self._locks[lease_id] = threading.Lock()
                self.commit(lease_id)
                log.warning("lease %s: committed the volumes a previous agent left", lease_id)
            except NotFound as e:  # the lease ended too long ago, or the volume is gone
                log.error("lease %s: the volumes left behind are lost: %s", lease_id, e)
            except Exception as e:  # kept for the next start
                log.error("lease %s: cannot commit the volumes left behind: %s", lease_id, e)
                self.mounted.pop(lease_id, None)
                continue
            self.discard(lease_id)

    def watch(self, lease_id: str, control_dir: Path) -> None:
        """Commit every `every_s`, and whenever the job asks (`contract.commit_volumes`)."""
        if not any(not m.readonly for m in self.mounted.get(lease_id, ())):
            return
        stop = threading.Event()
        thread = threading.Thread(
            target=self._watch, args=(lease_id, control_dir, stop), daemon=True
        )
        self._watchers[lease_id] = (stop, thread)
        thread.start()

    def finish(self, lease_id: str) -> None:
        """After the node stopped: the last commit, then the folders go."""
        stop, thread = self._watchers.pop(lease_id, (None, None))
        if stop is not None:
            stop.set()
            thread.join(60)
        try:
            self.commit(lease_id)
        except Exception as e:  # logged, and shown on the volume by the coordinator
            log.error("lease %s: the last commit of its volumes failed: %s", lease_id, e)
        self.discard(lease_id)

    def discard(self, lease_id: str) -> None:
        """A lease withdrawn before its node started: nothing ran, nothing to commit."""
        self.mounted.pop(lease_id, None)
        self._locks.pop(lease_id, None)
        shutil.rmtree(self.root / lease_id, ignore_errors=True)

    def commit(self, lease_id: str) -> list[dict]:
        """What each read-write volume's folder holds now, sent and committed."""
        lock = self._locks.get(lease_id)
        if lock is None:
            return []
        out = []
        with lock:
            for m in self.mounted.get(lease_id, ()):
                if not m.readonly and m.folder.is_dir():
                    out.append(self._commit_one(lease_id, m))
        return out

    def _commit_one(self, lease_id: str, m: Mounted) -> dict:
        def send(pieces: dict[str, Piece]) -> None:
            send_missing(
                {sha: piece.size for sha, piece in pieces.items()},
                functools.partial(self.client.lease_volume_missing, lease_id, m.name),
                lambda sha: self.client.lease_volume_put_chunk(
                    lease_id, m.name, sha, pieces[sha].read()
                ),
            )

        walked = scan_and_send(m.folder, send)
        if walked.skipped:
            log.warning(
                "lease %s: volume %s: not committed (not plain files): %s",
                lease_id,
                m.name,
                ", ".join(walked.skipped[:10]),
            )
        if walked.manifest.id == (m.base or Manifest(files=()).id):
            return {"name": m.name, "unchanged": True}
        view = self.client.lease_volume_commit(
            lease_id, m.name, m.base, walked.manifest.model_dump(mode="json")
        )
        m.base = walked.manifest.id
        self._record(lease_id)
        log.info("lease %s: volume %s committed (%d files)", lease_id, m.name, view["files"])
        return view

    def _record(self, lease_id: str) -> None:
        """What a restarted agent needs to commit these folders (`recover`)."""
        mounts = [{**m.__dict__, "folder": str(m.folder)} for m in self.mounted.get(lease_id, ())]
        path = self.root / lease_id / MOUNTS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(mounts))
        partial.replace(path)

    def _watch(self, lease_id: str, control_dir: Path, stop: threading.Event) -> None:
        asked = control_dir / contract.COMMIT_REQUEST
        done = control_dir / contract.COMMIT_DONE
        waited = 0.0
        while not stop.wait(1.0):
            waited += 1.0
            requested = _take(asked)
            if not requested and waited < self.every_s:
                continue
            waited, error = 0.0, ""
            try:
                self.commit(lease_id)
            except Exception as e:
                error = str(e)[:500]
                log.error("lease %s: committing its volumes failed: %s", lease_id, e)
            if requested:
                _answer(done, error)


def _take(path: Path) -> bool:
    """The job's request (any kind of file of that name), taken away."""
    try:
        os.unlink(path)
        return True
    except OSError:
        return False


def _answer(path: Path, error: str) -> None:
    """The answer, written where the job can read it: never through a link it planted
    (O_EXCL|O_NOFOLLOW in a folder only it and we write)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        log.warning("cannot answer a commit request at %s: %s", path, e)
        return
    with os.fdopen(fd, "w") as f:
        f.write(error or "ok")


def _chown_tree(folder: Path, uid: int) -> None:
    """Our own fresh tree (no link in it): the lease's uid owns it."""
    for root, dirs, files in os.walk(folder):
        for name in (*dirs, *files):
            os.lchown(os.path.join(root, name), uid, uid)
    os.lchown(folder, uid, uid)
