# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""A run of rolling_upgrade or rollback: check the request, take the project's lock, reconcile, plan, pull,
replace every service that changes (all or nothing), and record the release in the journal.

Private to this collection: not a public API, it may change in any release.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import os
import time
import typing as t

from ansible_collections.opsbook.stack.plugins.module_utils._journal import (
    WORKING_PHASES,
    Journal,
    Release,
    ServiceImage,
    build_release,
    content_of,
    current_release,
    project_images,
)
from ansible_collections.opsbook.stack.plugins.module_utils._project_lock import ProjectLocked, project_lock
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.choose import choose_release, rollback_targets
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.compose_file import target_image
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.host import Host
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.model import (
    BadRequest,
    ComposeService,
    Container,
    Run,
    ServicePlan,
    Settings,
    UndoIncomplete,
    UpgradeError,
)
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.plan import plan_service
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.recover import progress_of, recover
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.rollout import STEP_ERRORS, Rollout

# A rollback's choice of target made again under the lock: (service -> image, the release id).
Rechoose = t.Callable[[], tuple[dict[str, str], str]]


def _result(run: Run, plans: list[ServicePlan], **extra: t.Any) -> dict[str, t.Any]:
    out: dict[str, t.Any] = {
        "plan": [p.to_dict() for p in plans],
        "steps": run.steps,
        "warnings": run.warnings,
        "timings": run.timings,
        "reconciled": run.reconciled,
    }
    if run.evidence:
        out["evidence"] = run.evidence
    if run.rolled_back_to:
        out["rolled_back_to"] = run.rolled_back_to
    out.update(extra)
    return out


class _Recorder:
    """The journal record of one run: the first write gets a new id, the later ones update it, and every write
    says the phase the run reached (docs/state-machine.md), atomically, before the run goes on."""

    def __init__(self, host: Host, journal: Journal, kind: str, previous: Release | None):
        self.host = host
        self.journal = journal
        self.kind = kind
        self.previous = previous
        self.release_id: str | None = None
        self.started_wall = time.time()
        self.services: dict[str, ServiceImage] = {}
        self.extra: dict[str, t.Any] = {}
        self.detail = ""
        self.phase = ""

    def record(
        self,
        status: str,
        detail: str,
        services: dict[str, ServiceImage] | None = None,
        extra: dict[str, t.Any] | None = None,
        phase: str = "",
    ) -> Release:
        if services is None:
            services = project_images(self.host.client, self.host.s.project)
        self.services, self.detail = services, detail
        if extra is not None:
            self.extra = extra
        release = build_release(
            self.journal,
            self.kind,
            status,
            self.host.s.compose_file,
            services,
            self.started_wall,
            previous=self.previous,
            detail=detail,
            release_id=self.release_id,
            duration_s=round(time.time() - self.started_wall, 3),
            extra=self.extra,
            phase=phase,
        )
        self.journal.record(release)
        self.release_id, self.phase = release.id, release.phase
        return release

    def on_phase(self, plan: ServicePlan, phase: str, old: list[Container], new: list[Container]) -> None:
        """The rollout's hook: the service that moves, its containers and its phase, written before it goes on."""
        progress = {**self.extra.get("progress", {}), **progress_of(plan, phase, old, new)}
        self.extra = {**self.extra, "progress": progress}
        self.record("in_progress", self.detail, self.services, phase=phase)

    def moved(self, service: str) -> None:
        progress = self.extra.get("progress", {})
        progress["moved"] = [*progress.get("moved", []), service]


def _require_compose_file(settings: Settings) -> None:
    if not os.path.isfile(settings.compose_file):
        raise BadRequest(
            "%s does not exist: deploy the project (compose_app role) before upgrading it" % settings.compose_file
        )


def _read_services(host: Host) -> dict[str, ComposeService]:
    try:
        return host.compose.config()
    except UpgradeError as exc:
        raise BadRequest(str(exc)) from exc


def execute(
    settings: Settings,
    targets: dict[str, str],
    kind: str = "upgrade",
    host: Host | None = None,
    rollback_of: str | None = None,
    services: dict[str, ComposeService] | None = None,
    rechoose: Rechoose | None = None,
) -> dict[str, t.Any]:
    """Plan, and unless in check mode carry out, the move of `targets` (service -> image reference)."""
    host = host or Host(settings)
    run = Run()
    _require_compose_file(settings)
    if services is None:
        services = _read_services(host)
    unknown = sorted(set(targets) - set(services))
    if unknown:
        raise BadRequest(
            "unknown service%s %s in project %s (its services: %s); nothing was changed"
            % ("s" if len(unknown) > 1 else "", ", ".join(unknown), settings.project, ", ".join(sorted(services)))
        )
    journal = Journal(settings.journal_root, settings.project)
    if settings.check_mode:
        plans = [plan_service(host.docker, services[name], image, True) for name, image in targets.items()]
        latest = journal.latest("succeeded")
        return _result(
            run,
            plans,
            changed=any(p.action != "none" for p in plans),
            release=None,
            previous_release=latest and latest.id,
        )
    try:
        with project_lock(settings.project, kind, settings.journal_root, settings.lock_timeout_s) as held:
            host.compose.lock_fd = held.fd
            try:
                if held.waited_s:
                    run.step("waited %g s for the project lock" % held.waited_s)
                return _locked(host, journal, run, targets, kind, rollback_of, services, rechoose)
            finally:
                host.compose.lock_fd = None
    except ProjectLocked as exc:
        raise UpgradeError(str(exc), {"lock_holder": exc.holder, "changed": False}) from exc


def _locked(
    host: Host,
    journal: Journal,
    run: Run,
    targets: dict[str, str],
    kind: str,
    rollback_of: str | None,
    services: dict[str, ComposeService],
    rechoose: Rechoose | None = None,
) -> dict[str, t.Any]:
    """The run while the project's lock is held."""
    settings = host.s
    completed = recover(host, journal, run, services)
    if run.reconciled:
        services = host.compose.config()
        if rechoose is not None:
            # What runs changed under the lock (an interrupted run put in order): choose the target again.
            targets, rollback_of = rechoose()
    if rollback_of:
        run.rolled_back_to = rollback_of
    run.warnings.extend(journal.skipped)
    plans = [plan_service(host.docker, services[name], image, False) for name, image in targets.items()]
    previous = journal.latest("succeeded")
    previous_id = previous.id if previous else None
    todo = [p for p in plans if p.action != "none"]
    if not todo:
        # Nothing to move. A record the recovery completed is returned; a recovery never records a release as
        # succeeded that was not baked (recover.py).
        shown = completed or previous
        return _result(
            run,
            plans,
            changed=bool(run.reconciled),
            release=shown.to_dict() if shown else None,
            previous_release=previous_id,
        )
    _pull(host, run, plans, services)
    # The release a rollback returns from: what runs now, never a rollback target again once this one succeeds.
    back_from = _rolled_back_from(host, journal) if kind == "rollback" else []
    recorder = _Recorder(host, journal, kind, previous)
    intended = {p.service: ServiceImage(p.to_image, p.to_image_id, p.to_digest) for p in plans}
    extra: dict[str, t.Any] = {"rollback_of": rollback_of} if rollback_of else {}
    if back_from:
        extra["rolls_back_from"] = [r.id for r in back_from]
    extra["progress"] = {"todo": [p.service for p in todo], "moved": []}
    recorder.record(
        "in_progress",
        "%s in progress (pid %d)" % (kind, os.getpid()),
        {**project_images(host.client, settings.project), **intended},
        extra,
        phase="planned",
    )
    try:
        host.compose_file.check_all({p.service: p.to_image for p in todo}, services)
    except STEP_ERRORS as exc:
        release = recorder.record("failed", "%s refused before anything moved: %s" % (kind, exc), phase="failed")
        raise UpgradeError(
            str(exc), _result(run, plans, changed=False, release=release.to_dict(), previous_release=previous_id)
        ) from exc
    rollout = Rollout(host, run)
    rollout.on_phase = recorder.on_phase
    done: list[ServicePlan] = []
    try:
        for plan in todo:
            rollout.replace(plan)
            done.append(plan)
            recorder.moved(plan.service)
    except STEP_ERRORS as exc:
        _failed(host, journal, run, recorder, plans, todo, done, rollout, exc, previous_id)
    release = recorder.record(
        "succeeded",
        "%s of %s" % (kind, ", ".join("%s to %s" % (p.service, p.to_image) for p in todo)),
        extra={**recorder.extra, "timings": run.timings},
        phase="done",
    )
    if back_from:
        marked = journal.mark_rolled_back(back_from, release.id)
        run.step("journal: %s marked rolled_back" % ", ".join(marked))
    journal.prune(settings.keep)
    return _result(run, plans, changed=True, release=release.to_dict(), previous_release=previous_id)


def _pull(host: Host, run: Run, plans: list[ServicePlan], services: dict[str, ComposeService]) -> None:
    """Pull what is missing (or everything with pull=always); a failed pull changed nothing and says so."""
    for plan in plans:
        if plan.action == "none" or not (host.s.pull == "always" or not plan.to_image_id):
            continue
        try:
            host.docker.pull(plan.to_image)
        except UpgradeError as exc:
            raise UpgradeError(
                "%s; nothing was changed" % exc,
                _result(run, plans, changed=False, failed_service=plan.service),
            ) from exc
        run.step("%s: pulled %s" % (plan.service, plan.to_image))
        fresh = plan_service(host.docker, services[plan.service], plan.to_image, False)
        plan.to_image_id, plan.to_digest = fresh.to_image_id, fresh.to_digest
        plan.action = fresh.action if fresh.action != "none" else plan.action


def _rolled_back_from(host: Host, journal: Journal) -> list[Release]:
    """Every succeeded record of what runs now (a rollback leaves it)."""
    releases = journal.releases()
    current = current_release(releases, project_images(host.client, host.s.project))
    if current is None:
        return []
    key = content_of(current)
    return [r for r in releases if r.status == "succeeded" and content_of(r) == key]


def _failed(
    host: Host,
    journal: Journal,
    run: Run,
    recorder: _Recorder,
    plans: list[ServicePlan],
    todo: list[ServicePlan],
    done: list[ServicePlan],
    rollout: Rollout,
    exc: Exception,
    previous_id: str | None,
) -> t.NoReturn:
    """The failed service undid itself; the services moved before it go back; the record ends failed, or stays
    in its phase when an undo did not finish (the next run puts it in order)."""
    kind, settings = recorder.kind, host.s
    message = str(exc)
    failed_service = next((p.service for p in todo if p not in done), "?")
    rollout.on_phase = _no_record
    _move_back(rollout, run, done)
    undo_failures = list(exc.undo_failures) if isinstance(exc, UndoIncomplete) else []
    phase = recorder.phase if undo_failures and recorder.phase in WORKING_PHASES else "failed"
    release = recorder.record(
        "failed",
        "%s failed on %s: %s" % (kind, failed_service, message),
        {**project_images(host.client, settings.project), **recorder.services},
        {**recorder.extra, "evidence": run.evidence, "steps": run.steps, "undo_failures": undo_failures},
        phase=phase,
    )
    journal.prune(settings.keep)
    undone = "was undone; the previous release keeps serving" if not undo_failures else "could not be fully undone"
    raise UpgradeError(
        "%s of %s failed on service %s and %s. %s" % (kind, settings.project, failed_service, undone, message),
        _result(
            run,
            plans,
            changed=True,
            release=release.to_dict(),
            previous_release=previous_id,
            failed_service=failed_service,
            undo_failures=undo_failures,
        ),
    ) from exc


def _no_record(plan: ServicePlan, phase: str, old: list[Container], new: list[Container]) -> None:
    """Moving back the services of a failed run is not a phase of its record (docs/state-machine.md)."""


def _move_back(rollout: Rollout, run: Run, done: list[ServicePlan]) -> None:
    """Services already moved in this run go back too: a release is all or nothing."""
    for plan in reversed(done):
        try:
            rollout.replace(plan.reversed())
            run.step("%s: moved back to %s" % (plan.service, plan.from_image))
        except STEP_ERRORS as undo_exc:
            run.warnings.append("%s could not be moved back to %s: %s" % (plan.service, plan.from_image, undo_exc))


# --------------------------------------------------------------------------------------------------------
# The two entry points
# --------------------------------------------------------------------------------------------------------


def rolling_upgrade(settings: Settings, services: dict[str, t.Any], host: Host | None = None) -> dict[str, t.Any]:
    """services: name -> new tag (or a full image reference), a string."""
    if not services:
        raise BadRequest(
            "services is empty: give at least one service and its new tag, e.g. {backend: '2.0'}; nothing was changed"
        )
    host = host or Host(settings)
    _require_string_tags(services)
    missing = sorted(name for name, tag in services.items() if not tag or not tag.strip())
    if missing:
        raise BadRequest(
            "no tag given for %s: every service needs its new image tag; nothing was changed" % ", ".join(missing)
        )
    _require_compose_file(settings)
    current = _read_services(host)
    targets = {}
    for name, tag in services.items():
        if name not in current:
            raise BadRequest(
                "unknown service %s in project %s (its services: %s); nothing was changed"
                % (name, settings.project, ", ".join(sorted(current)))
            )
        try:
            targets[name] = target_image(current[name].image, tag.strip())
        except ValueError as exc:
            raise BadRequest("service %s: %s; nothing was changed" % (name, exc)) from exc
    return execute(settings, targets, "upgrade", host, services=current)


def _require_string_tags(services: dict[str, t.Any]) -> None:
    """An unquoted 2.10 in YAML is the float 2.1: another version would be deployed without a word."""
    for name, tag in sorted(services.items()):
        if tag is None or isinstance(tag, str):
            continue
        raise BadRequest(
            "the tag of service %s is the %s %r, not a string: YAML reads an unquoted tag such as 2.10 as a number "
            "(2.1); quote it, e.g. %s: '%s'; nothing was changed" % (name, type(tag).__name__, tag, name, tag)
        )


def rollback(settings: Settings, release_id: str | None = None, host: Host | None = None) -> dict[str, t.Any]:
    """Back to release_id, or to the newest previous succeeded release that is intact on this host."""
    host = host or Host(settings)
    journal = Journal(settings.journal_root, settings.project)
    release = choose_release(host.docker, journal, release_id)  # before the lock: a bad request changes nothing

    def rechoose() -> tuple[dict[str, str], str]:
        chosen = choose_release(host.docker, journal, release_id)
        return rollback_targets(host.docker, chosen), chosen.id

    result = execute(
        settings, rollback_targets(host.docker, release), "rollback", host, rollback_of=release.id, rechoose=rechoose
    )
    result.setdefault("rolled_back_to", release.id)
    return result


__all__ = ["execute", "rollback", "rolling_upgrade"]
