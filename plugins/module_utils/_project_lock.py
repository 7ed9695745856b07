# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""One lock per Compose project: every writer of a project's compose.yaml, upstreams or journal takes it.

Private to this collection: not a public API, it may change in any release.

``flock`` on ``<root>/<project>/.lock`` (root /var/lib/opsbook). The kernel drops the lock when the process that
holds it dies, so a killed run never leaves a stale lock behind. A child process that is given the lock's file
descriptor (``pass_fds``) keeps the lock held while it runs: a ``docker compose`` started by a run that was then
killed still blocks the next run until it has finished, so two writers never interleave.

The holder writes who it is (operation, pid, start time) into the file, so a run that cannot get the lock within
its wait time can say who has it.

A play that writes in several tasks (the compose_app role, a runbook step) holds the lock across them with
``hold_detached``: a small process of its own, detached from the module, holds the flock until ``release_detached``
or until its ``hold_max_s`` lease ends (a killed play thus frees the lock at the latest then). The holder record
carries a random token; a module run with that token in ``OPSBOOK_PROJECT_LOCK_TOKEN`` (the task's
``environment``) is inside the held lock, and ``project_lock`` lets it through instead of waiting on its own play.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import contextlib
import json
import os
import secrets
import signal
import time
import typing as t

from ansible_collections.opsbook.stack.plugins.module_utils._compose import valid_name
from ansible_collections.opsbook.stack.plugins.module_utils._files import (
    HeldLock,
    LockHeld,
    describe_holder,
    flock,
    read_holder,
)
from ansible_collections.opsbook.stack.plugins.module_utils._process import pid_alive

DEFAULT_ROOT = "/var/lib/opsbook"
# The task environment variable that says "this module runs inside the lock my play holds".
TOKEN_ENV = "OPSBOOK_PROJECT_LOCK_TOKEN"
RELEASE_WAIT_S = 10.0


class ProjectLocked(Exception):
    """Another operation holds the project's lock and did not let go within the wait time."""

    def __init__(self, message: str, holder: dict[str, t.Any]):
        super().__init__(message)
        self.holder = holder


def lock_path(project: str, root: str = DEFAULT_ROOT) -> str:
    if not valid_name(project):
        raise ValueError("project %r is not a valid Compose project name" % (project,))
    return os.path.join(root, project, ".lock")


def holder_message(project: str, holder: dict[str, t.Any], operation: str, wait_s: float) -> str:
    text = (
        "project %s is locked by %s; this %s waited %g s (lock_timeout) and changed nothing. "
        "Let the other run finish, or raise lock_timeout to wait for it."
        % (project, describe_holder(holder), operation, wait_s)
    )
    if holder.get("hold_until"):
        text += (
            " That holder keeps the lock across the tasks of a play until it ends or until %s; if its play was "
            "killed, `kill %s` on this host frees it."
            % (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(holder["hold_until"])), holder.get("pid", "?"))
        )
    return text


def held_by_my_play(path: str) -> bool:
    """True when the lock at path is held by the detached holder whose token this process was given."""
    token = os.environ.get(TOKEN_ENV, "")
    holder = read_holder(path)
    return bool(token) and holder.get("token") == token and pid_alive(holder.get("pid"))


@contextlib.contextmanager
def project_lock(project: str, operation: str, root: str = DEFAULT_ROOT, wait_s: float = 0.0) -> t.Iterator[HeldLock]:
    """Hold the project's lock for the block; wait up to wait_s seconds for it, then raise ProjectLocked.

    Inside a lock held by this play (OPSBOOK_PROJECT_LOCK_TOKEN, see hold_detached) the block runs at once.
    """
    path = lock_path(project, root)
    try:
        with flock(path, operation, wait_s=0.0 if os.environ.get(TOKEN_ENV) else wait_s) as held:
            yield held
            return
    except LockHeld as exc:
        if held_by_my_play(path):
            fd = os.open(path, os.O_RDONLY)
            try:
                yield HeldLock(path, fd, 0.0)
            finally:
                os.close(fd)
            return
        if not os.environ.get(TOKEN_ENV) or wait_s <= 0:
            raise ProjectLocked(holder_message(project, exc.holder, operation, wait_s), exc.holder) from None
    try:
        with flock(path, operation, wait_s=wait_s) as held:
            yield held
    except LockHeld as exc:
        raise ProjectLocked(holder_message(project, exc.holder, operation, wait_s), exc.holder) from None


# --------------------------------------------------------------------------------------------------------
# A lock held across the tasks of a play
# --------------------------------------------------------------------------------------------------------


def _write_holder(fd: int, record: dict[str, t.Any]) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)


def _detach_stdio(keep: int) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for std in (0, 1, 2):
        os.dup2(null, std)
    os.close(null)
    os.closerange(3, keep)
    os.closerange(keep + 1, 4096)


def _exit_on_signal(signum: int, frame: t.Any) -> None:
    raise SystemExit(0)  # leaves the flock block, which closes the descriptor and so lets go of the lock


def _serve_lock(path: str, operation: str, token: str, wait_s: float, hold_max_s: float, report_fd: int) -> None:
    """In the detached process: take the lock, report to the module, hold it until released or the lease ends."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        with flock(path, operation, wait_s=wait_s) as held:
            now = time.time()
            holder = {"operation": operation, "pid": os.getpid(), "since": now, "hold_until": now + hold_max_s}
            _write_holder(held.fd, dict(holder, token=token))
            os.write(report_fd, json.dumps({"ok": True, "holder": holder, "waited_s": held.waited_s}).encode())
            os.close(report_fd)
            deadline = time.monotonic() + hold_max_s
            while time.monotonic() < deadline:
                time.sleep(min(1.0, max(deadline - time.monotonic(), 0.01)))
    except LockHeld as exc:
        os.write(report_fd, json.dumps({"ok": False, "holder": exc.holder}).encode())
        os.close(report_fd)


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def hold_detached(
    project: str, operation: str, root: str = DEFAULT_ROOT, wait_s: float = 0.0, hold_max_s: float = 3600.0
) -> tuple[str, dict[str, t.Any], float]:
    """Take the project's lock in a detached process that holds it for the next tasks: (token, holder, waited_s).

    Raises ProjectLocked naming the holder when the lock was not had within wait_s.
    """
    path = lock_path(project, root)
    os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)
    token = secrets.token_hex(16)
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked processes (the test sees their effects)
        os.close(read_fd)
        try:
            os.setsid()
            if os.fork() == 0:
                _detach_stdio(write_fd)
                _serve_lock(path, operation, token, wait_s, hold_max_s, write_fd)
        finally:
            os._exit(0)
    os.close(write_fd)
    os.waitpid(child, 0)
    try:
        report = json.loads(_read_all(read_fd).decode() or "{}")
    finally:
        os.close(read_fd)
    if not report.get("ok"):
        holder = report.get("holder") or {}
        raise ProjectLocked(holder_message(project, holder, operation, wait_s), holder)
    return token, report["holder"], float(report.get("waited_s", 0.0))


def _still_held_by(path: str, token: str, pid: int) -> bool:
    if read_holder(path).get("token") != token or not pid_alive(pid):
        return False
    try:
        with flock(path, "released by its play", wait_s=0.0):
            return False
    except LockHeld:
        return True


def release_detached(project: str, token: str, root: str = DEFAULT_ROOT) -> bool:
    """End the detached holder with this token; False when it does not hold the lock (already gone or another's)."""
    path = lock_path(project, root)
    holder = read_holder(path)
    pid = holder.get("pid")
    if not token or holder.get("token") != token or not isinstance(pid, int) or not pid_alive(pid):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + RELEASE_WAIT_S
    while _still_held_by(path, token, pid):
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    return True


__all__ = [
    "DEFAULT_ROOT",
    "TOKEN_ENV",
    "HeldLock",
    "ProjectLocked",
    "hold_detached",
    "holder_message",
    "lock_path",
    "project_lock",
    "read_holder",
    "release_detached",
]
