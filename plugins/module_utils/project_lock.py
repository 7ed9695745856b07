# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""One lock per Compose project: upgrade, rollback and restore never run at the same time on a project.

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
import fcntl
import json
import os
import re
import time
import typing as t
from dataclasses import dataclass

DEFAULT_ROOT = "/var/lib/opsbook"
POLL_S = 0.2
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ProjectLocked(Exception):
    """Another operation holds the project's lock and did not let go within the wait time."""

    def __init__(self, message: str, holder: dict[str, t.Any]):
        super().__init__(message)
        self.holder = holder


@dataclass
class HeldLock:
    path: str
    fd: int
    waited_s: float


def lock_path(project: str, root: str = DEFAULT_ROOT) -> str:
    if not _NAME_RE.match(project or ""):
        raise ValueError("project %r is not a valid Compose project name" % (project,))
    return os.path.join(root, project, ".lock")


def read_holder(path: str) -> dict[str, t.Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.loads(handle.read() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(holder: dict[str, t.Any]) -> str:
    if not holder:
        return "another process"
    since = holder.get("since")
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since)) if isinstance(since, (int, float)) else "?"
    return "%s (pid %s, since %s)" % (holder.get("operation", "?"), holder.get("pid", "?"), when)


@contextlib.contextmanager
def project_lock(project: str, operation: str, root: str = DEFAULT_ROOT, wait_s: float = 0.0) -> t.Iterator[HeldLock]:
    """Hold the project's lock for the block; wait up to wait_s seconds for it, then raise ProjectLocked."""
    path = lock_path(project, root)
    os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    started = time.monotonic()
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - started >= wait_s:
                    holder = read_holder(path)
                    raise ProjectLocked(
                        "project %s is locked by %s; this %s waited %g s (lock_timeout) and changed nothing. "
                        "Let the other run finish, or raise lock_timeout to wait for it." % (
                            project, _describe(holder), operation, wait_s), holder) from None
                time.sleep(POLL_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"operation": operation, "pid": os.getpid(), "since": time.time()}).encode(), 0)
        yield HeldLock(path, fd, round(time.monotonic() - started, 3))
    finally:
        os.close(fd)  # releases the flock (children given the fd keep it until they exit)


__all__ = ["DEFAULT_ROOT", "HeldLock", "ProjectLocked", "lock_path", "project_lock", "read_holder"]
