"""Two writers on one volume: what a commit changed since the version it started from is
applied to the newest version, file by file. Per file, the last commit wins; files it did
not touch keep what others committed meanwhile; a file it deleted is deleted. Pure."""

from __future__ import annotations

from computeswarm.data.manifest import FileEntry, Manifest


def merge(head: Manifest, base: Manifest, theirs: Manifest) -> Manifest:
    """`head` with the changes from `base` to `theirs` applied."""
    before = {f.path: f for f in base.files}
    after = {f.path: f for f in theirs.files}
    changed = {p: e for p, e in after.items() if before.get(p) != e}
    deleted = before.keys() - after.keys()
    files: dict[str, FileEntry] = {
        f.path: f for f in head.files if f.path not in deleted and f.path not in changed
    }
    # A path this commit wrote wins over a file or folder of the same name others wrote.
    for path in changed:
        folders = {path.rsplit("/", i)[0] for i in range(1, path.count("/") + 1)}
        for other in list(files):
            if other in folders or other.startswith(path + "/"):
                del files[other]
    files |= changed
    return Manifest(files=tuple(files[p] for p in sorted(files)))
