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
  description: Every readable record, oldest first.
  returned: always
  type: list
  elements: dict
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
from ansible_collections.opsbook.stack.plugins.module_utils.journal import Journal


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            project=dict(type="str", required=True),
            journal_root=dict(type="path", default="/var/lib/opsbook"),
        ),
        supports_check_mode=True,
    )
    journal = Journal(module.params["journal_root"], module.params["project"])
    latest = journal.latest("succeeded")
    module.exit_json(
        changed=False,
        releases=[r.to_dict() for r in journal.releases()],
        latest=latest.to_dict() if latest else None,
        broken=journal.broken(),
    )


if __name__ == "__main__":
    main()
