# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The run record: where a backup or restore of one component is, written atomically at every phase.

Private to this collection: not a public API, it may change in any release.

``<dest>/<component>/backup.run.json`` and ``restore.run.json`` hold the phase of the last run of that operation
(docs/backup-states.md has the state machine). Every change is one ``write_atomic``, made while the job's lock is
held, so a reader sees the phase before or after a step, never half a record. A run finds the record of the run
before it under the same lock: a phase that is not terminal means that run was killed, and the new run records it
as ``interrupted`` (with the phase it died in) before it cleans up and starts over.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import os
import time
import typing as t

from ansible_collections.opsbook.stack.plugins.module_utils import _files
from ansible_collections.opsbook.stack.plugins.module_utils._backup.errors import BackupError
from ansible_collections.opsbook.stack.plugins.module_utils._backup.store import Store, write_json_atomic

BACKUP_PHASES = (
    "planned",
    "starting",
    "dumping",
    "verifying",
    "committing",
    "pruning",
    "done",
    "failed",
    "interrupted",
)
RESTORE_PHASES = ("planned", "verifying", "copying", "swapping", "starting", "done", "failed", "interrupted")
TERMINAL = ("done", "failed", "interrupted")


def record_path(store: Store, operation: str) -> str:
    return os.path.join(store.root, "%s.run.json" % operation)


def read_record(store: Store, operation: str) -> dict[str, t.Any]:
    """The last record of operation ({} when there is none or it is unreadable)."""
    return _files.read_json_object(record_path(store, operation))


class RunRecord:
    """The record of one run; phase() writes it atomically. A record that cannot be written (a full disk) is
    remembered as a warning and does not hide the run's own outcome: the phase left on disk is then not terminal,
    and the next run treats this one as interrupted, which is the safe reading."""

    def __init__(self, store: Store, operation: str, phases: tuple[str, ...], **fields: t.Any):
        self.store = store
        self.operation = operation
        self.phases = phases
        self.previous = read_record(store, operation)
        self.data: dict[str, t.Any] = {
            "operation": operation,
            "component": os.path.basename(store.root),
            "pid": os.getpid(),
            "started": round(time.time(), 3),
            "phase": "",
            "history": [],
        }
        self.data.update(fields)
        self.warnings: list[str] = []

    @property
    def path(self) -> str:
        return record_path(self.store, self.operation)

    def interrupted_before(self) -> dict[str, t.Any]:
        """The previous run's record when it was killed (its phase was not terminal); also rewrites it as
        interrupted, keeping the phase it died in as interrupted_at. {} when the previous run ended."""
        prev = self.previous
        if not prev or prev.get("phase") in TERMINAL or not prev.get("phase"):
            return {}
        prev = dict(prev, interrupted_at=prev.get("phase"), phase="interrupted")
        self._write(prev)
        self.previous = prev
        return prev

    def phase(self, name: str, **fields: t.Any) -> None:
        if name not in self.phases:
            raise ValueError("phase %r is not one of %s" % (name, ", ".join(self.phases)))
        self.data.update(fields)
        self.data["phase"] = name
        self.data["updated"] = round(time.time(), 3)
        self.data["history"].append([name, self.data["updated"]])
        self._write(self.data)

    def _write(self, data: dict[str, t.Any]) -> None:
        try:
            write_json_atomic(self.path, data)
        except (OSError, BackupError) as exc:
            self.warnings.append("run record %s not written: %s" % (self.path, getattr(exc, "message", exc)))


__all__ = ["BACKUP_PHASES", "RESTORE_PHASES", "TERMINAL", "RunRecord", "read_record", "record_path"]
