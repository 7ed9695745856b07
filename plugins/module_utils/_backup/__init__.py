# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Backups that can be proven: dump, compress, checksum, commit, verify by restore.

Private to this collection: not a public API, it may change in any release.

One implementation serves the ``backup``/``restore`` modules and the cron job. It uses the standard library
only, so the ``backup`` role copies this package and the module_utils it imports (the list is the role's
``__backup_lib_files``) to the host in one zip (``_bundle``), keeping the collection's layout, and cron runs it::

    PYTHONPATH=/usr/local/lib/opsbook/opsbook-backup.zip \
        python3 -S -m ansible_collections.opsbook.stack.plugins.module_utils._backup \
        --config /etc/opsbook/backup/mariadb.json backup mariadb

The package, by seam: ``errors`` (exit codes), ``spec`` (component and settings), ``registry`` (type -> engine),
``base`` and ``sql`` (what engines share), one ``engine_<name>`` file per kind of server, ``pipeline``
(zstd/age), ``store`` (manifests, verification, retention), ``state`` (state and metrics), ``runs`` (the phase
of every backup and restore run), ``swap`` (replacing a directory's content by a restored copy), ``jobs``
(backup, restore, drill under the job's lock), ``offsite`` (borg copies off the host, verified against the
manifest) and ``cli``. Adding an engine is one ``engine_<name>.py`` file and
one line in ``registry.py`` (docs/architecture.md).

Layout: ``<dest>/<component>/<backup id>/`` holds the artifacts (``*.zst``) and ``manifest.json``. A run writes
into ``<backup id>.partial/``: every artifact is streamed from a Docker exec (or the archive API) through
``zstd`` into ``<name>.partial``, fsynced and renamed, read back, then the manifest (sha256 and size of every
artifact) is written and the directory renamed to ``<backup id>/``, the commit: a ``.partial`` directory is not
a backup, and the next run removes it. ``backup.run.json`` and ``restore.run.json`` beside them hold the phase
of the last run of each (docs/backup-states.md). Retention deletes only the files a
manifest lists and never the newest backup that verifies.

Exit codes of the command line (and ``BackupError.exit_code``):

==  =================================================================================
0   success
1   unexpected internal error (a bug: the traceback is printed)
2   usage or configuration error
3   another run of the same job holds the lock
4   Docker Engine unreachable, container or volume missing or not running
5   the dump command failed (non-zero exit, tool missing in the container)
6   the dump is empty, too small or truncated (implausible)
7   compression failed (zstd missing or non-zero exit)
8   not enough disk space (preflight or ENOSPC while writing)
9   verification failed (checksum mismatch, missing artifact, no committed backup)
10  restore failed
11  restore drill failed
12  retention failed (the backup itself succeeded)
13  off-host copy failed (the local backup is committed; the next run copies every queued backup)
==  =================================================================================
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

from ansible_collections.opsbook.stack.plugins.module_utils._backup.base import Engine, plausibility
from ansible_collections.opsbook.stack.plugins.module_utils._backup.cli import main
from ansible_collections.opsbook.stack.plugins.module_utils._backup.errors import (
    EXIT_CLASSES,
    EXIT_COMPRESS,
    EXIT_DISK,
    EXIT_DOCKER,
    EXIT_DRILL,
    EXIT_DUMP,
    EXIT_IMPLAUSIBLE,
    EXIT_INTERNAL,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_RESTORE,
    EXIT_RETENTION,
    EXIT_USAGE,
    EXIT_VERIFY,
    BackupError,
)
from ansible_collections.opsbook.stack.plugins.module_utils._backup.jobs import (
    BackupResult,
    job_lock,
    plan_backup,
    plan_restore,
    preflight_space,
    require_decryptable,
    run_backup,
    run_drill,
    run_restore,
    trial_decode,
    wait_for_lock,
)
from ansible_collections.opsbook.stack.plugins.module_utils._backup.pipeline import ArtifactWriter, decompressor
from ansible_collections.opsbook.stack.plugins.module_utils._backup.registry import (
    DRILLABLE,
    ENGINES,
    TYPES,
    engine_for,
)
from ansible_collections.opsbook.stack.plugins.module_utils._backup.spec import (
    ComponentSpec,
    Settings,
    component_from_config,
    load_config,
)
from ansible_collections.opsbook.stack.plugins.module_utils._backup.state import (
    METRICS,
    STATE,
    load_state,
    render_metrics,
    save_state,
    write_metrics,
)
from ansible_collections.opsbook.stack.plugins.module_utils._backup.store import (
    MANIFEST,
    PRUNING,
    Artifact,
    Manifest,
    Store,
    newest_verified,
    prune,
    select_keep,
    utc_id,
    write_atomic,
    write_json_atomic,
)

__all__ = [
    "DRILLABLE",
    "ENGINES",
    "EXIT_CLASSES",
    "EXIT_COMPRESS",
    "EXIT_DISK",
    "EXIT_DOCKER",
    "EXIT_DRILL",
    "EXIT_DUMP",
    "EXIT_IMPLAUSIBLE",
    "EXIT_INTERNAL",
    "EXIT_LOCKED",
    "EXIT_OK",
    "EXIT_RESTORE",
    "EXIT_RETENTION",
    "EXIT_USAGE",
    "EXIT_VERIFY",
    "MANIFEST",
    "METRICS",
    "PRUNING",
    "STATE",
    "TYPES",
    "Artifact",
    "ArtifactWriter",
    "BackupError",
    "BackupResult",
    "ComponentSpec",
    "Engine",
    "Manifest",
    "Settings",
    "Store",
    "component_from_config",
    "decompressor",
    "engine_for",
    "job_lock",
    "load_config",
    "load_state",
    "main",
    "newest_verified",
    "plan_backup",
    "plan_restore",
    "plausibility",
    "preflight_space",
    "prune",
    "render_metrics",
    "require_decryptable",
    "run_backup",
    "run_drill",
    "run_restore",
    "save_state",
    "select_keep",
    "trial_decode",
    "utc_id",
    "wait_for_lock",
    "write_atomic",
    "write_json_atomic",
    "write_metrics",
]
