# -*- coding: utf-8 -*-
# Copyright: opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The release journal: one atomic JSON record per release of a Compose project.

Private to this collection: not a public API, it may change in any release.

Layout: ``<root>/<project>/releases/<id>.json``. A record names every service's image by reference, digest and
image id, the hash of the rendered compose file, the outcome and timings. Records are written atomically
(module_utils/_files.py: a temporary file beside it, fsync, rename), so a reader sees a whole record or none.
Retention keeps the newest ``keep`` records (never fewer than MIN_KEEP); the images they name are what rollback
returns to. ``build_release`` is the one place a record is made, ``intact`` and ``runs_now`` the one answer to
"can we return to it" and "is it what runs", ``rollback_candidates`` the one answer to "where does a rollback go".

Every record carries a ``phase`` (docs/state-machine.md): ``planned``, ``starting``, ``gated``, ``switched``,
``baking``, ``draining`` while a run works, then ``done``, ``failed``, ``rolled_back`` or ``interrupted``. A record
whose phase is not one of those four is unsettled: a run was killed (or its undo failed) there, and the next run
puts the project in order from that phase. Records written before phases existed get theirs from their status.
A file that is valid JSON of the wrong shape is skipped by ``releases()`` with a warning (``skipped``), and
``get()`` names it as corrupt; release ids are checked before they become a path.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import json
import os
import re
import time
import typing as t
from dataclasses import asdict, dataclass, field

from ansible_collections.opsbook.stack.plugins.module_utils._compose import (
    LABEL_SERVICE,
    compose_files_hash,
    list_project_containers,
    project_compose_files,
)
from ansible_collections.opsbook.stack.plugins.module_utils._docker import DockerNotFound
from ansible_collections.opsbook.stack.plugins.module_utils._files import write_atomic

DEFAULT_ROOT = "/var/lib/opsbook"
MIN_KEEP = 5
STATUSES = ("succeeded", "failed", "rolled_back", "in_progress")
KINDS = ("deploy", "upgrade", "rollback")
SCHEMA = 1
# The phases of a run, in order, then the four a record ends in (docs/state-machine.md).
WORKING_PHASES = ("planned", "starting", "gated", "switched", "baking", "draining")
TERMINAL_PHASES = ("done", "failed", "rolled_back", "interrupted")
PHASES = WORKING_PHASES + TERMINAL_PHASES
# The phase of a record written before phases existed; an old `in_progress` record has none (unknown).
PHASE_OF_STATUS = {"succeeded": "done", "failed": "failed", "rolled_back": "rolled_back", "in_progress": ""}
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class JournalError(Exception):
    """The journal cannot be read or written; the message names the path."""


@dataclass
class ServiceImage:
    image: str
    image_id: str = ""
    digest: str = ""

    @classmethod
    def from_dict(cls, data: t.Any) -> ServiceImage:
        if not isinstance(data, dict):
            raise ValueError("a service entry is %s, not an object" % type(data).__name__)
        values = {key: data.get(key) or "" for key in ("image", "image_id", "digest")}
        for key, value in values.items():
            if not isinstance(value, str):
                raise ValueError("%s is %s, not a string" % (key, type(value).__name__))
        return cls(**values)


@dataclass
class Release:
    id: str
    project: str
    kind: str
    status: str
    created: str
    created_ts: float
    services: dict[str, ServiceImage]
    compose_hash: str = ""
    duration_s: float | None = None
    previous: str | None = None
    detail: str = ""
    schema: int = SCHEMA
    extra: dict[str, t.Any] = field(default_factory=dict)
    phase: str = ""

    def __post_init__(self) -> None:
        if not self.phase:
            self.phase = PHASE_OF_STATUS.get(self.status, "")

    @property
    def settled(self) -> bool:
        """The record ended (done, failed, rolled_back, interrupted); else a run stopped in its phase."""
        return self.status != "in_progress" and self.phase in TERMINAL_PHASES

    def to_dict(self) -> dict[str, t.Any]:
        data = asdict(self)
        data["services"] = {name: asdict(img) for name, img in sorted(self.services.items())}
        return data

    @classmethod
    def from_dict(cls, data: t.Any) -> Release:
        """A record from its JSON; ValueError (with the reason) when the JSON has another shape."""
        if not isinstance(data, dict):
            raise ValueError("the record is %s, not an object" % ("null" if data is None else type(data).__name__))
        for key in ("id", "project", "status"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise ValueError("%s is missing or not a string" % key)
        if not _ID_RE.match(data["id"]):
            raise ValueError("id %r is not a release id" % data["id"])
        if data["status"] not in STATUSES:
            raise ValueError("status %r is not one of %s" % (data["status"], ", ".join(STATUSES)))
        created_ts = data.get("created_ts", 0)
        if isinstance(created_ts, bool) or not isinstance(created_ts, (int, float)):
            raise ValueError("created_ts is %s, not a number" % ("null" if created_ts is None else repr(created_ts)))
        services = {} if data.get("services") is None else data["services"]
        extra = {} if data.get("extra") is None else data["extra"]
        if not isinstance(services, dict) or not isinstance(extra, dict):
            raise ValueError("services and extra must be objects")
        phase = data.get("phase") or ""
        if phase and phase not in PHASES:
            raise ValueError("phase %r is not one of %s" % (phase, ", ".join(PHASES)))
        duration = data.get("duration_s")
        return cls(
            id=data["id"],
            project=data["project"],
            kind=str(data.get("kind") or "deploy"),
            status=data["status"],
            created=str(data.get("created") or ""),
            created_ts=float(created_ts),
            services={str(n): ServiceImage.from_dict(s) for n, s in services.items()},
            compose_hash=str(data.get("compose_hash") or ""),
            duration_s=float(duration) if isinstance(duration, (int, float)) else None,
            previous=data.get("previous") if isinstance(data.get("previous"), str) else None,
            detail=str(data.get("detail") or ""),
            schema=data["schema"] if isinstance(data.get("schema"), int) else SCHEMA,
            extra=extra,
            phase=phase,
        )

    def same_content(self, other: Release) -> bool:
        """Same compose file and the same image for every service (digest when known, else image id)."""
        if self.compose_hash != other.compose_hash or set(self.services) != set(other.services):
            return False
        for name, img in self.services.items():
            theirs = other.services[name]
            mine_key = img.digest or img.image_id or img.image
            their_key = theirs.digest or theirs.image_id or theirs.image
            if mine_key != their_key:
                return False
        return True


def releases_dir(root: str, project: str) -> str:
    return os.path.join(root, project, "releases")


def check_release_id(release_id: str) -> str:
    """A release id that is safe as a file name (no path, no leading dot); JournalError otherwise."""
    if not isinstance(release_id, str) or not _ID_RE.match(release_id):
        raise JournalError(
            "%r is not a release id (letters, digits, '.', '_' and '-', as release_info lists them)" % (release_id,)
        )
    return release_id


def new_release_id(now: float, compose_hash: str, existing: t.Iterable[str] = ()) -> str:
    """Sortable and unique: UTC time to the second, then a short content hash, then a counter on collision."""
    base = "%s-%s" % (time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)), (compose_hash or "0" * 8)[:8])
    taken = set(existing)
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = "%s.%d" % (base, n)
    return candidate


class Journal:
    """The releases of one project on this host."""

    def __init__(self, root: str, project: str):
        self.root = root
        self.project = project
        self.path = releases_dir(root, project)
        # What the last releases() skipped: one sentence per file, for the modules' warnings.
        self.skipped: list[str] = []

    def ensure(self) -> None:
        try:
            os.makedirs(self.path, mode=0o750, exist_ok=True)
        except OSError as exc:
            raise JournalError("cannot create the release journal %s: %s" % (self.path, exc)) from exc

    def releases(self) -> list[Release]:
        """All readable records, oldest first. Unreadable files are skipped with a warning (see broken())."""
        out = []
        skipped = []
        for name in self._files():
            try:
                out.append(self._load(name))
            except _UNREADABLE as exc:
                skipped.append(
                    "skipped the release record %s: %s (move it aside; the other records are used)"
                    % (os.path.join(self.path, name), exc)
                )
        self.skipped = skipped
        return sorted(out, key=lambda r: (r.created_ts, r.id))

    def broken(self) -> list[str]:
        bad = []
        for name in self._files():
            try:
                self._load(name)
            except _UNREADABLE:
                bad.append(os.path.join(self.path, name))
        return bad

    def get(self, release_id: str) -> Release:
        check_release_id(release_id)
        path = os.path.join(self.path, release_id + ".json")
        if not os.path.isfile(path):
            known = ", ".join(r.id for r in self.releases()[-10:]) or "none"
            raise JournalError("release '%s' is not in %s (newest known: %s)" % (release_id, self.path, known))
        try:
            return self._load(release_id + ".json")
        except _UNREADABLE as exc:
            raise JournalError(
                "the release record %s is corrupt (%s): move it aside, or pick another release with release_info"
                % (path, exc)
            ) from exc

    def unsettled(self) -> list[Release]:
        """Records a run left in a working phase (killed, or its undo failed), oldest first."""
        return [r for r in self.releases() if not r.settled]

    def mark_rolled_back(self, releases: t.Iterable[Release], by: str) -> list[str]:
        """The releases a rollback returned from: status and phase `rolled_back`, never a rollback target again."""
        marked = []
        for release in releases:
            release.status = release.phase = "rolled_back"
            release.extra = {**release.extra, "rolled_back_by": by}
            self.record(release)
            marked.append(release.id)
        return marked

    def latest(self, status: str | None = "succeeded") -> Release | None:
        for release in reversed(self.releases()):
            if status is None or release.status == status:
                return release
        return None

    def record(self, release: Release) -> str:
        self.ensure()
        check_release_id(release.id)
        if release.status not in STATUSES:
            raise JournalError("status '%s' is not one of %s" % (release.status, ", ".join(STATUSES)))
        if release.phase not in PHASES:
            raise JournalError("phase '%s' is not one of %s" % (release.phase, ", ".join(PHASES)))
        path = os.path.join(self.path, release.id + ".json")
        payload = json.dumps(release.to_dict(), indent=2, sort_keys=True).encode() + b"\n"
        try:
            write_atomic(path, payload)
        except OSError as exc:
            raise JournalError("cannot write release record %s: %s" % (path, exc)) from exc
        return path

    def prune(self, keep: int) -> list[str]:
        """Drop the oldest records beyond `keep` (at least MIN_KEEP). The newest succeeded one always stays."""
        keep = max(int(keep), MIN_KEEP)
        releases = self.releases()
        newest_ok = self.latest("succeeded")
        removed = []
        for release in releases[:-keep] if len(releases) > keep else []:
            if newest_ok is not None and release.id == newest_ok.id:
                continue
            path = os.path.join(self.path, release.id + ".json")
            os.unlink(path)
            removed.append(release.id)
        return removed

    def _files(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.path) if n.endswith(".json") and not n.startswith("."))
        except FileNotFoundError:
            return []

    def _load(self, name: str) -> Release:
        with open(os.path.join(self.path, name), "rb") as fh:
            release = Release.from_dict(json.loads(fh.read()))
        if release.id + ".json" != name:
            raise ValueError("it holds the record of release %s" % release.id)
        return release


# What reading one record can raise: the file, its JSON, or its shape.
_UNREADABLE = (OSError, ValueError, KeyError, TypeError)


def iso_utc(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def project_images(client: t.Any, project: str) -> dict[str, ServiceImage]:
    """Every service of a running Compose project with the image its containers run, from Docker's state.

    Services whose replicas disagree (a rollout in progress) report the image of the newest container.
    """
    by_service: dict[str, tuple[int, ServiceImage]] = {}
    image_cache: dict[str, dict[str, t.Any]] = {}
    for summary in list_project_containers(client, project, all=False):
        service = (summary.get("Labels") or {}).get(LABEL_SERVICE)
        if not service:
            continue
        image_id = summary.get("ImageID", "")
        if image_id not in image_cache:
            image_cache[image_id] = client.inspect_image(image_id)
        info = image_cache[image_id]
        ref = summary.get("Image") or ""
        repo = ref.rsplit(":", 1)[0] if ":" in ref.rsplit("/", 1)[-1] else ref
        digest = ""
        for repo_digest in info.get("RepoDigests") or []:
            if repo_digest.split("@", 1)[0] == repo:
                digest = repo_digest
                break
        created = int(summary.get("Created", 0))
        current = by_service.get(service)
        if current is None or created > current[0]:
            by_service[service] = (created, ServiceImage(image=ref, image_id=image_id, digest=digest))
    return {name: entry[1] for name, entry in sorted(by_service.items())}


def build_release(
    journal: Journal,
    kind: str,
    status: str,
    compose_file: str,
    services: dict[str, ServiceImage],
    created_ts: float,
    previous: Release | None = None,
    detail: str = "",
    release_id: str | None = None,
    duration_s: float | None = None,
    extra: dict[str, t.Any] | None = None,
    phase: str = "",
) -> Release:
    """The one way a record is made (release_record and the upgrade modules): the compose file's hash now,
    a new sortable id unless the run already chose one, and the previous succeeded release it follows."""
    compose_hash = compose_files_hash(project_compose_files(os.path.dirname(compose_file), compose_file))
    if release_id is None:
        release_id = new_release_id(created_ts, compose_hash, (r.id for r in journal.releases()))
    return Release(
        id=release_id,
        project=journal.project,
        kind=kind,
        status=status,
        created=iso_utc(created_ts),
        created_ts=created_ts,
        services=services,
        compose_hash=compose_hash,
        duration_s=duration_s,
        previous=previous.id if previous else None,
        detail=detail,
        extra=extra or {},
        phase=phase,
    )


def image_present(client: t.Any) -> t.Callable[[str], bool]:
    """A check "does the engine still have this image id", asked once per id."""
    seen: dict[str, bool] = {}

    def present(image_id: str) -> bool:
        if image_id not in seen:
            try:
                client.inspect_image(image_id)
                seen[image_id] = True
            except DockerNotFound:
                seen[image_id] = False
        return seen[image_id]

    return present


def intact(release: Release, present: t.Callable[[str], bool]) -> bool:
    """Every image the release ran is still on this host (what a rollback to it needs)."""
    images = [img.image_id for img in release.services.values()]
    return bool(images) and all(image_id and present(image_id) for image_id in images)


def runs_now(release: Release, running: dict[str, ServiceImage]) -> bool:
    """The project's containers run exactly the images of the release (running: project_images())."""
    return all(running.get(n) and running[n].image_id == img.image_id for n, img in release.services.items())


def content_of(release: Release) -> str:
    """What a release runs, by image id: two records with the same content are the same release to return to."""
    return ",".join("%s=%s" % (n, img.image_id) for n, img in sorted(release.services.items()))


def current_release(releases: list[Release], running: dict[str, ServiceImage]) -> Release | None:
    """The newest succeeded record whose images run now."""
    for release in reversed(releases):
        if release.status == "succeeded" and release.services and runs_now(release, running):
            return release
    return None


def unfinished_rollback_target(releases: list[Release]) -> Release | None:
    """Where the newest record was going when it is a rollback that did not finish (in progress, or killed and
    put in order by a later run as `interrupted`), if that target still succeeded; else None."""
    newest = releases[-1] if releases else None
    if newest is None or newest.kind != "rollback":
        return None
    if not (newest.status == "in_progress" or newest.phase == "interrupted"):
        return None
    target = next((r for r in releases if r.id == str(newest.extra.get("rollback_of") or "")), None)
    return target if target is not None and target.status == "succeeded" and target.services else None


def rollback_candidates(
    releases: list[Release], running: dict[str, ServiceImage], present: t.Callable[[str], bool]
) -> list[Release]:
    """Where a rollback without a named release may go, best first (docs/state-machine.md, "Rollback target").

    A rerun after a rollback that did not finish goes where that one was going: its target first, whatever runs
    now (half of it may). Right after a rollback (what runs is the outcome of a succeeded rollback) the only
    candidate is what runs: a second rollback changes nothing. Otherwise: succeeded releases (a release rolled
    back from is `rolled_back`, never a candidate), not what runs now, intact on this host, newest first, one per
    content.
    """
    unfinished = unfinished_rollback_target(releases)
    if unfinished is not None and intact(unfinished, present):
        rest = _candidates(releases, running, present)
        return [unfinished] + [r for r in rest if content_of(r) != content_of(unfinished)]
    return _candidates(releases, running, present)


def _candidates(
    releases: list[Release], running: dict[str, ServiceImage], present: t.Callable[[str], bool]
) -> list[Release]:
    current = current_release(releases, running)
    if current is not None and current.kind == "rollback":
        by_id = {r.id: r for r in releases}
        target = by_id.get(str(current.extra.get("rollback_of") or ""))
        if target is not None and target.status == "succeeded" and content_of(target) == content_of(current):
            return [target]
        return [current]
    seen: set[str] = set()
    out = []
    for release in reversed(releases):
        key = content_of(release)
        if release.status != "succeeded" or not release.services or key in seen or runs_now(release, running):
            continue
        if intact(release, present):
            seen.add(key)
            out.append(release)
    return out


__all__ = [
    "DEFAULT_ROOT",
    "KINDS",
    "MIN_KEEP",
    "PHASES",
    "STATUSES",
    "TERMINAL_PHASES",
    "WORKING_PHASES",
    "Journal",
    "JournalError",
    "Release",
    "ServiceImage",
    "build_release",
    "check_release_id",
    "content_of",
    "current_release",
    "image_present",
    "intact",
    "iso_utc",
    "new_release_id",
    "project_images",
    "releases_dir",
    "rollback_candidates",
    "runs_now",
    "unfinished_rollback_target",
]
