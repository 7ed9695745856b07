#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

DOCUMENTATION = r"""
---
module: alertmanager_silence
short_description: Create and expire Alertmanager silences, for example for a maintenance window
version_added: 0.1.0
description:
  - Creates a silence through the Alertmanager v2 API with matchers, a duration, a comment and an author, or
    expires silences by id or by their matchers.
  - Idempotent. O(state=present) reuses a live (active or pending) silence with the same matchers, author and
    comment instead of stacking a second one; O(state=absent) does nothing when no live silence matches.
  - Requests go through ansible-core's C(ansible.module_utils.urls), with the client options of
    M(ansible.builtin.uri) (basic authentication, CA bundle, client certificate, proxy).
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
    details: Reads the silences and reports what it would create or expire without doing it.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: An equal live silence is reused; expiring what is already expired changes nothing.
options:
  url:
    description:
      - Base URL of Alertmanager, for example V(http://127.0.0.1:9093).
    type: str
    required: true
  state:
    description:
      - V(present) makes sure a live silence exists; V(absent) expires it.
    type: str
    choices: [present, absent]
    default: present
  matchers:
    description:
      - The label matchers of the silence. Required with O(state=present).
      - With O(state=absent) and no O(silence_id), every live silence with exactly these matchers (in any
        order) is expired.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Label name.
        type: str
        required: true
      value:
        description: Label value, or a regular expression with O(matchers[].is_regex=true).
        type: str
        required: true
      is_regex:
        description: Match O(matchers[].value) as a regular expression.
        type: bool
        default: false
      is_equal:
        description: V(false) negates the matcher (C(!=) or C(!~)).
        type: bool
        default: true
  duration:
    description:
      - How long the silence lasts from now, as a Prometheus duration such as V(2h), V(30m) or V(1h30m).
    type: str
    default: 2h
  comment:
    description:
      - Why the alerts are silenced. Shown in Alertmanager; part of what makes two silences equal.
    type: str
    default: opsbook.stack maintenance
  created_by:
    description:
      - Who silenced them. Part of what makes two silences equal.
    type: str
    default: opsbook.stack
  silence_id:
    description:
      - With O(state=absent), the id of the silence to expire (the RV(silence_id) of the task that made it).
    type: str
notes:
  - Alertmanager cannot delete a silence, only expire it; expired silences stay visible until its retention
    (C(--data.retention), 120 h by default) drops them.
  - A reused silence keeps its original end time; expire it first to start a fresh window.
seealso:
  - module: opsbook.stack.prometheus_query
  - name: Alertmanager API v2
    description: The OpenAPI description of the endpoints this module uses.
    link: https://github.com/prometheus/alertmanager/blob/main/api/v2/openapi.yaml
"""

EXAMPLES = r"""
- name: Silence the app's alerts for the upgrade window (run again, it reuses the silence with changed=false)
  opsbook.stack.alertmanager_silence:
    url: http://127.0.0.1:9093
    matchers:
      - name: project
        value: agentchat
      - name: severity
        value: warning|critical
        is_regex: true
    duration: 1h
    comment: "Planned upgrade to backend 2.0 (CHG-1234)"
    created_by: "{{ lookup('ansible.builtin.env', 'USER') }}"
  register: maintenance

- name: Expire it when the upgrade is verified
  opsbook.stack.alertmanager_silence:
    url: http://127.0.0.1:9093
    state: absent
    silence_id: "{{ maintenance.silence_id }}"

- name: Expire every live silence with these matchers, whoever made it, through an authenticating proxy
  opsbook.stack.alertmanager_silence:
    url: https://alertmanager.example.com
    ca_path: /etc/ssl/certs/internal-ca.pem
    url_username: ops
    url_password: "{{ alertmanager_password }}"
    force_basic_auth: true
    state: absent
    matchers:
      - name: project
        value: agentchat
"""

RETURN = r"""
silence_id:
  description: Id of the silence created or reused (present), or of the first one expired (absent).
  returned: when a silence was found, created or expired (not in check mode for a new one)
  type: str
  sample: 2f8e6b3c-6d2b-4c0e-9c55-0e8d4b7f2a11
silence:
  description: The silence as Alertmanager reports it (C(id), C(matchers), C(starts_at), C(ends_at),
    C(created_by), C(comment), C(state)).
  returned: with state=present, when the silence exists
  type: dict
  sample: {id: 2f8e6b3c-6d2b-4c0e-9c55-0e8d4b7f2a11, state: active, ends_at: "2024-05-01T11:00:00.000000Z"}
expired:
  description: Ids of the silences expired (or that would be, in check mode).
  returned: always
  type: list
  elements: str
  sample: [2f8e6b3c-6d2b-4c0e-9c55-0e8d4b7f2a11]
msg:
  description: What happened, in words.
  returned: always
  type: str
  sample: created silence 2f8e6b3c-6d2b-4c0e-9c55-0e8d4b7f2a11 until 2024-05-01T11:00:00.000000Z
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.opsbook.stack.plugins.module_utils._argspec import http_argument_spec
from ansible_collections.opsbook.stack.plugins.module_utils._http import HttpSettings, secret_header_values
from ansible_collections.opsbook.stack.plugins.module_utils._prometheus import (
    ApiError,
    Matcher,
    ensure_silence,
    parse_duration,
    remove_silences,
)

MATCHER_OPTIONS = dict(
    name=dict(type="str", required=True),
    value=dict(type="str", required=True),
    is_regex=dict(type="bool", default=False),
    is_equal=dict(type="bool", default=True),
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            matchers=dict(type="list", elements="dict", options=MATCHER_OPTIONS, default=[]),
            duration=dict(type="str", default="2h"),
            comment=dict(type="str", default="opsbook.stack maintenance"),
            created_by=dict(type="str", default="opsbook.stack"),
            silence_id=dict(type="str"),
            **http_argument_spec(),
        ),
        required_if=[("state", "present", ["matchers"])],
        supports_check_mode=True,
    )
    module.no_log_values.update(secret_header_values(module.params["headers"]))
    p = module.params
    settings = HttpSettings.from_params(p)
    matchers = [
        Matcher(name=m["name"], value=m["value"], is_regex=m["is_regex"], is_equal=m["is_equal"]) for m in p["matchers"]
    ]
    try:
        if p["state"] == "present":
            if p["silence_id"]:
                module.fail_json(
                    msg="silence_id only selects a silence to expire (state=absent); with state=present give matchers"
                )
            try:
                seconds = parse_duration(p["duration"])
            except ValueError as exc:
                module.fail_json(msg="duration: %s" % exc)
            outcome = ensure_silence(settings, matchers, seconds, p["created_by"], p["comment"], module.check_mode)
        else:
            # An author filter only makes sense with matchers; by default expire whoever made it.
            outcome = remove_silences(settings, p["silence_id"], matchers, None, module.check_mode)
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    except ApiError as exc:
        module.fail_json(msg="Alertmanager: %s" % exc)
    module.exit_json(**outcome.to_dict())


if __name__ == "__main__":
    main()
