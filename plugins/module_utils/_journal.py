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
"can we return to it" and "is it what runs".
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import json
import os
import time
import typing as t
from dataclasses import asdict, dataclass, field

from ansible_collections.opsbook.stack.plugins.module_utils._compose import LABEL_SERVICE, list_project_containers
from ansible_collections.opsbook.stack.plugins.module_utils._docker import DockerNotFound
from ansible_collections.opsbook.stack.plugins.module_utils._files import sha256_file, write_atomic

DEFAULT_ROOT = "/var/lib/opsbook"
MIN_KEEP = 5
STATUSES = ("succeeded", "failed", "rolled_back", "in_progress")
KINDS = ("deploy", "upgrade", "rollback")
SCHEMA = 1


class JournalError(Exception):
    """The journal cannot be read or written; the message names the path."""


@dataclass
class ServiceImage:
    image: str
    image_id: str = ""
    digest: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, t.Any]) -> ServiceImage:
        return cls(image=data.get("image", ""), image_id=data.get("image_id", ""), digest=data.get("digest", ""))


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

    def to_dict(self) -> dict[str, t.Any]:
        data = asdict(self)
        data["services"] = {name: asdict(img) for name, img in sorted(self.services.items())}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, t.Any]) -> Release:
        return cls(
            id=data["id"],
            project=data["project"],
            kind=data.get("kind", "deploy"),
            status=data["status"],
            created=data.get("created", ""),
            created_ts=float(data.get("created_ts", 0)),
            services={n: ServiceImage.from_dict(s) for n, s in (data.get("services") or {}).items()},
            compose_hash=data.get("compose_hash", ""),
            duration_s=data.get("duration_s"),
            previous=data.get("previous"),
            detail=data.get("detail", ""),
            schema=int(data.get("schema", SCHEMA)),
            extra=data.get("extra") or {},
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

    def ensure(self) -> None:
        try:
            os.makedirs(self.path, mode=0o750, exist_ok=True)
        except OSError as exc:
            raise JournalError("cannot create the release journal %s: %s" % (self.path, exc)) from exc

    def releases(self) -> list[Release]:
        """All readable records, oldest first. Unreadable files are skipped (see broken())."""
        out = []
        for name in self._files():
            try:
                out.append(self._load(name))
            except (OSError, ValueError, KeyError):
                continue
        return sorted(out, key=lambda r: (r.created_ts, r.id))

    def broken(self) -> list[str]:
        bad = []
        for name in self._files():
            try:
                self._load(name)
            except (OSError, ValueError, KeyError):
                bad.append(os.path.join(self.path, name))
        return bad

    def get(self, release_id: str) -> Release:
        path = os.path.join(self.path, release_id + ".json")
        if not os.path.isfile(path):
            known = ", ".join(r.id for r in self.releases()[-10:]) or "none"
            raise JournalError("release '%s' is not in %s (newest known: %s)" % (release_id, self.path, known))
        return self._load(release_id + ".json")

    def latest(self, status: str | None = "succeeded") -> Release | None:
        for release in reversed(self.releases()):
            if status is None or release.status == status:
                return release
        return None

    def record(self, release: Release) -> str:
        self.ensure()
        if release.status not in STATUSES:
            raise JournalError("status '%s' is not one of %s" % (release.status, ", ".join(STATUSES)))
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
            return Release.from_dict(json.loads(fh.read()))


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
) -> Release:
    """The one way a record is made (release_record and the upgrade modules): the compose file's hash now,
    a new sortable id unless the run already chose one, and the previous succeeded release it follows."""
    compose_hash = sha256_file(compose_file)
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


__all__ = [
    "DEFAULT_ROOT",
    "KINDS",
    "MIN_KEEP",
    "STATUSES",
    "Journal",
    "JournalError",
    "Release",
    "ServiceImage",
    "build_release",
    "image_present",
    "intact",
    "iso_utc",
    "new_release_id",
    "project_images",
    "releases_dir",
    "runs_now",
]
