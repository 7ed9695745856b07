# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Before a rolling upgrade moves anything: what each service runs and would run.

Private to this collection: not a public API, it may change in any release.

``plan_service`` compares the service's running containers with the target image (by image id and digest). What a
killed run left behind is put in order by _upgrade/recover.py, from the phase of its record.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

from ansible_collections.opsbook.stack.plugins.module_utils._journal import ServiceImage
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.docker_facts import DockerFacts, digest_of
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.model import ComposeService, ServicePlan


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


__all__ = ["content_key", "plan_service"]
