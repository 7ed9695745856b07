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
    Journal,
    Release,
    ServiceImage,
    build_release,
    project_images,
)
from ansible_collections.opsbook.stack.plugins.module_utils._project_lock import ProjectLocked, project_lock
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.choose import choose_release, rollback_targets
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.compose_file import target_image
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.host import Host
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.model import (
    BadRequest,
    ComposeService,
    Run,
    ServicePlan,
    Settings,
    UpgradeError,
)
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.plan import content_key, plan_service, reconcile
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.rollout import STEP_ERRORS, Rollout


def _result(run: Run, plans: list[ServicePlan], **extra: t.Any) -> dict[str, t.Any]:
    out = {
        "plan": [p.to_dict() for p in plans],
        "steps": run.steps,
        "warnings": run.warnings,
        "timings": run.timings,
        "reconciled": run.reconciled,
    }
    if run.evidence:
        out["evidence"] = run.evidence
    out.update(extra)
    return out


class _Recorder:
    """The journal records of one run: the first one gets a new id, the later ones update it."""

    def __init__(self, host: Host, journal: Journal, kind: str, previous: Release | None):
        self.host = host
        self.journal = journal
        self.kind = kind
        self.previous = previous
        self.release_id: str | None = None
        self.started_wall = time.time()

    def record(
        self,
        status: str,
        detail: str,
        services: dict[str, ServiceImage] | None = None,
        extra: dict[str, t.Any] | None = None,
    ) -> Release:
        if services is None:
            services = project_images(self.host.client, self.host.s.project)
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
            extra=extra,
        )
        self.journal.record(release)
        self.release_id = release.id
        return release


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
                return _locked(host, journal, run, targets, kind, rollback_of, services)
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
) -> dict[str, t.Any]:
    """The run while the project's lock is held."""
    settings = host.s
    reconcile(host.docker, host.traffic, {n: services[n] for n in targets}, journal, run)
    if run.reconciled:
        services = host.compose.config()
    plans = [plan_service(host.docker, services[name], image, False) for name, image in targets.items()]
    previous = journal.latest("succeeded")
    previous_id = previous.id if previous else None
    todo = [p for p in plans if p.action != "none"]
    if not todo:
        current = project_images(host.client, settings.project)
        completed: dict[str, t.Any] | None = None
        if run.reconciled and (previous is None or content_key(previous.services) != content_key(current)):
            recorder = _Recorder(host, journal, kind, previous)
            completed = recorder.record("succeeded", "completed by reconciling an interrupted run", current).to_dict()
        return _result(
            run,
            plans,
            changed=bool(run.reconciled),
            release=completed or (previous.to_dict() if previous else None),
            previous_release=previous_id,
        )
    for plan in todo:
        if settings.pull == "always" or not plan.to_image_id:
            host.docker.pull(plan.to_image)
            run.step("%s: pulled %s" % (plan.service, plan.to_image))
            fresh = plan_service(host.docker, services[plan.service], plan.to_image, False)
            plan.to_image_id, plan.to_digest = fresh.to_image_id, fresh.to_digest
            plan.action = fresh.action if fresh.action != "none" else plan.action
    recorder = _Recorder(host, journal, kind, previous)
    intended = {p.service: ServiceImage(p.to_image, p.to_image_id, p.to_digest) for p in plans}
    extra = {"rollback_of": rollback_of} if rollback_of else {}
    recorder.record(
        "in_progress",
        "%s in progress (pid %d)" % (kind, os.getpid()),
        {**project_images(host.client, settings.project), **intended},
        extra,
    )
    rollout = Rollout(host, run)
    done: list[ServicePlan] = []
    try:
        for plan in todo:
            rollout.replace(plan)
            done.append(plan)
    except STEP_ERRORS as exc:
        message = str(exc)
        failed_service = next((p.service for p in todo if p not in done), "?")
        _move_back(rollout, run, done)
        release = recorder.record(
            "failed",
            "%s failed on %s: %s" % (kind, failed_service, message),
            {**project_images(host.client, settings.project), **intended},
            {**extra, "evidence": run.evidence, "steps": run.steps},
        )
        journal.prune(settings.keep)
        raise UpgradeError(
            "%s of %s failed on service %s and was undone; the previous release keeps serving. %s"
            % (kind, settings.project, failed_service, message),
            _result(
                run,
                plans,
                changed=True,
                release=release.to_dict(),
                previous_release=previous_id,
                failed_service=failed_service,
            ),
        ) from exc
    release = recorder.record(
        "succeeded",
        "%s of %s" % (kind, ", ".join("%s to %s" % (p.service, p.to_image) for p in todo)),
        extra={**extra, "timings": run.timings},
    )
    journal.prune(settings.keep)
    return _result(run, plans, changed=True, release=release.to_dict(), previous_release=previous_id)


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


def rolling_upgrade(settings: Settings, services: dict[str, str], host: Host | None = None) -> dict[str, t.Any]:
    """services: name -> new tag (or a full image reference)."""
    if not services:
        raise BadRequest(
            "services is empty: give at least one service and its new tag, e.g. {backend: '2.0'}; nothing was changed"
        )
    host = host or Host(settings)
    missing = sorted(name for name, tag in services.items() if not tag or not str(tag).strip())
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
            targets[name] = target_image(current[name].image, str(tag).strip())
        except ValueError as exc:
            raise BadRequest("service %s: %s; nothing was changed" % (name, exc)) from exc
    return execute(settings, targets, "upgrade", host, services=current)


def rollback(settings: Settings, release_id: str | None = None, host: Host | None = None) -> dict[str, t.Any]:
    """Back to release_id, or to the newest previous succeeded release that is intact on this host."""
    host = host or Host(settings)
    journal = Journal(settings.journal_root, settings.project)
    release = choose_release(host.docker, journal, release_id)
    result = execute(settings, rollback_targets(host.docker, release), "rollback", host, rollback_of=release.id)
    result["rolled_back_to"] = release.id
    return result


__all__ = ["execute", "rollback", "rolling_upgrade"]
