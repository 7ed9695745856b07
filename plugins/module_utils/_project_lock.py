# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""One lock per Compose project: upgrade, rollback and restore never run at the same time on a project.

Private to this collection: not a public API, it may change in any release.

``flock`` on ``<root>/<project>/.lock`` (root /var/lib/opsbook). The kernel drops the lock when the process that
holds it dies, so a killed run never leaves a stale lock behind. A child process that is given the lock's file
descriptor (``pass_fds``) keeps the lock held while it runs: a ``docker compose`` started by a run that was then
killed still blocks the next run until it has finished, so two writers never interleave.

The holder writes who it is (operation, pid, start time) into the file, so a second run that cannot get the lock
can say who has it.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import contextlib
import os
import typing as t

from ansible_collections.opsbook.stack.plugins.module_utils._compose import valid_name
from ansible_collections.opsbook.stack.plugins.module_utils._files import (
    HeldLock,
    LockHeld,
    describe_holder,
    flock,
    read_holder,
)

DEFAULT_ROOT = "/var/lib/opsbook"


class ProjectLocked(Exception):
    """Another operation holds the project's lock and did not let go within the wait time."""

    def __init__(self, message: str, holder: dict[str, t.Any]):
        super().__init__(message)
        self.holder = holder


def lock_path(project: str, root: str = DEFAULT_ROOT) -> str:
    if not valid_name(project):
        raise ValueError("project %r is not a valid Compose project name" % (project,))
    return os.path.join(root, project, ".lock")


@contextlib.contextmanager
def project_lock(project: str, operation: str, root: str = DEFAULT_ROOT, wait_s: float = 0.0) -> t.Iterator[HeldLock]:
    """Hold the project's lock for the block; wait up to wait_s seconds for it, then raise ProjectLocked."""
    path = lock_path(project, root)
    try:
        with flock(path, operation, wait_s=wait_s) as held:
            yield held
    except LockHeld as exc:
        raise ProjectLocked(
            "project %s is locked by %s; this %s waited %g s (lock_timeout) and changed nothing. "
            "Let the other run finish, or raise lock_timeout to wait for it."
            % (project, describe_holder(exc.holder), operation, wait_s),
            exc.holder,
        ) from None


__all__ = ["DEFAULT_ROOT", "HeldLock", "ProjectLocked", "lock_path", "project_lock", "read_holder"]
