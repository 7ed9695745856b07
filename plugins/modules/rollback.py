#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

DOCUMENTATION = r"""
---
module: rollback
short_description: Return a Compose project to an earlier release from its journal, with zero failed requests
version_added: 0.1.0
description:
  - Picks the release O(release) from the project's journal or, by default, the newest previous release that
    succeeded, was never rolled back from, is not what runs now and is intact on this host (every image it ran
    is still present), and moves every service whose
    image differs back to that release's image with the same start-first mechanics as
    M(opsbook.stack.rolling_upgrade) (new containers beside the old, gate, upstream switch, bake, drain).
  - The image is referred to by its tag when the tag still points to the release's image, else by digest.
  - By default the gate does not wait for the Docker healthcheck's first pass (O(wait_docker_health)); the
    release already proved healthy on this host, and HTTP readiness plus the synthetic requests through Nginx
    still gate it, so the old version serves again within seconds. An C(unhealthy) container still aborts.
  - Records a C(rollback) release in the journal (with C(extra.rollback_of)), or C(failed) with the evidence.
    When it succeeds, the release it returned from becomes C(rolled_back) and is never a target again.
  - Right after a rollback, a second one without O(release) changes nothing (V(changed=false)) and does not go
    further back. Name the release to go further.
  - Takes the project's lock, like upgrades and restores.
author:
  - opsbook.stack maintainers (!UNKNOWN)
extends_documentation_fragment:
  - opsbook.stack.attributes
  - opsbook.stack.docker
  - opsbook.stack.upgrade
attributes:
  action_group:
    support: full
    membership: [opsbook.stack.stack]
  check_mode:
    support: full
    details: Returns the chosen release and the plan without changing anything.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: Rolling back to the release that already runs changes nothing (V(changed=false)), and so does a
      second rollback without O(release) right after one.
options:
  release:
    description:
      - Id of the release to return to (see M(opsbook.stack.release_info)).
      - By default the newest previous succeeded release that was never rolled back from and is intact on this
        host; right after a rollback, the release that runs (nothing changes).
      - An unknown id fails and changes nothing.
    type: str
  wait_docker_health:
    description: Wait for the Docker healthcheck to pass before the switch, as an upgrade does.
    type: bool
    default: false
seealso:
  - module: opsbook.stack.rolling_upgrade
  - module: opsbook.stack.release_info
"""

EXAMPLES = r"""
- name: Back to the previous release
  opsbook.stack.rollback:
    project: demo
  register: back

- name: Back to a named release
  opsbook.stack.rollback:
    project: demo
    release: 20261122T101500Z-3f9c2b1a
"""

RETURN = r"""
rolled_back_to:
  description: Id of the release returned to.
  returned: success
  type: str
plan:
  description: One entry per service of the release, with the action and the images and digests.
  returned: always
  type: list
  elements: dict
release:
  description: The journal record of this rollback.
  returned: always
  type: dict
steps:
  description: What was done, with the seconds since the start.
  returned: always
  type: list
  elements: str
timings:
  description: Seconds since the start at each milestone; C(<service>_switched) is when the old version served again.
  returned: always
  type: dict
evidence:
  description: On failure, the health log, log tail, failing probe and bake figures.
  returned: when something failed or a bake ran
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.opsbook.stack.plugins.module_utils._upgrade import argument_spec, run_module


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(release=dict(type="str"), wait_docker_health=dict(type="bool", default=False)),
        supports_check_mode=True,
    )
    run_module(module, "rollback")


if __name__ == "__main__":
    main()
