# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""A run killed in the middle, put in order by the next one from the phase its release record names.

Private to this collection: not a public API, it may change in any release.

The record of a run says which service was moving, its containers of before, and the phase it had reached
(module_utils/_journal.py, docs/state-machine.md). The next run, under the same project lock, goes on from there
and never skips a check:

- ``planned``: nothing moved; the record ends ``interrupted``.
- ``starting``, ``gated``: the new containers never took traffic: removed, compose.yaml back (the undo of a
  failure before the switch). A stateful service recreated stop-first is checked again instead (every container
  healthy and stable on the new image) and kept when it passes, else recreated from the previous image.
- ``switched``, ``baking``: the new containers took traffic unbaked. The upstream goes back to the old
  containers and the new ones are drained and removed; when no old container runs any more, or the run was a
  rollback (the old containers are the release it left), the new ones are baked again (the full bake) and kept
  only when it passes.
- ``draining``: the bake had passed: the old containers are drained and removed (an old one the killed run had
  stopped but not removed too), the upgrade is complete.

Only a record in a working phase triggers any of this. Without one, replicas beyond the service's count are
reported, never removed (they may be someone's deliberate scale-out).
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import time
import typing as t

from ansible_collections.opsbook.stack.plugins.module_utils._journal import (
    Journal,
    JournalError,
    Release,
    iso_utc,
    project_images,
)
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.host import Host
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.model import (
    ComposeService,
    Container,
    Run,
    ServicePlan,
    UndoIncomplete,
    UpgradeError,
)
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.rollout import STEP_ERRORS, Rollout, servers_of


def progress_of(plan: ServicePlan, phase: str, old: list[Container], new: list[Container]) -> dict[str, t.Any]:
    """What a record keeps of the service that moves: enough for the next run to undo or finish it."""
    return {
        "service": plan.service,
        "phase": phase,
        "role": plan.role,
        "port": plan.port,
        "replicas": plan.replicas,
        "from_image": plan.from_image,
        "to_image": plan.to_image,
        "to_image_id": plan.to_image_id,
        "old": [c.id for c in old],
        "new": [c.id for c in new],
    }


def _plan_from(progress: dict[str, t.Any], svc: ComposeService) -> ServicePlan:
    return ServicePlan(
        service=svc.name,
        role=str(progress.get("role") or svc.role),
        action="rolling",
        replicas=int(progress.get("replicas") or svc.replicas),
        from_image=str(progress.get("from_image") or svc.image),
        from_image_ids=[],
        from_digest="",
        to_image=str(progress.get("to_image") or svc.image),
        to_image_id=str(progress.get("to_image_id") or ""),
        to_digest="",
        port=svc.port,
    )


def _split(
    host: Host, plan: ServicePlan, progress: dict[str, t.Any], record: Release
) -> tuple[list[Container], list[Container], list[Container]]:
    """(old containers still running, every container that is not old, old ones the killed run had stopped but
    not removed). Without recorded ids (a record of before phases), the containers created before the run are the
    old ones."""
    containers = host.docker.containers(plan.service, plan.port)
    if "old" in progress:
        old_ids = set(progress.get("old") or [])
    else:
        old_ids = {c.id for c in containers if c.created < record.created_ts}
    old = [c for c in containers if c.id in old_ids and c.state == "running"]
    new = [c for c in containers if c.id not in old_ids]
    stopped = [c for c in containers if c.id in old_ids and c.state != "running"]
    return old, new, stopped


def _recover_stateful(rollout: Rollout, host: Host, plan: ServicePlan) -> tuple[bool, list[str], str]:
    containers = host.docker.containers(plan.service)
    on_target = bool(containers) and all(c.image_id == plan.to_image_id for c in containers)
    if on_target:
        try:
            rollout.check_recreated(plan.service)
            return True, [], "the recreated containers passed the health check again and stay on %s" % plan.to_image
        except STEP_ERRORS as exc:
            reason = "the recreated containers failed the health check again (%s)" % exc
    elif containers and all(c.state == "running" for c in containers):
        # Killed before `compose up` replaced them: the previous containers still run, untouched.
        undone = rollout.undo(plan, [], [], False)
        return False, undone, "the recreate had not started: compose.yaml back to %s" % plan.from_image
    else:
        reason = "the recreate had not finished"
    failures: list[str] = []
    try:
        host.compose_file.set_image(plan.service, plan.from_image)
    except STEP_ERRORS as exc:
        failures.append("putting compose.yaml back failed: %s" % exc)
    failures += rollout.recreate_back(plan, host.compose_file.read())
    return False, failures, "%s: recreated from %s" % (reason, plan.from_image)


def _rebake(rollout: Rollout, host: Host, plan: ServicePlan, new: list[Container]) -> tuple[bool, str]:
    """The new containers take the traffic again and go through the whole bake: (passed, reason)."""
    rollout.traffic.switch(plan.service, servers_of(new))
    verdict = rollout.bake(plan.service, new, host.s.bake_s, host.access_log.offset())
    rollout.run.evidence.setdefault("bake", {})[plan.service] = verdict.to_dict()
    return verdict.ok, verdict.reason


def _recover_rolling(
    rollout: Rollout,
    host: Host,
    plan: ServicePlan,
    phase: str,
    old: list[Container],
    new: list[Container],
    prefer_rebake: bool,
) -> tuple[bool, list[str], str]:
    """(the service stays moved, undo failures, what was done). prefer_rebake: a rollback killed in its bake
    bakes the release it returns to again rather than putting the one it left back in front of users."""
    running_new = [c for c in new if c.state == "running"]
    if phase == "draining":
        if plan.port is not None and running_new:
            # While the run lay killed, the project's lock was free: the routing watcher may have listed the old
            # containers again beside the new ones (all of them healthy). Only the new ones from here on, then
            # the drain, then the stop: no request is sent to a container being stopped.
            rollout.traffic.switch(plan.service, servers_of(running_new))
        rollout.finish(plan, old, running_new)
        return True, [], "the bake had passed: drained and removed the old containers"
    switched = phase in ("switched", "baking")
    if switched and plan.port is not None and running_new and (prefer_rebake or not old):
        passed, reason = _rebake(rollout, host, plan, running_new)
        if passed:
            rollout.finish(plan, old, running_new)
            return True, [], "the new containers were baked again (passed) and kept; old ones drained and removed"
        if not old:
            raise UpgradeError(
                "the run was killed in its bake, no old container of %s runs any more, and the new ones failed "
                "the bake again: %s" % (plan.service, reason)
            )
        failures = rollout.undo(plan, old, new, True)
        return False, failures, "the new containers failed the bake again (%s): switched back to the old ones" % reason
    if switched and not old and plan.port is not None:
        raise UpgradeError(
            "the run was killed in its bake and neither the old nor the new containers of %s run; "
            "deploy the previous release (compose_app) and check the host" % plan.service
        )
    failures = rollout.undo(plan, old, new, switched)
    what = "switched back to the old containers, " if switched else ""
    return False, failures, "%sremoved the new containers, compose.yaml back to %s" % (what, plan.from_image)


def _settle(journal: Journal, host: Host, run: Run, record: Release, moved: bool, outcome: str) -> Release | None:
    """The record's last state: complete when its last service stayed moved (its bake had passed), else
    interrupted. Returns the record when it is now a succeeded release."""
    progress = record.extra.get("progress") or {}
    remaining = [s for s in progress.get("todo") or [] if s not in (progress.get("moved") or [])]
    last = moved and remaining in ([], [progress.get("service")])
    when = iso_utc(time.time())
    if last:
        record.status, record.phase = "succeeded", "done"
        record.services = project_images(host.client, host.s.project)
        record.detail = "completed by the next run (%s) after a stop in phase %s: %s" % (
            when,
            progress.get("phase"),
            outcome,
        )
        journal.record(record)
        if record.kind == "rollback":
            back_from = [r for r in journal.releases() if r.id in (record.extra.get("rolls_back_from") or [])]
            journal.mark_rolled_back(back_from, record.id)
        return record
    stayed = list(progress.get("moved") or []) + ([str(progress.get("service"))] if moved else [])
    record.status, record.phase = "failed", "interrupted"
    record.detail = "interrupted in phase %s%s; the next run (%s) %s%s" % (
        progress.get("phase") or "unknown",
        " of %s" % progress["service"] if progress.get("service") else "",
        when,
        outcome,
        "; moved and baked before the stop, left so: %s" % ", ".join(stayed) if stayed else "",
    )
    journal.record(record)
    return None


def _legacy_progress(
    host: Host, journal: Journal, services: dict[str, ComposeService], record: Release
) -> dict[str, t.Any]:
    """A record of before phases names no service: the one with more running containers than its count moved,
    from the image of the release before (``previous``)."""
    try:
        before = journal.get(record.previous).services if record.previous else {}
    except JournalError:
        before = {}
    for name, svc in services.items():
        running = [c for c in host.docker.containers(name, svc.port) if c.state == "running"]
        if svc.role != "stateful" and len(running) > svc.replicas and name in record.services:
            from_image = before[name].image if name in before else svc.image
            to = record.services[name]
            return {"service": name, "from_image": from_image, "to_image": to.image, "to_image_id": to.image_id}
    return {}


def _recover_one(
    host: Host, journal: Journal, run: Run, services: dict[str, ComposeService], record: Release
) -> Release | None:
    progress = record.extra.get("progress") or {}
    if not progress and not record.phase:
        progress = _legacy_progress(host, journal, services, record)
        record.extra["progress"] = {**progress, "phase": "unknown"}
    service = progress.get("service")
    phase = record.phase or "switched"  # a record of before phases: assume the worst, traffic on unbaked ones
    if phase == "planned" or service not in services:
        run.reconciled.append("journal: %s stopped in phase %s before anything moved" % (record.id, phase))
        return _settle(journal, host, run, record, False, "found nothing moved")
    plan = _plan_from(progress, services[service])
    rollout = Rollout(host, run)
    if plan.role == "stateful":
        moved, failures, outcome = _recover_stateful(rollout, host, plan)
    else:
        old, new, stopped = _split(host, plan, progress, record)
        moved, failures, outcome = _recover_rolling(rollout, host, plan, phase, old, new, record.kind == "rollback")
        if moved and stopped:
            # Killed between stopping an old container and removing it: nothing routes to it, and left behind it
            # would count as a replica for the next `docker compose up --scale`.
            for container in stopped:
                host.docker.stop_and_remove(container)
            outcome += "; removed %s, which the killed run had stopped" % ", ".join(c.name for c in stopped)
    run.reconciled.append("%s: %s (%s stopped in phase %s)" % (service, outcome, record.id, phase))
    if failures:
        raise UndoIncomplete(
            "putting %s in order after the run %s stopped in phase %s failed: %s"
            % (service, record.id, phase, "; ".join(failures)),
            failures,
            {"undo_failures": failures},
        )
    return _settle(journal, host, run, record, moved, outcome)


def report_surplus(host: Host, services: dict[str, ComposeService], run: Run) -> None:
    """No run was interrupted: replicas beyond the count are someone's, reported and left alone."""
    for svc in services.values():
        running = [c for c in host.docker.containers(svc.name, svc.port) if c.state == "running"]
        if svc.role != "stateful" and len(running) > svc.replicas:
            run.warnings.append(
                "%s runs %d containers, compose.yaml says %d, and no interrupted run is recorded: nothing was "
                "removed (if the scale-out is not wanted: docker compose up -d --scale %s=%d %s)"
                % (svc.name, len(running), svc.replicas, svc.name, svc.replicas, svc.name)
            )


def recover(host: Host, journal: Journal, run: Run, services: dict[str, ComposeService]) -> Release | None:
    """Put in order what every unsettled record left; the record it completed as succeeded, if any."""
    unsettled = journal.unsettled()
    if not unsettled:
        report_surplus(host, services, run)
        return None
    completed = None
    for record in unsettled:
        completed = _recover_one(host, journal, run, services, record) or completed
    run.step("put in order what an interrupted run left: %s" % "; ".join(run.reconciled))
    return completed


__all__ = ["progress_of", "recover", "report_surplus"]
