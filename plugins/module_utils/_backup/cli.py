# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The command line cron runs (opsbook-backup): one action on one component of a job file.

Private to this collection: not a public API, it may change in any release.

Exit codes: the table in the package docstring (``_backup/__init__.py``).
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import argparse
import json
import secrets
import sys
import time
import traceback
import typing as t

from ansible_collections.opsbook.stack.plugins.module_utils._backup.errors import (
    EXIT_DOCKER,
    EXIT_INTERNAL,
    EXIT_OK,
    BackupError,
)
from ansible_collections.opsbook.stack.plugins.module_utils._backup.jobs import run_backup, run_drill, run_restore
from ansible_collections.opsbook.stack.plugins.module_utils._backup.offsite import (
    backup_and_copy,
    fetch,
    prune_remote,
    run_check,
    run_offsite,
    run_offsite_drill,
)
from ansible_collections.opsbook.stack.plugins.module_utils._backup.spec import component_from_config, load_config
from ansible_collections.opsbook.stack.plugins.module_utils._backup.state import load_state, save_state, write_metrics
from ansible_collections.opsbook.stack.plugins.module_utils._backup.store import Store, utc_id
from ansible_collections.opsbook.stack.plugins.module_utils._docker import DockerError

ACTIONS = (
    "backup",
    "verify",
    "restore",
    "drill",
    "list",
    "metrics",
    "offsite",
    "offsite-check",
    "fetch",
    "offsite-prune",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="opsbook-backup",
        description="Checksummed, verified backups of Docker "
        "databases and volumes (exit codes: see the package docstring of _backup).",
    )
    parser.add_argument("--config", default="/etc/opsbook/backup.json")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--jitter", type=float, default=0.0, help="sleep a random 0..N seconds first")
    parser.add_argument(
        "--delay",
        type=float,
        default=0.0,
        help="sleep exactly N seconds first (cron: the role's stable per-host jitter)",
    )
    parser.add_argument("--log", default="", help="append one line per run (time, action, exit code, result) here")
    parser.add_argument("action", choices=ACTIONS)
    parser.add_argument("component")
    parser.add_argument("--backup-id", default=None)
    parser.add_argument(
        "--source",
        choices=("local", "offsite"),
        default="local",
        help="drill: restore the local backup (default) or the off-host copy",
    )
    args = parser.parse_args(argv)
    code, summary = _run_cli(args)
    if args.log:
        _log_line(args.log, "%s %s %s exit=%d %s" % (utc_id(), args.action, args.component, code, summary))
    return code


def _log_line(path: str, line: str) -> None:
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line.replace("\n", " ") + "\n")
    except OSError as exc:
        sys.stderr.write("opsbook-backup: cannot append to log %s: %s\n" % (path, exc))


def _act(args: argparse.Namespace) -> t.Any:
    if args.action == "offsite-prune":  # the repository's own host: every component of the repository at once
        return prune_remote(load_config(args.config)[0])
    settings, spec = component_from_config(args.config, args.component)
    if args.delay > 0:
        time.sleep(args.delay)
    if args.jitter > 0:
        time.sleep(secrets.randbelow(int(args.jitter * 1000) + 1) / 1000.0)
    store = Store(settings.dest, spec.name)
    if args.action == "backup":
        return backup_and_copy(spec, settings) if settings.offsite else run_backup(spec, settings).to_dict()
    if args.action == "offsite":
        return run_offsite(spec, settings)
    if args.action == "offsite-check":
        return run_check(spec, settings)
    if args.action == "fetch":
        return fetch(spec, settings, args.backup_id)
    if args.action == "verify":
        m = store.get(args.backup_id)
        problems = store.verify(m)
        state = load_state(store)
        state["verify_ok"] = 0 if problems else 1
        save_state(store, state)
        write_metrics(settings, spec, state)
        store.require_verified(m)
        return {"backup_id": m.id, "verified": True}
    if args.action == "restore":
        return run_restore(spec, settings, args.backup_id)
    if args.action == "drill":
        if args.source == "offsite":
            return run_offsite_drill(spec, settings, args.backup_id)
        return run_drill(spec, settings, args.backup_id)
    if args.action == "metrics":
        return {"metrics_file": write_metrics(settings, spec, load_state(store))}
    return [{"id": m.id, "size": m.size, "problems": store.verify(m)} for m in store.manifests()]


def _run_cli(args: argparse.Namespace) -> tuple[int, str]:
    """Run one action; returns the exit code and a one-line summary for the log."""
    try:
        out = _act(args)
        sys.stdout.write(
            (json.dumps(out, indent=2, sort_keys=True) if args.json else json.dumps(out, sort_keys=True)) + "\n"
        )
        # Warnings go to stderr (cron appends it to the job's log) and into the log line: never only to stdout.
        warnings = [str(w) for w in (out.get("warnings") or [])] if isinstance(out, dict) else []
        for warning in warnings:
            sys.stderr.write("opsbook-backup: warning: %s\n" % warning)
        noted = (" warnings=%d: %s" % (len(warnings), " | ".join(warnings))) if warnings else ""
        if isinstance(out, dict) and out.get("id"):
            return EXIT_OK, "ok id=%s size=%s duration_s=%s pruned=%s%s" % (
                out["id"],
                out.get("size"),
                out.get("duration_s"),
                ",".join(out.get("pruned") or []) or "-",
                noted,
            )
        return EXIT_OK, "ok " + json.dumps(out, sort_keys=True)[:300] + noted
    except BackupError as exc:
        sys.stderr.write("opsbook-backup: %s: %s\n" % (exc.failure_class, exc.message))
        return exc.exit_code, "%s: %s" % (exc.failure_class, exc.message)
    except DockerError as exc:
        sys.stderr.write("opsbook-backup: docker: %s\n" % exc)
        return EXIT_DOCKER, "docker: %s" % exc
    except Exception as exc:  # pylint: disable=broad-except
        traceback.print_exc()
        return EXIT_INTERNAL, "internal: %r" % exc


if __name__ == "__main__":
    raise SystemExit(main())
