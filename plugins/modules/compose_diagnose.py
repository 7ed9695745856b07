#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

DOCUMENTATION = r"""
---
module: compose_diagnose
short_description: Explain which services of a Compose project are not healthy, with their health and logs
version_added: 0.1.0
description:
  - Reads every container of a Compose project from the Docker Engine API and reports, per service, its
    containers' state, Docker health status, restart count, the last health check outputs and the tail of the
    logs of every container that is not running and healthy.
  - Used by the compose_app role when a deploy does not become healthy, and by runbooks.
  - Healthy means what it means everywhere in the collection (C(plugins/module_utils/_compose.py)), that is
    running, not restarting or paused, and healthy by its healthcheck or without one. C(docker compose run)
    containers are left out.
  - Only reads.
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
  log_tail:
    description: Lines of logs returned for each container that is not healthy.
    type: int
    default: 40
"""

EXAMPLES = r"""
- name: Explain why the stack is not healthy
  opsbook.stack.compose_diagnose:
    project: agentchat
  register: diagnosis

- name: Show the report
  ansible.builtin.debug:
    msg: "{{ diagnosis.report }}"
"""

RETURN = r"""
containers:
  description: One entry per container of the project.
  returned: always
  type: list
  elements: dict
unhealthy:
  description: Names of the services with at least one container not running or not healthy.
  returned: always
  type: list
  elements: str
summary:
  description: "One line, for example C(2/3 services healthy; unhealthy: backend)."
  returned: always
  type: str
report:
  description: The summary, then per unhealthy container its state, health log and log tail.
  returned: always
  type: str
"""

import typing as t

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.opsbook.stack.plugins.module_utils._argspec import docker_argument_spec
from ansible_collections.opsbook.stack.plugins.module_utils._compose import (
    LABEL_SERVICE,
    container_labels,
    container_name,
    health_verdict,
    list_project_containers,
)
from ansible_collections.opsbook.stack.plugins.module_utils._docker import DockerClient, DockerError


def describe(client: DockerClient, summary: dict[str, t.Any], log_tail: int) -> dict[str, t.Any]:
    """One container: state, health, restarts, the last health outputs, and its log tail when not healthy."""
    info = client.inspect_container(summary["Id"])
    state = info.get("State") or {}
    health = state.get("Health") or {}
    verdict = health_verdict(info)
    entry: dict[str, t.Any] = {
        "name": container_name(info),
        "service": container_labels(info).get(LABEL_SERVICE, ""),
        "image": (info.get("Config") or {}).get("Image", ""),
        "status": state.get("Status", ""),
        "exit_code": state.get("ExitCode"),
        "health": health.get("Status", "none"),
        "restart_count": info.get("RestartCount", 0),
        "health_log": [(h.get("Output") or "").strip()[-300:] for h in (health.get("Log") or [])[-3:]],
        "ok": verdict.ok,
        "logs": "",
    }
    if not entry["ok"]:
        out, err = client.container_logs(summary["Id"], tail=log_tail)
        entry["logs"] = (out + err).strip()
    return entry


def render_report(entries: list[dict[str, t.Any]], services: list[str], unhealthy: list[str]) -> tuple[str, str]:
    summary = "%d/%d services healthy" % (len(services) - len(unhealthy), len(services))
    if unhealthy:
        summary += "; unhealthy: " + ", ".join(unhealthy)
    lines = [summary]
    for e in entries:
        if e["ok"]:
            continue
        lines.append(
            "- service %s, container %s (%s): %s, health %s, exit code %s, %d restarts"
            % (e["service"], e["name"], e["image"], e["status"], e["health"], e["exit_code"], e["restart_count"])
        )
        for out in e["health_log"]:
            lines.append("    health check: %s" % out)
        if e["logs"]:
            lines.append("    last log lines:")
            lines.extend("      " + line for line in e["logs"].splitlines())
    return summary, "\n".join(lines)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            project=dict(type="str", required=True),
            log_tail=dict(type="int", default=40),
            **docker_argument_spec(),
        ),
        supports_check_mode=True,
    )
    client = DockerClient(module.params["docker_host"])
    try:
        found = list_project_containers(client, module.params["project"], all=True)
        entries = sorted(
            (describe(client, c, module.params["log_tail"]) for c in found), key=lambda e: (e["service"], e["name"])
        )
    except DockerError as exc:
        module.fail_json(msg="cannot read project %s from Docker: %s" % (module.params["project"], exc))
    services = sorted({e["service"] for e in entries})
    unhealthy = sorted({e["service"] for e in entries if not e["ok"]})
    summary, report = render_report(entries, services, unhealthy)
    if not entries:
        summary = report = "project %s has no containers" % module.params["project"]
    module.exit_json(changed=False, containers=entries, unhealthy=unhealthy, summary=summary, report=report)


if __name__ == "__main__":
    main()
