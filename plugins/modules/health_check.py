#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

DOCUMENTATION = r"""
---
module: health_check
short_description: Check that HTTP endpoints, TCP ports, containers and in-container commands are healthy
version_added: 0.1.0
description:
  - Runs a list of probes concurrently and reports each one with its latency, attempts and the evidence of a
    failure (HTTP status and body, Docker health log, container logs, command output).
  - Probe types are C(http) (an URL answers with an expected status, body and latency), C(tcp) (a port
    accepts connections), C(container) (a container is running, its Docker healthcheck passes and it has not
    restarted too often) and C(exec) (a command run inside a container exits as expected).
  - The wall time of a run is that of the slowest probe, not the sum of all probes.
  - Container and exec probes talk to the Docker Engine API at O(docker_host) directly; the target host needs
    neither the Docker SDK for Python nor the docker CLI. Http probes use ansible-core's
    C(ansible.module_utils.urls).
  - The module only reads. It never changes anything and always reports C(changed=false).
author:
  # validate-modules wants a GitHub handle or the marker !UNKNOWN after the name.
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
    details: Probes only read, so they run in check mode too. Exec probes run their command in check mode as
      well; give them read-only commands.
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  probes:
    description:
      - The probes to run.
      - "Each probe is validated before any runs; an error names the probe index and the field, for example
        C(probes[2]: type 'http' needs 'url')."
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description:
          - Name of the probe in the result and in RV(failed_probes).
          - Defaults to one derived from the target, for example C(tcp:127.0.0.1:6379).
          - Names must be unique.
        type: str
      type:
        description:
          - What the probe checks, one of V(http), V(tcp), V(container) or V(exec).
          - The fields each type needs are marked below; a field of another type is an error.
        type: str
        required: true
      timeout:
        description:
          - Seconds one attempt may take, connection, answer and body included.
        type: float
        default: 5
      retries:
        description:
          - How many times a failing probe is tried again before it counts as failed.
        type: int
        default: 0
      delay:
        description:
          - Seconds to wait between attempts.
        type: float
        default: 1
      url:
        description:
          - C(http) probes, required. The http:// or https:// URL to request.
        type: str
      method:
        description:
          - C(http) probes. HTTP method of the request.
        type: str
        default: GET
      status:
        description:
          - C(http) probes. Expected HTTP status code, or a list of accepted codes.
        type: list
        elements: int
        default: [200]
      body_pattern:
        description:
          - C(http) probes. Python regular expression the response body must contain (C(re.search)).
          - Reading stops at the first match, so a streaming (SSE) endpoint can be probed.
        type: str
      latency_budget_ms:
        description:
          - C(http) probes. A response, body included, that takes longer than this many milliseconds is a
            failure.
        type: float
      headers:
        description:
          - C(http) probes. Request headers, for example C(Host) to go through a name-based Nginx virtual host.
          - The value of a header whose name contains C(auth), C(token), C(secret), C(password), C(cookie) or
            C(key) (case-insensitive), such as C(Authorization), is masked wherever it would appear in the result.
        type: dict
      validate_certs:
        description:
          - C(http) probes. Verify the TLS certificate of an https:// URL.
        type: bool
        default: true
      follow_redirects:
        description:
          - C(http) probes. Follow redirects. When false a redirect is judged by its own 3xx status.
        type: bool
        default: false
      use_proxy:
        description:
          - C(http) probes. Use the proxy from the C(http_proxy)/C(https_proxy)/C(no_proxy) environment
            variables.
        type: bool
        default: true
      host:
        description:
          - C(tcp) probes, required. Host name or address to connect to.
        type: str
      port:
        description:
          - C(tcp) probes, required. Port to connect to.
        type: int
      container:
        description:
          - C(container) and C(exec) probes, required. Container name or ID.
        type: str
      max_restarts:
        description:
          - C(container) probes. The container fails the probe when Docker restarted it more often than this.
        type: int
      command:
        description:
          - C(exec) probes, required. The command as an argv list, run without a shell, for example
            V(["mysqladmin", "ping", "-h", "127.0.0.1"]). Use V(["sh", "-c", "..."]) for shell syntax.
        type: list
        elements: str
      expect_rc:
        description:
          - C(exec) probes. Expected exit code of the command.
        type: int
        default: 0
      stdout_pattern:
        description:
          - C(exec) probes. Python regular expression the command's standard output must contain.
        type: str
  max_workers:
    description:
      - How many probes run at the same time. Defaults to the number of probes, at most 64.
    type: int
  fail_on_unhealthy:
    description:
      - Fail the task when any probe fails. The message names every failing probe and why.
      - When false the task succeeds and RV(healthy) tells the outcome, for example for a C(until) loop.
    type: bool
    default: true
notes:
  - A container with a Docker healthcheck passes only when its health is C(healthy); C(starting) fails with
    that detail, so combine O(probes[].retries) and O(probes[].delay) to wait for a fresh container.
  - An exec command that times out may still be running inside the container; the Docker API cannot stop it.
  - The per-attempt timeout does not bound host name resolution; use addresses for probes that must fail fast
    when DNS is down.
seealso:
  - name: Docker Engine API
    description: The API container and exec probes use.
    link: https://docs.docker.com/engine/api/
"""

EXAMPLES = r"""
- name: Check the stack through Nginx and from the inside
  opsbook.stack.health_check:
    probes:
      - name: backend-through-nginx
        type: http
        url: http://127.0.0.1/health
        headers:
          Host: app.example.com
        body_pattern: '"status":\s*"ok"'
        latency_budget_ms: 500
      - name: redis-port
        type: tcp
        host: 127.0.0.1
        port: 6379
      - name: backend-container
        type: container
        container: demo-backend-1
        max_restarts: 3
      - name: mariadb-ping
        type: exec
        container: demo-mariadb-1
        command: [mysqladmin, ping, -h, 127.0.0.1]
        stdout_pattern: alive
  register: stack_health

- name: Show the summary (the module never changes anything, so a second run reports changed=false too)
  ansible.builtin.debug:
    msg: "{{ stack_health.summary }}"

- name: Wait for a freshly started container to turn healthy (starting counts as not yet)
  opsbook.stack.health_check:
    probes:
      - type: container
        container: demo-backend-1
        retries: 30
        delay: 2

- name: Collect the health of every endpoint without failing, to decide later
  opsbook.stack.health_check:
    probes:
      - name: frontend
        type: http
        url: https://127.0.0.1/
        validate_certs: false
        status: [200, 304]
      - name: metrics
        type: http
        url: http://127.0.0.1:8000/metrics
        timeout: 2
        retries: 2
    fail_on_unhealthy: false
  register: endpoints

- name: Report the failing probes
  ansible.builtin.debug:
    msg: "Unhealthy: {{ endpoints.failed_probes | join(', ') }}"
  when: not endpoints.healthy
"""

RETURN = r"""
healthy:
  description: Whether every probe passed.
  returned: always
  type: bool
  sample: true
summary:
  description: One line for humans; names the failing probes when there are any.
  returned: always
  type: str
  sample: "11/12 probes healthy; failing: backend-container"
failed_probes:
  description: Names of the probes that failed.
  returned: always
  type: list
  elements: str
  sample: [backend-container]
elapsed_ms:
  description: Wall time of the whole run in milliseconds.
  returned: always
  type: float
  sample: 512.3
probes:
  description: One entry per probe, in the order given.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Name of the probe.
      type: str
      sample: backend-through-nginx
    type:
      description: Probe type.
      type: str
      sample: http
    target:
      description: What was probed (method and URL, host:port, container, container and command).
      type: str
      sample: "GET http://127.0.0.1/health (Host: app.example.com)"
    ok:
      description: Whether the probe passed.
      type: bool
      sample: true
    status:
      description:
        - HTTP status code (http), V(open) or V(closed) (tcp), container state such as V(running) or
          V(exited) or V(missing) (container), exit code (exec). Null when the probe got no answer.
      type: raw
      sample: 200
    health:
      description: Docker health status of a container probe (V(healthy), V(unhealthy), V(starting)); null
        when the container has no healthcheck or for other probe types.
      type: str
      sample: healthy
    latency_ms:
      description: Duration of the last attempt in milliseconds.
      type: float
      sample: 12.4
    attempts:
      description: How many attempts were made.
      type: int
      sample: 1
    detail:
      description: What happened, in words; the failure reason when the probe failed.
      type: str
      sample: HTTP 200 in 12.4 ms
    error:
      description: Why the probe failed; null when it passed.
      type: str
      sample: "HTTP 502 (expected 200)"
    evidence:
      description:
        - Facts to act on. Http probes that fail carry the start of the body (V(body)). Container probes
          carry V(state), V(restart_count), V(exit_code), V(oom_killed), V(image), V(started_at), the last
          Docker health log entries (V(health_log)) and, when failing, the last container log lines
          (V(logs)). Exec probes carry V(exit_code), V(stdout) and V(stderr) (their tails).
      type: dict
      sample:
        state: running
        restart_count: 0
        health_log:
          - start: "2024-05-01T10:00:00.1Z"
            end: "2024-05-01T10:00:00.2Z"
            exit_code: 1
            output: "curl: (7) Failed to connect to 127.0.0.1 port 8000"
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.opsbook.stack.plugins.module_utils._argspec import docker_argument_spec
from ansible_collections.opsbook.stack.plugins.module_utils._http import secret_header_values
from ansible_collections.opsbook.stack.plugins.module_utils._probes import (
    DEFAULT_DELAY,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    FIELD_DEFAULTS,
    ProbeConfigError,
    check,
)

PROBE_OPTIONS = dict(
    name=dict(type="str"),
    # No `choices`: _probe_spec.parse_probe rejects an unknown type naming the probe index, which AnsibleModule cannot.
    type=dict(type="str", required=True),
    timeout=dict(type="float", default=DEFAULT_TIMEOUT),
    retries=dict(type="int", default=DEFAULT_RETRIES),
    delay=dict(type="float", default=DEFAULT_DELAY),
    url=dict(type="str"),
    method=dict(type="str", default=FIELD_DEFAULTS["method"]),
    status=dict(type="list", elements="int", default=list(FIELD_DEFAULTS["status"])),
    body_pattern=dict(type="str"),
    latency_budget_ms=dict(type="float"),
    headers=dict(type="dict"),
    validate_certs=dict(type="bool", default=FIELD_DEFAULTS["validate_certs"]),
    follow_redirects=dict(type="bool", default=FIELD_DEFAULTS["follow_redirects"]),
    use_proxy=dict(type="bool", default=FIELD_DEFAULTS["use_proxy"]),
    host=dict(type="str"),
    port=dict(type="int"),
    container=dict(type="str"),
    max_restarts=dict(type="int"),
    command=dict(type="list", elements="str"),
    expect_rc=dict(type="int", default=FIELD_DEFAULTS["expect_rc"]),
    stdout_pattern=dict(type="str"),
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            probes=dict(type="list", elements="dict", required=True, options=PROBE_OPTIONS),
            **docker_argument_spec(),
            max_workers=dict(type="int"),
            fail_on_unhealthy=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    params = module.params
    for probe in params["probes"]:
        module.no_log_values.update(secret_header_values(probe.get("headers")))
    try:
        report = check(params["probes"], docker_host=params["docker_host"], max_workers=params["max_workers"])
    except ProbeConfigError as exc:
        module.fail_json(msg=str(exc), changed=False)

    result = dict(changed=False, **report.to_dict())
    if not report.healthy and params["fail_on_unhealthy"]:
        module.fail_json(msg=report.failure_message(), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
