#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

DOCUMENTATION = r"""
---
module: prometheus_query
short_description: Evaluate a PromQL expression or list the firing alerts, and assert on the answer
version_added: 0.1.0
description:
  - Evaluates an instant PromQL expression through the Prometheus HTTP API (C(/api/v1/query)) and returns the
    samples, or lists the alerts Prometheus evaluates (C(/api/v1/alerts)) filtered by state, name and labels.
  - An optional assertion turns the answer into a verdict, for example O(expect=empty) for "no alert is
    firing" or O(compare=<) with O(threshold=0.01) for "the error ratio is below 1%". With O(retries) the
    module waits until the assertion holds, which is how a runbook's verify step waits for recovery.
  - Requests go through ansible-core's C(ansible.module_utils.urls), with the client options of
    M(ansible.builtin.uri) (basic authentication, CA bundle, client certificate, proxy). The module only reads
    and always reports C(changed=false).
author:
  - opsbook.stack maintainers (!UNKNOWN)
extends_documentation_fragment:
  - opsbook.stack.attributes
  - opsbook.stack.http_client
attributes:
  action_group:
    support: full
    membership: [opsbook.stack.stack]
  check_mode:
    support: full
    details: The module only reads, so it queries in check mode too.
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  url:
    description:
      - Base URL of Prometheus, for example V(http://127.0.0.1:9090). A path prefix (C(--web.route-prefix)) is
        part of it.
    type: str
    required: true
  query:
    description:
      - The instant PromQL expression to evaluate.
      - Exactly one of O(query) and O(alerts) is required.
    type: str
  alerts:
    description:
      - List the alerts instead of evaluating an expression. The result is in RV(alerts), and the assertion
        counts the alerts that pass the filters O(alert_states), O(alert_names) and O(alert_labels).
    type: bool
    default: false
  alert_states:
    description:
      - With O(alerts=true), the states that count.
    type: list
    elements: str
    choices: [firing, pending]
    default: [firing]
  alert_names:
    description:
      - With O(alerts=true), only these alert names count. Empty means every alert.
    type: list
    elements: str
    default: []
  alert_labels:
    description:
      - "With O(alerts=true), only alerts carrying all these label values count, for example
        V({runbook_id: service-down})."
    type: dict
    default: {}
  time:
    description:
      - Evaluation time of O(query) as an RFC 3339 timestamp or a Unix timestamp. Default is now.
    type: str
  expect:
    description:
      - V(any) accepts every answer, V(empty) needs no sample (no alert), V(non_empty) at least one.
    type: str
    choices: [any, empty, non_empty]
    default: any
  compare:
    description:
      - Every sample value must satisfy C(value <compare> threshold). Needs O(threshold). Not with
        O(alerts=true).
    type: str
    choices: ['==', '!=', '<', '<=', '>', '>=']
  threshold:
    description:
      - The number O(compare) compares every sample value with.
    type: float
  retries:
    description:
      - How many more times to ask when the assertion fails, waiting O(delay) seconds in between.
    type: int
    default: 0
  delay:
    description:
      - Seconds between attempts.
    type: float
    default: 5
  fail_on_mismatch:
    description:
      - Fail the task when the assertion still fails after the last attempt. When false, RV(ok) tells.
    type: bool
    default: true
notes:
  - An unreachable Prometheus or a query error always fails the task, whatever O(fail_on_mismatch) says; the
    message carries the URL and Prometheus' own error.
seealso:
  - module: opsbook.stack.alertmanager_silence
  - name: Prometheus HTTP API
    description: The endpoints this module uses.
    link: https://prometheus.io/docs/prometheus/latest/querying/api/
"""

EXAMPLES = r"""
- name: Every scrape target is up (fails naming the targets that are down)
  opsbook.stack.prometheus_query:
    url: http://127.0.0.1:9090
    query: up == 0
    expect: empty

- name: The 5xx ratio through Nginx stays under 1%, waiting up to a minute for it
  opsbook.stack.prometheus_query:
    url: http://127.0.0.1:9090
    query: sum(rate(nginx_http_requests_total{status=~"5.."}[5m])) / sum(rate(nginx_http_requests_total[5m]))
    compare: "<"
    threshold: 0.01
    retries: 12
    delay: 5

- name: No alert of the service-down runbook is firing any more
  opsbook.stack.prometheus_query:
    url: http://127.0.0.1:9090
    alerts: true
    alert_labels:
      runbook_id: service-down
    expect: empty
    retries: 10
    delay: 6

- name: Ask a Prometheus behind an authenticating TLS proxy signed by an internal CA
  opsbook.stack.prometheus_query:
    url: https://prometheus.example.com
    ca_path: /etc/ssl/certs/internal-ca.pem
    url_username: ops
    url_password: "{{ prometheus_password }}"
    force_basic_auth: true
    query: up == 0
    expect: empty

- name: Collect the firing alerts without failing
  opsbook.stack.prometheus_query:
    url: http://127.0.0.1:9090
    alerts: true
    fail_on_mismatch: false
  register: firing

- name: Name them (reading only, so every run reports changed=false)
  ansible.builtin.debug:
    msg: "{{ firing.alerts | map(attribute='name') | list }}"
"""

RETURN = r"""
ok:
  description: Whether the assertion held (always true without an assertion).
  returned: always
  type: bool
  sample: true
result_type:
  description: Prometheus' result type of O(query) (V(vector), V(scalar) or V(string)); null with O(alerts=true).
  returned: always
  type: str
  sample: vector
samples:
  description: The samples of O(query), each with its C(labels) and numeric C(value); empty with O(alerts=true).
  returned: always
  type: list
  elements: dict
  sample: [{labels: {job: backend, instance: "10.0.0.5:8000"}, value: 0}]
alerts:
  description:
    - With O(alerts=true), the alerts that pass the filters, each with C(name), C(state), C(labels),
      C(annotations), C(active_at) and C(value).
  returned: always
  type: list
  elements: dict
  sample: [{name: BackendDown, state: firing, labels: {runbook_id: service-down}, annotations: {},
            active_at: "2024-05-01T10:00:00Z", value: "0e+00"}]
count:
  description: How many samples or alerts the answer has.
  returned: always
  type: int
  sample: 0
attempts:
  description: How many times Prometheus was asked.
  returned: always
  type: int
  sample: 1
problems:
  description: Why the assertion failed, in words; empty when it held.
  returned: always
  type: list
  elements: str
  sample: ["expected no result, got 1: {instance='10.0.0.5:8000',job='backend'} 0"]
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.opsbook.stack.plugins.module_utils._argspec import http_argument_spec
from ansible_collections.opsbook.stack.plugins.module_utils._http import HttpSettings, secret_header_values
from ansible_collections.opsbook.stack.plugins.module_utils._prometheus import (
    ALERT_STATES,
    COMPARISONS,
    EXPECTATIONS,
    ApiError,
    Assertion,
    instant_query,
    list_alerts,
    select_alerts,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", required=True),
            query=dict(type="str"),
            alerts=dict(type="bool", default=False),
            alert_states=dict(type="list", elements="str", choices=list(ALERT_STATES), default=["firing"]),
            alert_names=dict(type="list", elements="str", default=[]),
            alert_labels=dict(type="dict", default={}),
            time=dict(type="str"),
            expect=dict(type="str", choices=list(EXPECTATIONS), default="any"),
            compare=dict(type="str", choices=list(COMPARISONS)),
            threshold=dict(type="float"),
            retries=dict(type="int", default=0),
            delay=dict(type="float", default=5),
            fail_on_mismatch=dict(type="bool", default=True),
            **http_argument_spec(),
        ),
        required_together=[("compare", "threshold")],
        supports_check_mode=True,
    )
    module.no_log_values.update(secret_header_values(module.params["headers"]))
    p = module.params
    if bool(p["query"]) == bool(p["alerts"]):
        module.fail_json(msg="give exactly one of query (an expression to evaluate) and alerts=true (list alerts)")
    if p["alerts"] and p["compare"]:
        module.fail_json(msg="compare/threshold apply to query results, not to alerts; use expect with alerts=true")
    settings = HttpSettings.from_params(p)
    assertion = Assertion(expect=p["expect"], compare=p["compare"], threshold=p["threshold"])

    attempts = 0
    result: dict = {}
    problems: list[str] = []
    while True:
        attempts += 1
        try:
            if p["alerts"]:
                chosen = select_alerts(
                    list_alerts(settings),
                    p["alert_states"],
                    p["alert_names"],
                    {str(k): str(v) for k, v in p["alert_labels"].items()},
                )
                problems = _alert_problems(assertion, chosen)
                result = dict(result_type=None, samples=[], alerts=[a.to_dict() for a in chosen], count=len(chosen))
            else:
                result_type, samples = instant_query(settings, p["query"], p["time"])
                problems = assertion.failures(samples)
                result = dict(
                    result_type=result_type, samples=[s.to_dict() for s in samples], alerts=[], count=len(samples)
                )
        except ApiError as exc:
            module.fail_json(msg=str(exc), changed=False, attempts=attempts)
        if not problems or attempts > p["retries"]:
            break
        time.sleep(p["delay"])

    result.update(changed=False, ok=not problems, problems=problems, attempts=attempts)
    if problems and p["fail_on_mismatch"]:
        what = "alerts" if p["alerts"] else "query %r" % p["query"]
        module.fail_json(msg="%s: %s (after %d attempt(s))" % (what, "; ".join(problems), attempts), **result)
    module.exit_json(**result)


def _alert_problems(assertion: Assertion, alerts: list) -> list[str]:
    names = ", ".join("%s(%s)" % (a.name, a.state) for a in alerts[:10])
    if assertion.expect == "empty" and alerts:
        return ["expected no alert, %d present: %s" % (len(alerts), names)]
    if assertion.expect == "non_empty" and not alerts:
        return ["expected at least one alert, none present"]
    return []


if __name__ == "__main__":
    main()
