#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

DOCUMENTATION = r"""
---
module: release_info
short_description: List the release journal of a Compose project
version_added: 0.1.0
description:
  - Reads the project's release journal under O(journal_root) and returns its records, oldest first, the newest
    succeeded release, and the files that could not be read.
  - With O(check_images), asks the Docker Engine whether every image of each release is still on the host
    (C(intact), what M(opsbook.stack.rollback) needs), which release runs now (RV(current)) and where a rollback
    without a named release would go (RV(rollback_candidates)), by the same rule as M(opsbook.stack.rollback).
  - A record file that is not a release record (bad JSON, or JSON of another shape) is skipped with a warning
    and listed in RV(broken).
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
    description: Compose project name.
    type: str
    required: true
  journal_root:
    description: Directory that holds one journal per project.
    type: path
    default: /var/lib/opsbook
  check_images:
    description: Add C(intact) to every record and return RV(current); needs the Docker Engine on the host.
    type: bool
    default: true
"""

EXAMPLES = r"""
- name: Show the releases of agentchat
  opsbook.stack.release_info:
    project: agentchat
  register: journal

- name: Print the newest succeeded release
  ansible.builtin.debug:
    msg: "{{ journal.latest.id }} runs {{ journal.latest.services | dict2items | map(attribute='value.image') | list }}"
"""

RETURN = r"""
releases:
  description: Every readable record, oldest first; with O(check_images) each has C(intact) (true, false, or null
    when Docker could not be asked).
  returned: always
  type: list
  elements: dict
current:
  description: Id of the newest succeeded release whose images are what the project's containers run now, or null.
  returned: always
  type: str
current_content:
  description:
    - What RV(current) runs, by image id (V(service=sha256:...), sorted by service), the key RV(rollback_candidates)
      use; null when RV(current) is.
    - playbooks/rollback.yml matches hosts on it, so a host that already runs the common target stays where it is.
  returned: always
  type: str
latest:
  description: The newest succeeded release, or null.
  returned: always
  type: dict
rollback_candidates:
  description:
    - Where M(opsbook.stack.rollback) without O(opsbook.stack.rollback#module:release) goes, best first; succeeded
      releases that were never rolled back from, are not what runs now and are intact, one per content (C(id),
      C(content), the image ids by service).
    - Right after a rollback, only the release that runs (a second rollback changes nothing).
    - Empty without O(check_images) or when Docker could not be asked.
  returned: always
  type: list
  elements: dict
broken:
  description: Record files that could not be parsed.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.opsbook.stack.plugins.module_utils._argspec import docker_argument_spec
from ansible_collections.opsbook.stack.plugins.module_utils._docker import DockerClient, DockerError
from ansible_collections.opsbook.stack.plugins.module_utils._journal import (
    DEFAULT_ROOT,
    Journal,
    Release,
    content_of,
    current_release,
    image_present,
    intact,
    project_images,
    rollback_candidates,
)


def check_images(
    client: DockerClient, project: str, records: list[Release], out: list[dict]
) -> tuple[Release | None, list[dict]]:
    """Add `intact` to every record; return the newest succeeded release that runs now, and the rollback
    candidates."""
    present = image_present(client)
    running = project_images(client, project)
    for index, record in enumerate(records):
        out[index]["intact"] = intact(record, present)
    current = current_release(records, running)
    candidates = [{"id": r.id, "content": content_of(r)} for r in rollback_candidates(records, running, present)]
    return current, candidates


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            project=dict(type="str", required=True),
            journal_root=dict(type="path", default=DEFAULT_ROOT),
            check_images=dict(type="bool", default=True),
            **docker_argument_spec(),
        ),
        supports_check_mode=True,
    )
    journal = Journal(module.params["journal_root"], module.params["project"])
    latest = journal.latest("succeeded")
    records = journal.releases()
    out = [r.to_dict() for r in records]
    for warning in journal.skipped:
        module.warn(warning)
    current: Release | None = None
    candidates: list[dict] = []
    if module.params["check_images"] and records:
        try:
            current, candidates = check_images(
                DockerClient(module.params["docker_host"]), module.params["project"], records, out
            )
        except DockerError:
            for data in out:
                data["intact"] = None
    module.exit_json(
        changed=False,
        releases=out,
        latest=latest.to_dict() if latest else None,
        current=current.id if current else None,
        current_content=content_of(current) if current else None,
        rollback_candidates=candidates,
        broken=journal.broken(),
    )


if __name__ == "__main__":
    main()
