#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

DOCUMENTATION = r"""
---
module: rolling_upgrade
short_description: Move services of a Compose project to new image tags with zero failed requests
version_added: 0.1.0
description:
  - For each service in O(services) whose containers do not already run the new image, sets the service's
    C(image) in the project's C(compose.yaml) (checked with C(docker compose config) first) and runs
    C(docker compose up -d --no-deps --no-recreate --scale SERVICE=2N SERVICE), so Compose creates N new
    containers from the new image beside the N old ones.
  - "Gates the new containers in three layers: Docker health (watched continuously, honouring the
    healthcheck's start_period; C(unhealthy), an exit or a restart aborts at once), HTTP readiness on each new
    container's published port (O(readiness_path)), and O(gate_requests) synthetic requests through Nginx to the
    new containers only (a loopback server on O(gate_port), present only during the gate)."
  - Optionally gives the new containers O(canary_weight) percent of the traffic for O(canary_s) seconds, then
    switches the service's Nginx upstream to the new containers with the shared upstream function
    (C(plugins/module_utils/_upstream.py)), and bakes for O(bake_s) seconds, judging the 5xx ratio and the p95
    upstream latency of the new containers from the Nginx access log and from probes through the site.
  - Drains the old containers (no established connection left, or O(drain_timeout) seconds), stops them with
    their own stop grace period and removes them.
  - Failure before the switch removes only the new containers and puts C(compose.yaml) back; failure in the
    canary or the bake switches the upstream back first. The task then fails with the evidence (Docker health
    log, log tail, the failing probe or requests) and the journal records the release as C(failed).
  - Stateful services (label C(io.opsbook.role=stateful)) are recreated stop-first, with a warning.
  - One lock per project (C(flock) under O(journal_root)) serializes upgrades, rollbacks and restores. A run
    that finds the leftovers of a killed run (containers no upstream lists, an C(in_progress) record) puts
    them in order first.
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
    details: Returns the plan (which services change, from which image and digest to which) without pulling,
      locking or changing anything. The target digest comes from the local image or, when it is not pulled
      yet, from the registry.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: A service whose containers run the target image, as many as its replicas, is left alone; the same
      target twice is one upgrade, then C(changed=false).
options:
  services:
    description:
      - 'Service name to new image tag, for example V({"backend": "2.0"}). A value with a C(/) or C(@) is taken
        as a full image reference.'
      - An unknown service or an empty tag fails before anything changes.
      - A tag must be a string. YAML reads an unquoted V(2.10) as the number 2.1, so a number is refused with a
        message that says to quote it (V("2.10")).
    type: dict
    required: true
notes:
  - Compose stays the source of truth; the rendered C(compose.yaml) names the image that runs. Put the new tag
    into the inventory too (C(compose_app_services)), or the next run of the compose_app role renders the old one.
  - Requests that are in flight on the old containers finish; the Nginx reloads are graceful. A client that
    sends a request on an idle keep-alive connection at the moment an old Nginx worker closes it (at any
    graceful reload) sees the connection closed without an answer and must retry it, as browsers and most HTTP
    libraries do for idempotent requests; the tests' load opens one connection per request.
  - The drain waits for the Nginx workers of before the switch to exit (they are the only ones that know the old
    containers) and for no connection to an old container's port to be left. A long-lived stream (SSE) holds an
    old worker until it ends or O(drain_timeout) passes; the container's stop grace period then lets it finish.
seealso:
  - module: opsbook.stack.rollback
  - module: opsbook.stack.release_info
"""

EXAMPLES = r"""
- name: Upgrade the backend to 2.0 with zero failed requests
  opsbook.stack.rolling_upgrade:
    project: demo
    services:
      backend: "2.0"
    bake_paths: [/api/version]
  register: upgrade

- name: Same target again; nothing to do (changed=false)
  opsbook.stack.rolling_upgrade:
    project: demo
    services:
      backend: "2.0"

- name: Show the plan only
  opsbook.stack.rolling_upgrade:
    project: demo
    services:
      backend: "3.0"
  check_mode: true
  register: plan

- name: Canary first, 10 % of the traffic for a minute
  opsbook.stack.rolling_upgrade:
    project: demo
    services:
      backend: "2.1"
    canary_weight: 10
    canary_s: 60
"""

RETURN = r"""
plan:
  description: One entry per service given, with the action (V(none), V(rolling), V(recreate)), and the image
    and digest it moves from and to.
  returned: always
  type: list
  elements: dict
release:
  description:
    - The journal record of this run (or the newest succeeded one when nothing changed).
    - Its C(phase) says where the run got to (C(done), C(failed), or the working phase it stopped in);
      docs/state-machine.md in the collection describes the phases and what a rerun does with each.
  returned: always
  type: dict
previous_release:
  description: Id of the release that ran before; what a multi-host playbook rolls back to.
  returned: always
  type: str
steps:
  description: What was done, with the seconds since the start.
  returned: always
  type: list
  elements: str
timings:
  description: Seconds since the start at each milestone (C(<service>_switched), C(<service>_done), ...).
  returned: always
  type: dict
reconciled:
  description:
    - What a run put in order after a killed run, from the phase its record names (containers removed,
      upstream switched back, old containers drained). Empty when no record was left unsettled; then replicas
      beyond the Compose count are only reported as a warning.
  returned: always
  type: list
  elements: str
undo_failures:
  description: On failure, the steps of the undo that failed too (the message keeps the first error); the record
    stays in its working phase and the next run finishes the undo.
  returned: when an undo step failed
  type: list
  elements: str
evidence:
  description: On failure, the health log, log tail and state of the new containers, the failing probe, the bake
    figures and the failing requests from the access log.
  returned: when something failed or a bake ran
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.opsbook.stack.plugins.module_utils._upgrade import argument_spec, run_module


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(services=dict(type="dict", required=True)), supports_check_mode=True
    )
    run_module(module, "upgrade")


if __name__ == "__main__":
    main()
