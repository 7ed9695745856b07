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
    (C(intact), what M(opsbook.stack.rollback) needs) and which release runs now (RV(current)).
author:
  - opsbook.stack maintainers (!UNKNOWN)
extends_documentation_fragment:
  - opsbook.stack.attributes
attributes:
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
  docker_host:
    description: Docker Engine API endpoint.
    type: str
    default: unix:///var/run/docker.sock
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
latest:
  description: The newest succeeded release, or null.
  returned: always
  type: dict
broken:
  description: Record files that could not be parsed.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.opsbook.stack.plugins.module_utils._docker import DockerClient, DockerError, DockerNotFound
from ansible_collections.opsbook.stack.plugins.module_utils._journal import Journal, project_images


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            project=dict(type="str", required=True),
            journal_root=dict(type="path", default="/var/lib/opsbook"),
            check_images=dict(type="bool", default=True),
            docker_host=dict(type="str", default="unix:///var/run/docker.sock"),
        ),
        supports_check_mode=True,
    )
    journal = Journal(module.params["journal_root"], module.params["project"])
    latest = journal.latest("succeeded")
    records = journal.releases()
    out = [r.to_dict() for r in records]
    current = None
    if module.params["check_images"] and records:
        client = DockerClient(module.params["docker_host"])
        present: dict = {}

        def has(image_id: str):
            if image_id not in present:
                try:
                    client.request_json("GET", "/images/%s/json" % image_id)
                    present[image_id] = True
                except DockerNotFound:
                    present[image_id] = False
            return present[image_id]

        try:
            running = project_images(client, module.params["project"])
            for record, data in zip(records, out):
                images = [img.image_id for img in record.services.values()]
                data["intact"] = bool(images) and all(image_id and has(image_id) for image_id in images)
            for record in reversed(records):
                if (
                    record.status == "succeeded"
                    and record.services
                    and all(
                        running.get(n) and running[n].image_id == img.image_id for n, img in record.services.items()
                    )
                ):
                    current = record.id
                    break
        except DockerError:
            for data in out:
                data["intact"] = None
    module.exit_json(
        changed=False,
        releases=out,
        latest=latest.to_dict() if latest else None,
        current=current,
        broken=journal.broken(),
    )


if __name__ == "__main__":
    main()
