# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Backup failures: the exit codes of the command line and the error that carries one.

Private to this collection: not a public API, it may change in any release.

The table of exit codes is in the package docstring (``_backup/__init__.py``).
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import errno
import os
import typing as t

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3
EXIT_DOCKER = 4
EXIT_DUMP = 5
EXIT_IMPLAUSIBLE = 6
EXIT_COMPRESS = 7
EXIT_DISK = 8
EXIT_VERIFY = 9
EXIT_RESTORE = 10
EXIT_DRILL = 11
EXIT_RETENTION = 12
EXIT_OFFSITE = 13

EXIT_CLASSES = {
    EXIT_OK: "ok",
    EXIT_INTERNAL: "internal",
    EXIT_USAGE: "usage",
    EXIT_LOCKED: "locked",
    EXIT_DOCKER: "docker",
    EXIT_DUMP: "dump_failed",
    EXIT_IMPLAUSIBLE: "implausible_dump",
    EXIT_COMPRESS: "compression_failed",
    EXIT_DISK: "disk_full",
    EXIT_VERIFY: "verify_failed",
    EXIT_RESTORE: "restore_failed",
    EXIT_DRILL: "drill_failed",
    EXIT_RETENTION: "retention_failed",
    EXIT_OFFSITE: "offsite_failed",
}

CHUNK = 1024 * 1024


class BackupError(Exception):
    """A failure with its class (the exit code), a message for the person on call and the evidence."""

    def __init__(self, exit_code: int, message: str, evidence: dict[str, t.Any] | None = None):
        self.exit_code = exit_code
        self.message = message
        self.evidence = evidence or {}
        super().__init__(message)

    @property
    def failure_class(self) -> str:
        return EXIT_CLASSES.get(self.exit_code, "unknown")


def free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def disk_full(path: str, written: int, exc: OSError, extra: int = CHUNK) -> BackupError:
    """The disk-full failure of writing path: how much was written, how much more was needed, what is free."""
    try:
        free = free_bytes(os.path.dirname(path))
    except OSError:
        free = -1
    return BackupError(
        EXIT_DISK,
        "disk full writing %s: %d bytes written, at least %d more needed, %d free on %s (%s); the partial file "
        "was removed and older backups are untouched"
        % (path, written, extra, free, os.path.dirname(path), os.strerror(exc.errno or errno.ENOSPC)),
        {"path": path, "written_bytes": written, "needed_bytes": written + extra, "free_bytes": free},
    )
