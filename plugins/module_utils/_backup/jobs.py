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

from ansible_collections.opsbook.stack.plugins.module_utils._backup.base import plausibility
from ansible_collections.opsbook.stack.plugins.module_utils._backup.errors import (
    EXIT_COMPRESS,
    EXIT_DISK,
    EXIT_IMPLAUSIBLE,
    EXIT_INTERNAL,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_RESTORE,
    EXIT_RETENTION,
    EXIT_USAGE,
    EXIT_VERIFY,
    BackupError,
    free_bytes,
)
from ansible_collections.opsbook.stack.plugins.module_utils._backup.pipeline import decompressor
from ansible_collections.opsbook.stack.plugins.module_utils._backup.registry import DRILLABLE, engine_for
from ansible_collections.opsbook.stack.plugins.module_utils._backup.runs import (
    BACKUP_PHASES,
    RESTORE_PHASES,
    RunRecord,
    read_record,
)
from ansible_collections.opsbook.stack.plugins.module_utils._backup.spec import ComponentSpec, Settings
from ansible_collections.opsbook.stack.plugins.module_utils._backup.state import load_state, save_state, write_metrics
from ansible_collections.opsbook.stack.plugins.module_utils._backup.store import (
    MANIFEST,
    Artifact,
    Manifest,
    Store,
    prune,
    shrink_reason,
    utc_id,
    write_json_atomic,
)
from ansible_collections.opsbook.stack.plugins.module_utils._docker import DockerClient
from ansible_collections.opsbook.stack.plugins.module_utils._files import LockHeld, describe_holder, flock, unlink_quiet

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
    """Refuse a backup that cannot fit. The directories of killed runs (<id>.partial) count as space they hold:
    the caller removes them first (under the job's lock), and the message says how much they held."""
    os.makedirs(store.root, exist_ok=True)
    last = int(state.get("last_size") or 0)
    if not last:
        manifests = store.manifests()
        last = manifests[-1].size if manifests else 0
    needed = int(last * (1 + settings.space_margin)) + settings.min_free_bytes
    leftover = sum(size for _d, size in store.leftovers())
    free = free_bytes(store.root)
    if free < needed:
        raise BackupError(
            EXIT_DISK,
            "not enough space for a backup in %s: %d bytes free, %d needed (last backup %d "
            "bytes + %d%% margin + %d reserve; uncommitted leftovers hold %d more); older backups are untouched"
            % (store.root, free, needed, last, settings.space_margin * 100, settings.min_free_bytes, leftover),
            {"path": store.root, "free_bytes": free, "needed_bytes": needed, "leftover_bytes": leftover},
        )
    return {"free": free, "needed": needed, "leftover": leftover}


def plan_backup(spec: ComponentSpec, settings: Settings) -> dict[str, t.Any]:
    """What a backup would do, without writing anything (check mode)."""
    store = Store(settings.dest, spec.name)
    state = load_state(store)
    manifests = store.manifests()
    last = int(state.get("last_size") or (manifests[-1].size if manifests else 0))
    free = free_bytes(settings.dest) if os.path.isdir(settings.dest) else None
    leftovers = store.leftovers()
    return {
        "component": spec.name,
        "type": spec.type,
        "target": store.root,
        "container": spec.container,
        "volume": spec.volume,
        "path": spec.path,
        "existing_backups": [m.id for m in manifests],
        "last_size": last,
        "free_bytes": free,
        # Removed by the next run before its space check: they count as free space for it.
        "leftovers": [os.path.basename(d) for d, _size in leftovers],
        "leftover_bytes": sum(size for _d, size in leftovers),
        "last_run": read_record(store, "backup"),
        "keep_last": spec.keep_last,
        "keep_daily": spec.keep_daily,
        "keep_weekly": spec.keep_weekly,
    }


def run_backup(spec: ComponentSpec, settings: Settings, client: DockerClient | None = None) -> BackupResult:
    """Back up one component under its lock; metrics record the attempt whatever the outcome, and the run
    record (runs.py) every phase."""
    store = Store(settings.dest, spec.name)
    os.makedirs(store.root, exist_ok=True)
    with job_lock(os.path.join(store.root, LOCK), "opsbook-backup backup"):
        state = load_state(store)
        started = time.time()
        result = BackupResult(component=spec.name)
        record = RunRecord(store, "backup", BACKUP_PHASES)
        try:
            _recover_backup(store, record, result)
            _do_backup(spec, settings, store, state, result, client, record)
            state.update(
                last_exit_code=EXIT_OK,
                last_success=round(time.time(), 3),
                last_size=result.size,
                last_duration=round(result.duration_s, 3),
                verify_ok=1,
                last_id=result.id,
            )
            record.phase("done", backup_id=result.id, warnings=result.warnings)
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
            record.phase("failed", exit_code=exc.exit_code, error=exc.message, failed_in=record.data["phase"])
            raise
        except (KeyboardInterrupt, SystemExit):
            state["last_exit_code"] = EXIT_INTERNAL
            record.phase("interrupted", interrupted_at=record.data["phase"])
            raise
        except Exception as exc:
            state["last_exit_code"] = EXIT_INTERNAL
            record.phase("failed", exit_code=EXIT_INTERNAL, error=repr(exc), failed_in=record.data["phase"])
            raise
        finally:
            state["last_attempt"] = round(time.time(), 3)
            state["attempt_duration"] = round(time.time() - started, 3)
            state["count"] = len(store.manifests())
            state["last_phase"] = record.data["phase"]
            try:
                save_state(store, state)
                result.metrics_file = write_metrics(settings, spec, state)
            except (OSError, BackupError) as exc:  # a full disk must not hide the real error
                result.warnings.append("state/metrics not written: %s" % exc)
            result.warnings += record.warnings
        return result


def _recover_backup(store: Store, record: RunRecord, result: BackupResult) -> None:
    """Before anything else: name a killed previous run, and remove every uncommitted directory (its
    <id>.partial holds no backup; a committed one was verified before its commit and stays)."""
    killed = record.interrupted_before()
    removed = store.remove_leftovers()
    if killed:
        result.warnings.append(
            "the previous backup run (pid %s, started %s) was killed in phase %s; its uncommitted data was removed%s"
            % (
                killed.get("pid"),
                utc_id(killed.get("started") or 0),
                killed.get("interrupted_at"),
                " and its committed backup %s kept" % killed["backup_id"]
                if killed.get("backup_id") and os.path.isdir(store.path(killed["backup_id"]))
                else "",
            )
        )
    if removed:
        result.warnings.append(
            "removed %d uncommitted director%s of killed runs (%s, %d bytes)"
            % (
                len(removed),
                "y" if len(removed) == 1 else "ies",
                ", ".join(os.path.basename(d) for d, _s in removed),
                sum(size for _d, size in removed),
            )
        )
    record.phase("planned", recovered_from=killed.get("interrupted_at", ""), leftovers_removed=len(removed))


def _new_id(store: Store) -> tuple[float, str]:
    started = time.time()
    backup_id = utc_id(started)
    while os.path.exists(store.path(backup_id)) or os.path.exists(store.partial_path(backup_id)):
        time.sleep(1.0)  # one per second: ids sort by time
        started = time.time()
        backup_id = utc_id(started)
    return started, backup_id


def _do_backup(
    spec: ComponentSpec,
    settings: Settings,
    store: Store,
    state: dict[str, t.Any],
    result: BackupResult,
    client: DockerClient | None,
    record: RunRecord,
) -> None:
    record.phase("starting")
    preflight_space(store, settings, state)
    engine = engine_for(spec, settings, client)
    started, backup_id = _new_id(store)
    directory = store.partial_path(backup_id)
    os.makedirs(directory)
    record.phase("dumping", backup_id=backup_id, directory=directory)
    try:
        artifacts, facts = engine.dump(directory)
        if not artifacts:
            raise BackupError(EXIT_IMPLAUSIBLE, "component %s produced no artifact (no database to dump?)" % spec.name)
        manifest = Manifest(backup_id, spec.name, spec.type, started, round(time.time() - started, 3), artifacts, facts)
        # Read back what was written, before the commit: a committed backup is a verified one.
        record.phase("verifying")
        t0 = time.monotonic()
        problems = store.verify(manifest, directory)
        result.verify_s = round(time.monotonic() - t0, 3)
        if problems:
            raise BackupError(
                EXIT_VERIFY, "backup %s does not verify right after writing: %s" % (backup_id, "; ".join(problems))
            )
        # The last good backup: the newest not flagged suspect (its files are verified only when it matters).
        last_good = next((m for m in reversed(store.manifests()) if not m.facts.get("suspect")), None)
        suspect = shrink_reason(manifest, last_good, settings.shrink_ratio)
        good = store.newest_verified(good_only=True) if suspect else None
        if suspect:
            manifest.facts["suspect"] = suspect
            result.warnings.append(
                "backup %s kept but suspect: %s; retention keeps the last good backup %s until a backup "
                "of normal size follows" % (backup_id, suspect, good.id if good else "-")
            )
        record.phase("committing")
        write_json_atomic(os.path.join(directory, MANIFEST), manifest.to_dict())
        store.commit(backup_id)
    except BaseException:
        _remove_partial(directory)
        raise
    state["last_suspect"] = 1 if suspect else 0
    result.id, result.path, result.size = backup_id, store.path(backup_id), manifest.size
    result.raw_size = sum(a.raw_bytes for a in artifacts)
    result.duration_s = manifest.duration_s
    result.artifacts = [asdict(a) for a in artifacts]
    record.phase("pruning")
    try:
        # With an off-host repository, a backup whose copy is still pending is kept: the next run copies it.
        result.pruned = prune(
            store,
            spec,
            good.id if suspect and good else backup_id,
            also_keep=offsite_pending(store, state) if settings.offsite else (),
        )
    except OSError as exc:
        raise BackupError(EXIT_RETENTION, "backup %s succeeded but retention failed: %s" % (backup_id, exc)) from exc
    result.kept = [m.id for m in store.manifests()]


def offsite_pending(store: Store, state: dict[str, t.Any]) -> list[str]:
    """Committed local backups without a verified off-host copy (offsite.py), oldest first."""
    done = set(state.get("offsite_verified") or [])
    return [m.id for m in store.manifests() if m.id not in done]


def _remove_partial(directory: str) -> None:
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            unlink_quiet(os.path.join(directory, name))
        try:
            os.rmdir(directory)
        except OSError:
            pass


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
        "into": spec.container or spec.volume or spec.path,
        "artifacts": [a.name for a in m.artifacts],
        "steps": ["verify sha256 and size of %d artifact(s)" % len(m.artifacts)] + engine.restore_steps(m),
    }


def trial_decode(path: str, settings: Settings, art: Artifact) -> None:
    """Decode an artifact to nowhere (age -d | zstd -d, as the restore will): it must decode, give the size the
    manifest recorded and look complete. Raised before anything is stopped or dropped."""
    proc, source = decompressor(path, settings, art.encrypted)
    size, head, tail = 0, b"", b""
    for block in iter(source, b""):
        if len(head) < 64:
            head = (head + block)[:64]
        tail = (tail + block)[-4096:]
        size += len(block)
    code = proc.wait()
    if code != 0:
        err = (proc.stderr.read(2000) or b"").decode(errors="replace").strip()
        raise BackupError(
            EXIT_RESTORE,
            "trial decode of %s failed (exit %s: %s)%s; nothing was touched"
            % (path, code, err, ": is age_identity the key of one of its recipients?" if art.encrypted else ""),
            {"path": path, "stderr": err, "touched": False},
        )
    why = plausibility(art.kind, head, tail) if art.kind != "pg_globals" else ""
    if size != art.raw_bytes or why:
        raise BackupError(
            EXIT_RESTORE,
            "trial decode of %s gave %d bytes, the manifest says %d%s; nothing was touched"
            % (path, size, art.raw_bytes, (": " + why) if why else ""),
            {"path": path, "touched": False},
        )


def _selected(m: Manifest, databases: list[str] | None) -> list[Artifact]:
    return [
        a for a in m.artifacts if not databases or a.kind == "pg_globals" or not a.database or a.database in databases
    ]


@contextlib.contextmanager
def _project_lock(path: str, operation: str, wait_s: float) -> t.Iterator[None]:
    """The project's lock (the one upgrade and rollback take), waited for up to wait_s seconds."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(flock(path, operation, wait_s=wait_s, mode=0o600))
        except LockHeld as exc:
            raise BackupError(
                EXIT_LOCKED,
                "the project lock %s is held by %s; this restore waited %g s for it and touched nothing"
                % (path, describe_holder(exc.holder), wait_s),
                {"holder": exc.holder, "touched": False},
            ) from exc
        yield


def wait_for_lock(path: str, component: str, wait_s: float) -> None:
    """Wait up to wait_s seconds until the project lock is free, then let it go (a playbook's gate before it
    stops anything); a lock still held fails naming its holder."""
    with _project_lock(path, "opsbook-backup restore %s (waiting)" % component, wait_s):
        pass


def run_restore(
    spec: ComponentSpec,
    settings: Settings,
    backup_id: str | None = None,
    client: DockerClient | None = None,
    databases: list[str] | None = None,
    project_lock: str | None = None,
    lock_wait_s: float = 0.0,
) -> dict[str, t.Any]:
    """Prove the backup first (sha256, then a trial decode of every artifact to restore), then let the engine
    restore it beside the live data and swap (docs/backup-states.md); the run record says how far it got.

    project_lock: the project's lock file (the one upgrade and rollback take), waited for up to lock_wait_s
    seconds and held as well when given.
    """
    store = Store(settings.dest, spec.name)
    os.makedirs(store.root, exist_ok=True)
    with contextlib.ExitStack() as locks:
        if project_lock:
            locks.enter_context(_project_lock(project_lock, "opsbook-backup restore %s" % spec.name, lock_wait_s))
        locks.enter_context(job_lock(os.path.join(store.root, LOCK), "opsbook-backup restore"))
        record = RunRecord(store, "restore", RESTORE_PHASES)
        killed = record.interrupted_before()
        engine = engine_for(spec, settings, client)
        started = time.monotonic()
        try:
            m = store.get(backup_id)
            record.phase(
                "planned",
                backup_id=m.id,
                steps=engine.restore_steps(m),
                done=[],
                resumed_from={k: killed.get(k) for k in ("backup_id", "interrupted_at", "done")} if killed else {},
            )
            record.phase("verifying")
            store.require_verified(m)
            require_decryptable(settings, m)
            for art in _selected(m, databases):
                trial_decode(os.path.join(store.path(m.id), art.name), settings, art)

            def progress(phase: str, done: str = "") -> None:
                if done:
                    record.data["done"].append(done)
                record.phase(phase)

            engine.progress = progress  # type: ignore[method-assign]
            restored = engine.restore(store.path(m.id), m, databases)
            record.phase("done", restored=restored)
        except BackupError as exc:
            touched = record.data["phase"] in ("swapping", "starting")
            exc.evidence.setdefault("touched", touched)
            exc.evidence["phase"] = record.data["phase"]
            exc.evidence["done"] = list(record.data.get("done") or [])
            record.phase("failed", exit_code=exc.exit_code, error=exc.message, failed_in=exc.evidence["phase"])
            raise
        except (KeyboardInterrupt, SystemExit):
            record.phase("interrupted", interrupted_at=record.data["phase"])
            raise
        except Exception as exc:
            record.phase("failed", exit_code=EXIT_INTERNAL, error=repr(exc), failed_in=record.data["phase"])
            raise
        result: dict[str, t.Any] = {
            "component": spec.name,
            "backup_id": m.id,
            "restored": restored,
            "duration_s": round(time.monotonic() - started, 3),
            "warnings": list(record.warnings),
        }
        if killed:
            result["resumed"] = record.data["resumed_from"]
            result["warnings"].append(
                "the previous restore (pid %s) was killed in phase %s; this run cleaned up after it and restored "
                "from the start" % (killed.get("pid"), killed.get("interrupted_at"))
            )
        return result


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
