#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

DOCUMENTATION = r"""
---
module: release_record
short_description: Record the running release of a Compose project in the release journal
version_added: 0.1.0
description:
  - Reads which image every service of a running Compose project runs, from Docker's state, resolves each to its
    registry digest and image id, hashes the rendered compose file, and writes one JSON record to the project's
    release journal under O(journal_root) atomically (temporary file, fsync, rename).
  - A succeeded record whose compose file and images equal the newest succeeded record is not written again, so
    a re-run of an unchanged deploy reports no change.
  - Keeps the newest O(keep) records (at least 5) and never drops the newest succeeded one.
  - Writes under the project's lock, the one upgrades, rollbacks and restores take (docs/contracts.md, "One lock
    per project"); waits up to O(lock_timeout) seconds for it and then fails naming the holder, having written
    nothing. Inside a lock that M(opsbook.stack.project_lock) holds for the play, it goes on at once.
author:
  - opsbook.stack maintainers (!UNKNOWN)
extends_documentation_fragment:
  - opsbook.stack.attributes
  - opsbook.stack.docker
attributes:
  action_group:
    support: full
    membership: [opsbook.stack.stack]
  check_mode:
    support: full
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  project:
    description: Compose project name (the C(com.docker.compose.project) label).
    type: str
    required: true
  compose_file:
    description:
      - The project's compose file (C(<project_dir>/compose.yaml)) whose sha256 goes into the record.
      - In an adopted project (the C(COMPOSE_FILE) of the project's C(.env) names the operator's files before it),
        the record hashes every file of the project in C(-f) order, so a change to the operator's file makes a new
        release too.
    type: path
    required: true
  journal_root:
    description: Directory that holds one journal per project.
    type: path
    default: /var/lib/opsbook
  kind:
    description: What produced this release.
    type: str
    choices: [deploy, upgrade, rollback]
    default: deploy
  status:
    description: Outcome to record.
    type: str
    choices: [succeeded, failed, rolled_back, in_progress]
    default: succeeded
  started:
    description: Unix time the operation started; the record gets its duration from it.
    type: float
  detail:
    description: Free text stored with the record, for example why a deploy failed.
    type: str
    default: ""
  keep:
    description: Number of records kept; values under 5 count as 5.
    type: int
    default: 10
  lock_timeout:
    description: Seconds to wait for another writer of the project (an upgrade, a rollback, a restore) to
      finish; C(0) fails at once.
    type: float
    default: 60
seealso:
  - module: opsbook.stack.project_lock
"""

EXAMPLES = r"""
- name: Record the release after a deploy
  opsbook.stack.release_record:
    project: agentchat
    compose_file: /opt/agentchat/compose.yaml
    started: "{{ deploy_started }}"
  register: release

# Run again with nothing changed: changed=false, release.id is the same record.
"""

RETURN = r"""
release:
  description: The record written, or the existing record when nothing changed.
  returned: success
  type: dict
  sample:
    id: 20261122T101500Z-3f9c2b1a
    project: agentchat
    kind: deploy
    status: succeeded
    compose_hash: 3f9c2b1a...
    services:
      backend:
        image: registry:5000/demo-backend:1.0
        digest: registry:5000/demo-backend@sha256:...
        image_id: sha256:...
path:
  description: Path of the record file.
  returned: success
  type: str
pruned:
  description: Ids of the records removed by retention.
  returned: success
  type: list
  elements: str
"""

import os
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.opsbook.stack.plugins.module_utils._argspec import docker_argument_spec
from ansible_collections.opsbook.stack.plugins.module_utils._docker import DockerClient, DockerError
from ansible_collections.opsbook.stack.plugins.module_utils._journal import (
    DEFAULT_ROOT,
    KINDS,
    STATUSES,
    Journal,
    JournalError,
    build_release,
    project_images,
)
from ansible_collections.opsbook.stack.plugins.module_utils._project_lock import ProjectLocked, project_lock


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            project=dict(type="str", required=True),
            compose_file=dict(type="path", required=True),
            journal_root=dict(type="path", default=DEFAULT_ROOT),
            kind=dict(type="str", choices=list(KINDS), default="deploy"),
            status=dict(type="str", choices=list(STATUSES), default="succeeded"),
            started=dict(type="float"),
            detail=dict(type="str", default=""),
            keep=dict(type="int", default=10),
            lock_timeout=dict(type="float", default=60.0),
            **docker_argument_spec(),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if not os.path.isfile(p["compose_file"]):
        module.fail_json(
            msg="compose_file %s does not exist; deploy the project before recording it" % p["compose_file"]
        )
    try:
        services = project_images(DockerClient(p["docker_host"]), p["project"])
    except DockerError as exc:
        module.fail_json(msg="cannot read the containers of project %s: %s" % (p["project"], exc))
    if not services and p["status"] == "succeeded":
        module.fail_json(msg="project %s has no running containers; nothing to record as succeeded" % p["project"])

    journal = Journal(p["journal_root"], p["project"])
    if module.check_mode:
        module.exit_json(**record_release(module, journal, services))
    try:
        with project_lock(p["project"], "release_record", p["journal_root"], max(p["lock_timeout"], 0.0)):
            result = record_release(module, journal, services)
    except ProjectLocked as exc:
        module.fail_json(msg=str(exc), holder=exc.holder)
    except (JournalError, OSError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


def record_release(module: AnsibleModule, journal: Journal, services: dict) -> dict:
    """Build the record and, outside check mode, write it and prune; the result of the module."""
    p = module.params
    now = time.time()
    previous = journal.latest("succeeded")
    release = build_release(
        journal,
        p["kind"],
        p["status"],
        p["compose_file"],
        services,
        now,
        previous=previous,
        detail=p["detail"],
        duration_s=round(now - p["started"], 3) if p["started"] else None,
    )
    if p["status"] == "succeeded" and previous is not None and previous.same_content(release):
        path = os.path.join(journal.path, previous.id + ".json")
        return dict(changed=False, release=previous.to_dict(), path=path, pruned=[])
    if module.check_mode:
        path = os.path.join(journal.path, release.id + ".json")
        return dict(changed=True, release=release.to_dict(), path=path, pruned=[])
    path = journal.record(release)
    pruned = journal.prune(p["keep"])
    return dict(changed=True, release=release.to_dict(), path=path, pruned=pruned)


if __name__ == "__main__":
    main()
