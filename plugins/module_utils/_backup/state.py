# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Per-component state (the last attempt, success, size, verify and drill results) and its metrics file.

Private to this collection: not a public API, it may change in any release.

The metrics go to node_exporter's textfile directory as ``opsbook_backup_<component>.prom``; the monitoring
role's alert rules read them by these names.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import os
import typing as t

from ansible_collections.opsbook.stack.plugins.module_utils import _files
from ansible_collections.opsbook.stack.plugins.module_utils._backup.store import Store, write_atomic, write_json_atomic

STATE = "state.json"

METRICS = (
    (
        "opsbook_backup_last_attempt_timestamp_seconds",
        "gauge",
        "Unix time the last backup attempt ended.",
        "last_attempt",
    ),
    (
        "opsbook_backup_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last successful backup.",
        "last_success",
    ),
    ("opsbook_backup_last_exit_code", "gauge", "Exit code of the last backup attempt (0 = success).", "last_exit_code"),
    ("opsbook_backup_last_size_bytes", "gauge", "Size of the last successful backup (all artifacts).", "last_size"),
    ("opsbook_backup_last_duration_seconds", "gauge", "Duration of the last successful backup.", "last_duration"),
    ("opsbook_backup_verify_ok", "gauge", "1 when the newest backup verified (sha256 of every artifact).", "verify_ok"),
    ("opsbook_backup_restore_drill_ok", "gauge", "1 when the last restore drill passed.", "drill_ok"),
    ("opsbook_backup_restore_drill_duration_seconds", "gauge", "Duration of the last restore drill.", "drill_duration"),
    ("opsbook_backup_restore_drill_timestamp_seconds", "gauge", "Unix time of the last restore drill.", "drill_last"),
    ("opsbook_backup_count", "gauge", "Committed backups kept for the component.", "count"),
    # Off-host copies (offsite.py): written once a job has an off-host repository.
    (
        "opsbook_backup_offsite_last_attempt_timestamp_seconds",
        "gauge",
        "Unix time the last off-host copy attempt ended.",
        "offsite_last_attempt",
    ),
    (
        "opsbook_backup_offsite_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last off-host copy run after which every committed backup had a verified remote copy.",
        "offsite_last_success",
    ),
    (
        "opsbook_backup_offsite_last_exit_code",
        "gauge",
        "Exit code of the last off-host copy attempt (0 = success, 13 = failed).",
        "offsite_last_exit_code",
    ),
    (
        "opsbook_backup_offsite_last_bytes",
        "gauge",
        "Bytes of the last off-host copy that copied data.",
        "offsite_last_bytes",
    ),
    (
        "opsbook_backup_offsite_last_duration_seconds",
        "gauge",
        "Duration of the last successful off-host copy run (copy and remote verification).",
        "offsite_last_duration",
    ),
    (
        "opsbook_backup_offsite_pending",
        "gauge",
        "Committed local backups without a verified off-host copy (queued for the next run).",
        "offsite_pending",
    ),
    (
        "opsbook_backup_offsite_check_ok",
        "gauge",
        "1 when the last check of the off-host repository passed.",
        "offsite_check_ok",
    ),
    (
        "opsbook_backup_offsite_check_timestamp_seconds",
        "gauge",
        "Unix time of the last check of the off-host repository.",
        "offsite_check_last",
    ),
    (
        "opsbook_backup_offsite_drill_ok",
        "gauge",
        "1 when the last restore drill from the off-host copy passed.",
        "offsite_drill_ok",
    ),
    (
        "opsbook_backup_offsite_drill_duration_seconds",
        "gauge",
        "Duration of the last restore drill from the off-host copy (fetch included).",
        "offsite_drill_duration",
    ),
    (
        "opsbook_backup_offsite_drill_timestamp_seconds",
        "gauge",
        "Unix time of the last restore drill from the off-host copy.",
        "offsite_drill_last",
    ),
)


def load_state(store: Store) -> dict[str, t.Any]:
    return _files.read_json_object(os.path.join(store.root, STATE))


def save_state(store: Store, state: dict[str, t.Any]) -> None:
    os.makedirs(store.root, exist_ok=True)
    write_json_atomic(os.path.join(store.root, STATE), state)


def render_metrics(component: str, kind: str, state: dict[str, t.Any]) -> str:
    labels = '{component="%s",type="%s"}' % (component.replace('"', ""), kind)
    lines = []
    for name, mtype, help_text, key in METRICS:
        if state.get(key) is None:
            continue
        lines.append("# HELP %s %s" % (name, help_text))
        lines.append("# TYPE %s %s" % (name, mtype))
        value = state[key]
        lines.append("%s%s %s" % (name, labels, int(value) if isinstance(value, bool) else value))
    return "\n".join(lines) + "\n"


def write_metrics(settings: t.Any, spec: t.Any, state: dict[str, t.Any]) -> str | None:
    """<metrics_dir>/opsbook_backup_<component>.prom, atomically (node_exporter must never read half a file)."""
    if not settings.metrics_dir:
        return None
    os.makedirs(settings.metrics_dir, exist_ok=True)
    path = os.path.join(settings.metrics_dir, "opsbook_backup_%s.prom" % spec.name)
    if not getattr(settings, "offsite", None):
        # A job without (or no longer with) an off-host repository publishes no off-host series: stale values
        # would fire BackupOffsiteStale for copies nobody asked for.
        state = {k: v for k, v in state.items() if not k.startswith("offsite_")}
    write_atomic(path, render_metrics(spec.name, spec.type, state).encode(), mode=0o644)
    return path
