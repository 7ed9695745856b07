# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Before a rolling upgrade moves anything: what each service runs and would run, and the leftovers of a killed run.

Private to this collection: not a public API, it may change in any release.

``plan_service`` compares the service's running containers with the target image (by image id and digest);
``reconcile`` puts in order what a killed run left behind: an ``in_progress`` record, stopped containers, and
replicas beyond the service's count (the upstream tells which generation served).
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import time

from ansible_collections.opsbook.stack.plugins.module_utils._journal import Journal, ServiceImage, iso_utc
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.docker_facts import DockerFacts, digest_of
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.model import ComposeService, Run, ServicePlan
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.traffic import Traffic
from ansible_collections.opsbook.stack.plugins.module_utils._upstream import Server

LIVE_STATES = ("running", "restarting", "paused")


def content_key(services: dict[str, ServiceImage]) -> str:
    return ",".join("%s=%s" % (n, s.digest or s.image_id or s.image) for n, s in sorted(services.items()))


def plan_service(docker: DockerFacts, svc: ComposeService, to_image: str, resolve_remote: bool) -> ServicePlan:
    """What moving svc to to_image means; resolve_remote asks the registry for a digest not pulled yet."""
    running = [c for c in docker.containers(svc.name, svc.port) if c.state == "running"]
    from_ids = sorted({c.image_id for c in running})
    from_image_info = docker.image(from_ids[0]) if from_ids else docker.image(svc.image)
    target = docker.image(to_image)
    to_id = (target or {}).get("Id", "")
    to_digest = digest_of(target, to_image) or (docker.registry_digest(to_image) if resolve_remote else "")
    up_to_date = (
        svc.image == to_image and bool(running) and to_id != "" and from_ids == [to_id] and len(running) == svc.replicas
    )
    action = "none" if up_to_date else ("recreate" if svc.role == "stateful" else "rolling")
    return ServicePlan(
        service=svc.name,
        role=svc.role,
        action=action,
        replicas=svc.replicas,
        from_image=svc.image,
        from_image_ids=from_ids,
        from_digest=digest_of(from_image_info, svc.image),
        to_image=to_image,
        to_image_id=to_id,
        to_digest=to_digest,
        port=svc.port,
    )


def _interrupted_records(journal: Journal, run: Run) -> None:
    for release in journal.releases():
        if release.status == "in_progress":
            release.status = "failed"
            release.detail = (
                "interrupted: the %s was stopped before it finished; the next run (%s) put the "
                "containers and the upstream in order" % (release.kind, iso_utc(time.time()))
            )
            journal.record(release)
            run.reconciled.append("journal: %s marked failed (interrupted)" % release.id)


def _leftover_service(docker: DockerFacts, traffic: Traffic, svc: ComposeService, run: Run) -> None:
    containers = docker.containers(svc.name, svc.port)
    for container in containers:
        if container.state not in LIVE_STATES:
            docker.stop_and_remove(container, grace_s=1)
            run.reconciled.append(
                "%s: removed leftover container %s (%s)" % (svc.name, container.name, container.state)
            )
    running = [c for c in containers if c.state == "running"]
    if svc.role == "stateful" or len(running) <= svc.replicas:
        return
    serving = set(traffic.serving(svc.name)) if svc.port is not None else set()
    in_upstream = [c for c in running if c.address in serving]
    if svc.port is None or not in_upstream:
        # No upstream to tell who serves: keep the oldest replicas (the ones that served before the run).
        keep = running[: svc.replicas]
    elif len(in_upstream) > svc.replicas:
        # Killed during a canary: both generations take traffic. Go back to the old ones first.
        keep = running[: svc.replicas]
        traffic.switch(svc.name, [Server(address=c.address, comment=c.name) for c in keep])
        run.reconciled.append(
            "%s: upstream put back to %s (an interrupted canary)" % (svc.name, ", ".join(c.name for c in keep))
        )
    else:
        keep = in_upstream
    for container in running:
        if container not in keep:
            docker.stop_and_remove(container)
            run.reconciled.append(
                "%s: removed %s, which the upstream did not list (left by an interrupted run)"
                % (svc.name, container.name)
            )
    if svc.port is not None:
        traffic.sync_from_docker(svc.name, svc.port)


def reconcile(
    docker: DockerFacts, traffic: Traffic, services: dict[str, ComposeService], journal: Journal, run: Run
) -> None:
    """Put the leftovers of a killed run in order: interrupted journal records, containers no upstream lists."""
    _interrupted_records(journal, run)
    for svc in services.values():
        _leftover_service(docker, traffic, svc, run)
    if run.reconciled:
        run.step("reconciled the leftovers of an interrupted run: %s" % "; ".join(run.reconciled))


__all__ = ["content_key", "plan_service", "reconcile"]
