# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Files: atomic writes (file and directory fsync), sha256 of a file, and flock that names its holder.

Private to this collection: not a public API, it may change in any release.

Standard library only, and no import of the rest of the collection: the backup program copies this file to hosts
and runs it without Ansible. Every write of a file that must never be seen half-written (journal records,
upstream files, manifests, metrics) and every lock of the collection goes through here.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import tempfile
import time
import typing as t
from dataclasses import dataclass

CHUNK = 1024 * 1024
LOCK_POLL_S = 0.2
# Suffix of the temporary file beside the target: Nginx's `*.conf` includes and the journal's `*.json` glob
# both skip it, so a crash never leaves a half-written file where a reader looks.
TMP_SUFFIX = ".partial"
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def sha256_file(path: str) -> str:
    """Hex sha256 of a file's content, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(path: str, strict: bool = True) -> None:
    """fsync a directory so a rename in it survives a crash; strict=False ignores filesystems that refuse."""
    try:
        fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        if strict:
            raise
        return
    try:
        os.fsync(fd)
    except OSError:
        if strict:
            raise
    finally:
        os.close(fd)


def unlink_quiet(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def read_text(path: str) -> str | None:
    """The file's text, or None when it does not exist."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def read_json_object(path: str) -> dict[str, t.Any]:
    """A JSON object written by write_json_atomic ({} when the file is missing, unreadable or not an object)."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_atomic(path: str, data: bytes | str, mode: int = 0o640) -> None:
    """Write data to path so that readers see the old content or the new one, never a part.

    A temporary file beside path (``.<name>.<random>.partial``), fsync, chmod, rename over path, fsync the
    directory. Any failure removes the temporary file and leaves path as it was; OSError (ENOSPC among them)
    reaches the caller, which knows how to word it.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), suffix=TMP_SUFFIX, dir=directory)
    try:
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        unlink_quiet(tmp)
        raise
    fsync_dir(directory, strict=False)


def write_json_atomic(path: str, data: t.Any, mode: int = 0o640) -> None:
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"), mode)


def restore_file(path: str, previous: str | bytes | None, mode: int = 0o644) -> None:
    """Put back what path held before (None: it did not exist, so remove it)."""
    if previous is None:
        unlink_quiet(path)
        fsync_dir(os.path.dirname(path) or ".", strict=False)
    else:
        write_atomic(path, previous, mode)


# --------------------------------------------------------------------------------------------------------
# flock
# --------------------------------------------------------------------------------------------------------


class LockHeld(Exception):
    """Another process holds the lock and did not let go within the wait time."""

    def __init__(self, message: str, path: str, holder: dict[str, t.Any]):
        super().__init__(message)
        self.path = path
        self.holder = holder


@dataclass
class HeldLock:
    path: str
    fd: int
    waited_s: float


def read_holder(path: str) -> dict[str, t.Any]:
    """Who holds (or last held) the lock at path: {"operation", "pid", "since"}, {} when unknown."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError:
        return {}
    try:
        data = json.loads(text or "{}")
    except ValueError:
        # An older writer left a bare pid.
        return {"pid": text.strip()} if text.strip() else {}
    return data if isinstance(data, dict) else {}


def describe_holder(holder: dict[str, t.Any]) -> str:
    if not holder:
        return "another process"
    since = holder.get("since")
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since)) if isinstance(since, (int, float)) else "?"
    return "%s (pid %s, since %s)" % (holder.get("operation", "?"), holder.get("pid", "?"), when)


@contextlib.contextmanager
def flock(path: str, operation: str = "", wait_s: float | None = 0.0, mode: int = 0o600) -> t.Iterator[HeldLock]:
    """Hold an exclusive flock on path for the block and record the holder in the file.

    wait_s: 0 tries once, a number waits that long, None waits without limit. When the lock is not had in time,
    LockHeld names the holder. The kernel drops the lock when the holder dies, so a killed run leaves no stale
    lock; a child given the descriptor (``pass_fds``) keeps it held until it exits.
    """
    os.makedirs(os.path.dirname(path) or ".", mode=0o750, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, mode)
    started = time.monotonic()
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - started
                if wait_s is not None and waited >= wait_s:
                    holder = read_holder(path)
                    raise LockHeld(
                        "%s is held by %s; waited %g s" % (path, describe_holder(holder), wait_s), path, holder
                    ) from None
                time.sleep(LOCK_POLL_S if wait_s is None else min(LOCK_POLL_S, max(wait_s - waited, 0.01)))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"operation": operation, "pid": os.getpid(), "since": time.time()}).encode(), 0)
        yield HeldLock(path, fd, round(time.monotonic() - started, 3))
    finally:
        os.close(fd)  # releases the flock (children given the fd keep it until they exit)


__all__ = [
    "CHUNK",
    "DISK_FULL_ERRNOS",
    "TMP_SUFFIX",
    "HeldLock",
    "LockHeld",
    "describe_holder",
    "flock",
    "fsync_dir",
    "read_holder",
    "read_text",
    "restore_file",
    "sha256_file",
    "unlink_quiet",
    "write_atomic",
    "write_json_atomic",
]
