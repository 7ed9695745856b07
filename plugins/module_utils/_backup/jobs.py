# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The operations on one component, each under the component's lock: backup, restore, drill, and their plans.

Private to this collection: not a public API, it may change in any release.

A backup preflights the disk, lets the component's engine dump into a new directory, commits the manifest,
reads every artifact back, then applies retention; state and metrics record every attempt whatever its outcome.
A restore or drill verifies first and refuses a backup that does not verify or cannot be decrypted here.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import contextlib
import os
import shutil
import time
import typing as t
from dataclasses import asdict, dataclass, field

from ansible_collections.opsbook.stack.plugins.module_utils._backup.errors import (
    EXIT_COMPRESS,
    EXIT_DISK,
    EXIT_IMPLAUSIBLE,
    EXIT_INTERNAL,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_RETENTION,
    EXIT_USAGE,
    EXIT_VERIFY,
    BackupError,
    free_bytes,
)
from ansible_collections.opsbook.stack.plugins.module_utils._backup.registry import DRILLABLE, engine_for
from ansible_collections.opsbook.stack.plugins.module_utils._backup.spec import ComponentSpec, Settings
from ansible_collections.opsbook.stack.plugins.module_utils._backup.state import load_state, save_state, write_metrics
from ansible_collections.opsbook.stack.plugins.module_utils._backup.store import (
    MANIFEST,
    Artifact,
    Manifest,
    Store,
    prune,
    utc_id,
    write_json_atomic,
)
from ansible_collections.opsbook.stack.plugins.module_utils._docker import DockerClient
from ansible_collections.opsbook.stack.plugins.module_utils._files import LockHeld, describe_holder, flock

LOCK = ".lock"


@contextlib.contextmanager
def job_lock(path: str, operation: str = "opsbook-backup") -> t.Iterator[None]:
    """One flock per job (component), held for the whole backup, restore or drill; never waits."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(flock(path, operation, wait_s=0, mode=0o640))
        except LockHeld as exc:
            raise BackupError(
                EXIT_LOCKED,
                "another backup/restore of this job is running (lock %s held by %s)"
                % (path, describe_holder(exc.holder)),
            ) from exc
        yield


@dataclass
class BackupResult:
    component: str
    id: str = ""
    path: str = ""
    size: int = 0
    raw_size: int = 0
    duration_s: float = 0.0
    verify_s: float = 0.0  # reading every artifact back and hashing it
    artifacts: list[dict[str, t.Any]] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    metrics_file: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, t.Any]:
        return asdict(self)


def preflight_space(store: Store, settings: Settings, state: dict[str, t.Any]) -> dict[str, int]:
    os.makedirs(store.root, exist_ok=True)
    last = int(state.get("last_size") or 0)
    if not last:
        manifests = store.manifests()
        last = manifests[-1].size if manifests else 0
    needed = int(last * (1 + settings.space_margin)) + settings.min_free_bytes
    free = free_bytes(store.root)
    if free < needed:
        raise BackupError(
            EXIT_DISK,
            "not enough space for a backup in %s: %d bytes free, %d needed (last backup %d "
            "bytes + %d%% margin + %d reserve); older backups are untouched"
            % (store.root, free, needed, last, settings.space_margin * 100, settings.min_free_bytes),
            {"path": store.root, "free_bytes": free, "needed_bytes": needed},
        )
    return {"free": free, "needed": needed}


def plan_backup(spec: ComponentSpec, settings: Settings) -> dict[str, t.Any]:
    """What a backup would do, without writing anything (check mode)."""
    store = Store(settings.dest, spec.name)
    state = load_state(store)
    manifests = store.manifests()
    last = int(state.get("last_size") or (manifests[-1].size if manifests else 0))
    free = free_bytes(settings.dest) if os.path.isdir(settings.dest) else None
    return {
        "component": spec.name,
        "type": spec.type,
        "target": store.root,
        "container": spec.container,
        "volume": spec.volume,
        "existing_backups": [m.id for m in manifests],
        "last_size": last,
        "free_bytes": free,
        "keep_last": spec.keep_last,
        "keep_daily": spec.keep_daily,
        "keep_weekly": spec.keep_weekly,
    }


def run_backup(spec: ComponentSpec, settings: Settings, client: DockerClient | None = None) -> BackupResult:
    """Back up one component under its lock; metrics record the attempt whatever the outcome."""
    store = Store(settings.dest, spec.name)
    os.makedirs(store.root, exist_ok=True)
    with job_lock(os.path.join(store.root, LOCK), "opsbook-backup backup"):
        state = load_state(store)
        started = time.time()
        result = BackupResult(component=spec.name)
        try:
            _do_backup(spec, settings, store, state, result, client)
            state.update(
                last_exit_code=EXIT_OK,
                last_success=round(time.time(), 3),
                last_size=result.size,
                last_duration=round(result.duration_s, 3),
                verify_ok=1,
                last_id=result.id,
            )
        except BackupError as exc:
            state["last_exit_code"] = exc.exit_code
            if exc.exit_code == EXIT_VERIFY:
                state["verify_ok"] = 0
            if exc.exit_code == EXIT_RETENTION:
                state.update(
                    last_success=round(time.time(), 3),
                    last_size=result.size,
                    last_duration=round(result.duration_s, 3),
                    verify_ok=1,
                    last_id=result.id,
                )
            raise
        except Exception:
            state["last_exit_code"] = EXIT_INTERNAL
            raise
        finally:
            state["last_attempt"] = round(time.time(), 3)
            state["attempt_duration"] = round(time.time() - started, 3)
            state["count"] = len(store.manifests())
            try:
                save_state(store, state)
                result.metrics_file = write_metrics(settings, spec, state)
            except (OSError, BackupError) as exc:  # a full disk must not hide the real error
                result.warnings.append("state/metrics not written: %s" % exc)
        return result


def _do_backup(
    spec: ComponentSpec,
    settings: Settings,
    store: Store,
    state: dict[str, t.Any],
    result: BackupResult,
    client: DockerClient | None,
) -> None:
    preflight_space(store, settings, state)
    engine = engine_for(spec, settings, client)
    started = time.time()
    backup_id = utc_id(started)
    if os.path.exists(store.path(backup_id)):
        time.sleep(1.0)  # one per second: ids sort by time
        started = time.time()
        backup_id = utc_id(started)
    directory = store.path(backup_id)
    os.makedirs(directory)
    artifacts: list[Artifact] = []
    try:
        artifacts, facts = engine.dump(directory)
        if not artifacts:
            raise BackupError(EXIT_IMPLAUSIBLE, "component %s produced no artifact (no database to dump?)" % spec.name)
        manifest = Manifest(backup_id, spec.name, spec.type, started, round(time.time() - started, 3), artifacts, facts)
        write_json_atomic(os.path.join(directory, MANIFEST), manifest.to_dict())  # the commit
    except BaseException:
        store.discard(directory, artifacts)
        raise
    result.id, result.path, result.size = backup_id, directory, manifest.size
    result.raw_size = sum(a.raw_bytes for a in artifacts)
    result.duration_s = manifest.duration_s
    result.artifacts = [asdict(a) for a in artifacts]
    # Read back what was written: the newest *verified* backup is what retention protects.
    t0 = time.monotonic()
    problems = store.verify(manifest)
    result.verify_s = round(time.monotonic() - t0, 3)
    if problems:
        raise BackupError(
            EXIT_VERIFY, "backup %s does not verify right after writing: %s" % (backup_id, "; ".join(problems))
        )
    try:
        result.pruned = prune(store, spec, backup_id)
    except OSError as exc:
        raise BackupError(EXIT_RETENTION, "backup %s succeeded but retention failed: %s" % (backup_id, exc)) from exc
    result.kept = [m.id for m in store.manifests()]


def require_decryptable(settings: Settings, m: Manifest) -> None:
    """Refuse before anything is stopped when an encrypted backup cannot be decrypted here."""
    if not any(a.encrypted for a in m.artifacts):
        return
    if not settings.age_identity or not os.path.isfile(settings.age_identity):
        raise BackupError(
            EXIT_USAGE,
            "backup %s of %s is encrypted to age recipients: set age_identity to an "
            "identity file of one of them (have: %r); nothing was touched" % (m.id, m.component, settings.age_identity),
        )
    if not shutil.which(settings.age):
        raise BackupError(EXIT_COMPRESS, "backup %s is encrypted and age is not installed on this host" % m.id)


def plan_restore(spec: ComponentSpec, settings: Settings, backup_id: str | None = None) -> dict[str, t.Any]:
    store = Store(settings.dest, spec.name)
    m = store.get(backup_id)
    problems = store.verify(m)
    engine = engine_for(spec, settings)
    return {
        "component": spec.name,
        "backup_id": m.id,
        "created": m.created,
        "verified": not problems,
        "problems": problems,
        "into": spec.container or spec.volume,
        "artifacts": [a.name for a in m.artifacts],
        "steps": ["verify sha256 and size of %d artifact(s)" % len(m.artifacts)] + engine.restore_steps(m),
    }


def run_restore(
    spec: ComponentSpec,
    settings: Settings,
    backup_id: str | None = None,
    client: DockerClient | None = None,
    databases: list[str] | None = None,
    project_lock: str | None = None,
) -> dict[str, t.Any]:
    """Verify first (refuse on any mismatch), then restore every artifact into the component's container.

    project_lock: the project's lock file (the one upgrade and rollback take), held as well when given.
    """
    store = Store(settings.dest, spec.name)
    os.makedirs(store.root, exist_ok=True)
    with contextlib.ExitStack() as locks:
        if project_lock:
            locks.enter_context(job_lock(project_lock, "opsbook-backup restore %s" % spec.name))
        locks.enter_context(job_lock(os.path.join(store.root, LOCK), "opsbook-backup restore"))
        m = store.get(backup_id)
        store.require_verified(m)
        require_decryptable(settings, m)
        started = time.monotonic()
        restored = engine_for(spec, settings, client).restore(store.path(m.id), m, databases)
        return {
            "component": spec.name,
            "backup_id": m.id,
            "restored": restored,
            "duration_s": round(time.monotonic() - started, 3),
        }


def _drillable_types() -> str:
    return ", ".join(DRILLABLE[:-1]) + " and " + DRILLABLE[-1] if len(DRILLABLE) > 1 else "".join(DRILLABLE)


def run_drill(
    spec: ComponentSpec, settings: Settings, backup_id: str | None = None, client: DockerClient | None = None
) -> dict[str, t.Any]:
    """Restore the newest (or given) backup into a throwaway container of the same image and check it."""
    store = Store(settings.dest, spec.name)
    os.makedirs(store.root, exist_ok=True)
    with job_lock(os.path.join(store.root, LOCK), "opsbook-backup drill"):
        state = load_state(store)
        started = time.monotonic()
        result: dict[str, t.Any] = {"component": spec.name}
        try:
            m = store.get(backup_id)
            result["backup_id"] = m.id
            store.require_verified(m)
            require_decryptable(settings, m)
            engine = engine_for(spec, settings, client)
            if not engine.drillable:
                raise BackupError(
                    EXIT_USAGE,
                    "restore drills exist for %s; a %s backup is checked by verify" % (_drillable_types(), spec.type),
                )
            result.update(engine.drill(store.path(m.id), m))
            state.update(drill_ok=1)
        except BackupError:
            state.update(drill_ok=0)
            raise
        finally:
            state["drill_duration"] = result["duration_s"] = round(time.monotonic() - started, 3)
            state["drill_last"] = round(time.time(), 3)
            try:
                save_state(store, state)
                write_metrics(settings, spec, state)
            except (OSError, BackupError):
                pass
        return result
