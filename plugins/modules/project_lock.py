#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

DOCUMENTATION = r"""
---
module: project_lock
short_description: Hold a Compose project's lock across several tasks of a play
version_added: 0.1.0
description:
  - Every writer of a project's C(compose.yaml), Nginx upstreams or release journal takes one lock,
    C(<journal_root>/<project>/.lock) (docs/contracts.md, "One lock per project"). A module that writes in one
    run (M(opsbook.stack.rolling_upgrade), M(opsbook.stack.rollback), M(opsbook.stack.release_record)) takes it
    itself. This module holds it across several tasks, for a role or a runbook step that writes in more than one.
  - O(state=held) waits up to O(lock_timeout) seconds for the lock, then fails naming the holder (operation, pid,
    since when). Once had, a small process detached from the module holds it until O(state=released) with the
    returned RV(token), or at the latest O(hold_max) seconds, so a killed play does not block the project forever.
  - Give the tasks inside the lock the RV(environment) this module returns (the task keyword C(environment)); the
    collection's modules that take the lock then see that their play holds it and go on instead of waiting for it.
author:
  - opsbook.stack maintainers (!UNKNOWN)
extends_documentation_fragment:
  - opsbook.stack.attributes
attributes:
  action_group:
    support: full
    membership: [opsbook.stack.stack]
  check_mode:
    support: full
    details: Neither takes nor releases the lock; RV(token) is empty.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: Holding or releasing a lock changes nothing the project runs, so the module always reports
      C(changed=false).
options:
  project:
    description: Compose project name (the C(com.docker.compose.project) label).
    type: str
    required: true
  state:
    description: C(held) takes the lock and keeps it; C(released) lets go of the lock that O(token) holds.
    type: str
    choices: [held, released]
    default: held
  operation:
    description: Who holds the lock, as the error of a writer that waits for it names the holder.
    type: str
    default: project_lock
  token:
    description: With O(state=released), the RV(token) that O(state=held) returned. A token that no longer holds
      the lock (its holder ended, or the lease ran out) releases nothing and does not fail.
    type: str
    default: ""
  journal_root:
    description: Directory of the release journals and of the project locks.
    type: path
    default: /var/lib/opsbook
  lock_timeout:
    description: Seconds to wait for another writer of the project to finish; C(0) fails at once.
    type: float
    default: 300
  hold_max:
    description: Seconds after which the lock is let go even when nobody released it (a killed play).
    type: float
    default: 3600
notes:
  - The holder process is the one named by the lock's error message; C(kill <pid>) on the host frees a lock whose
    play was killed before O(hold_max).
seealso:
  - module: opsbook.stack.rolling_upgrade
  - module: opsbook.stack.release_record
"""

EXAMPLES = r"""
- name: Hold the project lock for the deploy
  opsbook.stack.project_lock:
    project: demo
    operation: compose_app deploy
    lock_timeout: 600
  register: demo_lock

- name: Write and deploy under the lock
  environment: "{{ demo_lock.environment }}"
  block:
    - name: Record the release (takes the same lock; its play holds it, so it goes on)
      opsbook.stack.release_record:
        project: demo
        compose_file: /opt/demo/compose.yaml
  always:
    - name: Let go of the project lock
      opsbook.stack.project_lock:
        project: demo
        state: released
        token: "{{ demo_lock.token }}"
"""

RETURN = r"""
token:
  description: Identifies this hold; pass it to O(state=released). Empty in check mode and after a release.
  returned: always
  type: str
environment:
  description: The task environment of the tasks inside the lock (C(OPSBOOK_PROJECT_LOCK_TOKEN)).
  returned: always
  type: dict
holder:
  description: The holder record (operation, pid, since, hold_until) of the lock this module took.
  returned: when state=held
  type: dict
waited_s:
  description: Seconds spent waiting for another writer.
  returned: when state=held
  type: float
released:
  description: Whether O(state=released) let go of a lock the token held.
  returned: when state=released
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.opsbook.stack.plugins.module_utils._project_lock import (
    DEFAULT_ROOT,
    TOKEN_ENV,
    ProjectLocked,
    hold_detached,
    release_detached,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            project=dict(type="str", required=True),
            state=dict(type="str", choices=["held", "released"], default="held"),
            operation=dict(type="str", default="project_lock"),
            token=dict(type="str", default="", no_log=False),
            journal_root=dict(type="path", default=DEFAULT_ROOT),
            lock_timeout=dict(type="float", default=300.0),
            hold_max=dict(type="float", default=3600.0),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        if p["state"] == "released":
            released = False if module.check_mode else release_detached(p["project"], p["token"], p["journal_root"])
            module.exit_json(changed=False, released=released, token="", environment={TOKEN_ENV: ""})
        if module.check_mode:
            module.exit_json(changed=False, token="", environment={TOKEN_ENV: ""}, holder={}, waited_s=0.0)
        token, holder, waited = hold_detached(
            p["project"], p["operation"], p["journal_root"], max(p["lock_timeout"], 0.0), max(p["hold_max"], 1.0)
        )
    except ProjectLocked as exc:
        module.fail_json(msg=str(exc), holder=exc.holder)
    except (OSError, ValueError) as exc:
        module.fail_json(msg="cannot lock project %s: %s" % (p["project"], exc))
    module.exit_json(changed=False, token=token, environment={TOKEN_ENV: token}, holder=holder, waited_s=waited)


if __name__ == "__main__":
    main()
