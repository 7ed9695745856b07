# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Which release a rollback returns to, and by which image reference.

Private to this collection: not a public API, it may change in any release.

A release can be returned to when it succeeded and is intact on this host (module_utils/_journal.py: every
image it ran is still here). Without a named release, the first of ``_journal.rollback_candidates``: the newest
succeeded release that was never rolled back from and is not what runs now, or, right after a rollback, what
runs (a second rollback changes nothing; docs/state-machine.md, "Rollback target").
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

from ansible_collections.opsbook.stack.plugins.module_utils._journal import (
    Journal,
    JournalError,
    Release,
    intact,
    project_images,
    rollback_candidates,
)
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.docker_facts import DockerFacts
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.model import BadRequest


def choose_release(docker: DockerFacts, journal: Journal, wanted: str | None) -> Release:
    def present(image_id: str) -> bool:
        return docker.image(image_id) is not None

    if wanted:
        try:
            release = journal.get(wanted)
        except JournalError as exc:
            raise BadRequest("%s; nothing was changed" % exc) from exc
        if release.status != "succeeded":
            raise BadRequest(
                "release %s has status %s: only a release that succeeded can be returned to%s; nothing was changed"
                % (
                    wanted,
                    release.status,
                    " (it was rolled back from by %s)" % release.extra.get("rolled_back_by")
                    if release.status == "rolled_back"
                    else "",
                )
            )
        if not intact(release, present):
            raise BadRequest(
                "release %s is not intact on this host (one of its images is gone); pick another "
                "with release_info" % wanted
            )
        return release
    running = project_images(docker.client, journal.project)
    candidates = rollback_candidates(journal.releases(), running, present)
    if candidates:
        return candidates[0]
    raise BadRequest(
        "no previous succeeded release of %s is intact on this host (release_info lists the journal); nothing was "
        "changed" % journal.project
    )


def rollback_targets(docker: DockerFacts, release: Release) -> dict[str, str]:
    """service -> image reference: the release's tag when it still names the release's image, else its digest."""
    targets = {}
    for name, img in release.services.items():
        tagged = docker.image(img.image)
        targets[name] = img.image if tagged and tagged.get("Id") == img.image_id else (img.digest or img.image)
    return targets


__all__ = ["choose_release", "rollback_targets"]
