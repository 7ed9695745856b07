# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The backups on disk: artifacts, the manifest that commits them, verification and retention.

Private to this collection: not a public API, it may change in any release.

Layout: ``<dest>/<component>/<backup id>/`` holds the artifacts and ``manifest.json`` (sha256 and size of every
artifact). A run writes into ``<backup id>.partial/`` and commits by renaming it to ``<backup id>/`` once every
artifact and the manifest are written and read back: a ``.partial`` directory (or one without a manifest) is not
a backup, and the next run or prune of the job removes it (``leftovers``). Retention deletes only the files a
manifest lists and never the last good backup (the newest that verifies and did not shrink, docs/backup-states.md).
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import datetime
import json
import os
import time
import typing as t
from dataclasses import asdict, dataclass, field

from ansible_collections.opsbook.stack.plugins.module_utils import _files
from ansible_collections.opsbook.stack.plugins.module_utils._backup.errors import EXIT_VERIFY, BackupError, disk_full

MANIFEST = "manifest.json"
PRUNING = "manifest.pruning.json"
PARTIAL = ".partial"
SCHEMA = 1


def utc_id(ts: float | None = None) -> str:
    """A backup id: the UTC time, to the second (ids sort by time)."""
    return datetime.datetime.fromtimestamp(time.time() if ts is None else ts, datetime.UTC).strftime("%Y%m%dT%H%M%SZ")


def write_atomic(path: str, data: bytes, mode: int = 0o640) -> None:
    """_files.write_atomic, with a full disk worded as the backup's disk-full failure (exit code 8)."""
    try:
        _files.write_atomic(path, data, mode)
    except OSError as exc:
        if exc.errno in _files.DISK_FULL_ERRNOS:
            raise disk_full(path, 0, exc, len(data)) from exc
        raise


def write_json_atomic(path: str, data: t.Any) -> None:
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))


@dataclass
class Artifact:
    name: str
    kind: str  # sql | mysql_accounts | pg_custom | pg_globals | rdb | tar
    bytes: int = 0
    sha256: str = ""
    raw_bytes: int = 0
    database: str = ""
    info: dict[str, t.Any] = field(default_factory=dict)
    encrypted: bool = False  # zstd, then age to the recipients: restoring needs an identity (Settings.age_identity)


@dataclass
class Manifest:
    id: str
    component: str
    type: str
    created: float
    duration_s: float
    artifacts: list[Artifact]
    facts: dict[str, t.Any] = field(default_factory=dict)
    schema: int = SCHEMA

    @property
    def size(self) -> int:
        return sum(a.bytes for a in self.artifacts)

    def to_dict(self) -> dict[str, t.Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, t.Any]) -> Manifest:
        return cls(
            id=data["id"],
            component=data["component"],
            type=data["type"],
            created=float(data["created"]),
            duration_s=float(data.get("duration_s", 0)),
            artifacts=[Artifact(**a) for a in data.get("artifacts", [])],
            facts=data.get("facts") or {},
            schema=int(data.get("schema", SCHEMA)),
        )


class Store:
    """The backups of one component under <dest>/<component>/."""

    def __init__(self, dest: str, component: str):
        self.root = os.path.join(dest, component)

    def path(self, backup_id: str) -> str:
        return os.path.join(self.root, backup_id)

    def partial_path(self, backup_id: str) -> str:
        """Where a run writes backup_id until it commits it."""
        return os.path.join(self.root, backup_id + PARTIAL)

    def commit(self, backup_id: str) -> str:
        """Rename <id>.partial/ to <id>/ (the commit) and make the rename durable; returns the final path."""
        final = self.path(backup_id)
        os.rename(self.partial_path(backup_id), final)
        _files.fsync_dir(self.root)
        return final

    def leftovers(self) -> list[tuple[str, int]]:
        """Directories of runs that never committed, with the bytes they hold: every <id>.partial/, and (from
        earlier releases) a backup directory with neither manifest. Only a run holding the job's lock may remove
        them: then the run that wrote them is dead."""
        found: list[tuple[str, int]] = []
        if not os.path.isdir(self.root):
            return found
        for entry in sorted(os.listdir(self.root)):
            directory = os.path.join(self.root, entry)
            if not os.path.isdir(directory) or entry.startswith("."):
                continue
            committed = any(os.path.exists(os.path.join(directory, n)) for n in (MANIFEST, PRUNING))
            if entry.endswith(PARTIAL) or not committed:
                found.append((directory, _tree_bytes(directory)))
        return found

    def remove_leftovers(self) -> list[tuple[str, int]]:
        """Remove every leftover directory (see leftovers); returns what was removed."""
        removed = self.leftovers()
        for directory, _size in removed:
            _remove_flat(directory)
        return removed

    def manifests(self) -> list[Manifest]:
        """Committed backups, oldest first."""
        found: list[Manifest] = []
        if not os.path.isdir(self.root):
            return found
        for entry in sorted(os.listdir(self.root)):
            mpath = os.path.join(self.root, entry, MANIFEST)
            if not entry.endswith(PARTIAL) and os.path.isfile(mpath):
                try:
                    with open(mpath, encoding="utf-8") as handle:
                        found.append(Manifest.from_dict(json.load(handle)))
                except (ValueError, KeyError, TypeError, OSError):
                    continue  # an unreadable manifest commits nothing; retention leaves it alone
        return sorted(found, key=lambda m: (m.created, m.id))

    def get(self, backup_id: str | None = None) -> Manifest:
        manifests = self.manifests()
        if not manifests:
            raise BackupError(EXIT_VERIFY, "no committed backup (no %s) under %s" % (MANIFEST, self.root))
        if not backup_id or backup_id == "latest":
            return manifests[-1]
        for m in manifests:
            if m.id == backup_id:
                return m
        raise BackupError(
            EXIT_VERIFY,
            "backup %s not found under %s (have: %s)" % (backup_id, self.root, ", ".join(m.id for m in manifests[-5:])),
        )

    def verify(self, manifest: Manifest, directory: str = "") -> list[str]:
        """Problems of a backup (empty when every artifact has its size and sha256); directory: where it is when
        not yet committed."""
        problems = []
        directory = directory or self.path(manifest.id)
        for art in manifest.artifacts:
            path = os.path.join(directory, art.name)
            try:
                size = os.path.getsize(path)
                if size != art.bytes:
                    problems.append("%s: size %d, manifest says %d" % (path, size, art.bytes))
                    continue
                digest = _files.sha256_file(path)
            except OSError as exc:
                problems.append("%s: %s" % (path, exc.strerror))
                continue
            if digest != art.sha256:
                problems.append("%s: sha256 %s, manifest says %s" % (path, digest, art.sha256))
        return problems

    def require_verified(self, manifest: Manifest) -> None:
        problems = self.verify(manifest)
        if problems:
            raise BackupError(
                EXIT_VERIFY,
                "backup %s of %s fails verification, refusing to restore it: %s"
                % (manifest.id, manifest.component, "; ".join(problems)),
                {"problems": problems},
            )

    def newest_verified(self, good_only: bool = False) -> Manifest | None:
        """The newest backup that verifies; good_only: also not flagged suspect (a sharp shrink)."""
        for m in reversed(self.manifests()):
            if good_only and m.facts.get("suspect"):
                continue
            if not self.verify(m):
                return m
        return None


def newest_verified(store: Store) -> Manifest | None:
    return store.newest_verified()


def raw_size(manifest: Manifest) -> int:
    return sum(a.raw_bytes for a in manifest.artifacts)


def row_total(manifest: Manifest) -> int:
    return sum(int(n) for tables in (manifest.facts.get("tables") or {}).values() for n in tables.values())


def shrink_reason(new: Manifest, good: Manifest | None, ratio: float) -> str:
    """Why new looks emptied next to the last good backup ("" when it does not): its uncompressed size, or the
    total of its row counts (where the engine records them), below ratio times the good one's."""
    if good is None or ratio <= 0:
        return ""
    before, after = raw_size(good), raw_size(new)
    if before > 0 and after < before * ratio:
        return "the dump is %d bytes, the last good backup %s was %d (below %g of it)" % (after, good.id, before, ratio)
    rows_before, rows_after = row_total(good), row_total(new)
    if rows_before >= 10 and rows_after < rows_before * ratio:
        return "the tables hold %d rows, in the last good backup %s they held %d (below %g of it)" % (
            rows_after,
            good.id,
            rows_before,
            ratio,
        )
    return ""


def select_keep(
    manifests: t.Sequence[t.Any],
    keep_last: int,
    keep_daily: int,
    keep_weekly: int,
    newest_verified: str | None,
    keep_monthly: int = 0,
    also_keep: t.Iterable[str] = (),
) -> set[str]:
    """Ids to keep: the newest keep_last, the newest of each of the last keep_daily days, keep_weekly ISO weeks
    and keep_monthly months that have backups, always the newest verified backup, and also_keep (backups whose
    off-host copy is still pending). manifests: anything with ``id`` and ``created`` (local manifests, or the
    archives of an off-host repository)."""
    newest_first = sorted(manifests, key=lambda m: (m.created, m.id), reverse=True)
    keep = {m.id for m in newest_first[:keep_last]}
    keep.update(set(also_keep) & {m.id for m in manifests})
    for count, key in ((keep_daily, "%Y-%m-%d"), (keep_weekly, "%G-W%V"), (keep_monthly, "%Y-%m")):
        seen: set[str] = set()
        for m in newest_first:
            bucket = datetime.datetime.fromtimestamp(m.created, datetime.UTC).strftime(key)
            if bucket not in seen and len(seen) < count:
                seen.add(bucket)
                keep.add(m.id)
    if newest_verified:
        keep.add(newest_verified)
    return keep


def prune(store: Store, spec: t.Any, newest_verified: str | None, also_keep: t.Iterable[str] = ()) -> list[str]:
    """Delete the backups retention does not keep (spec: keep_last, keep_daily, keep_weekly): only files their
    manifest lists, then the empty directory; and the leftover directories of runs that never committed
    (``<id>.partial``, listed in the result by that name). newest_verified: the id always kept (the last good one);
    also_keep: ids kept as well (backups whose off-host copy is pending: retention never drops a queued copy).

    The manifest is renamed to manifest.pruning.json first (uncommitted but still listing its files), so an
    interrupted prune is finished by the next one instead of leaving a backup that fails verification.
    """
    removed = [os.path.basename(d) for d, _size in store.remove_leftovers()]
    if os.path.isdir(store.root):
        for entry in sorted(os.listdir(store.root)):
            if os.path.isfile(os.path.join(store.root, entry, PRUNING)):
                _delete_listed(store.path(entry), PRUNING)
    manifests = store.manifests()
    keep = select_keep(
        manifests, spec.keep_last, spec.keep_daily, spec.keep_weekly, newest_verified, also_keep=also_keep
    )
    for m in manifests:
        if m.id in keep:
            continue
        directory = store.path(m.id)
        os.rename(os.path.join(directory, MANIFEST), os.path.join(directory, PRUNING))
        _files.fsync_dir(directory)
        _delete_listed(directory, PRUNING)
        removed.append(m.id)
    return removed


def _tree_bytes(directory: str) -> int:
    total = 0
    for base, _dirs, files in os.walk(directory):
        for name in files:
            try:
                total += os.lstat(os.path.join(base, name)).st_size
            except OSError:
                pass
    return total


def _remove_flat(directory: str) -> None:
    """Remove a run's directory: the files in it, then the directory. A run writes no subdirectory, so one found
    there is left alone (and so is the directory holding it)."""
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if os.path.isfile(path) or os.path.islink(path):
            _files.unlink_quiet(path)
    try:
        os.rmdir(directory)
    except OSError:
        pass


def _delete_listed(directory: str, manifest_name: str) -> None:
    mpath = os.path.join(directory, manifest_name)
    with open(mpath, encoding="utf-8") as handle:
        data = json.load(handle)
    for art in data.get("artifacts", []):
        name = os.path.basename(art["name"])  # never follow a path out of the directory
        _files.unlink_quiet(os.path.join(directory, name))
    os.unlink(mpath)
    try:
        os.rmdir(directory)  # only when nothing else is in it
    except OSError:
        pass
