# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The runbook responder's settings (monitoring_alertmanager_responder), offline: the preflight refuses a responder
without its URL or token, a short token and malformed settings, naming the variable and changing nothing, without
printing the token; {} and a complete responder pass. The rendered receiver and route are in
test_monitoring_alertmanager.py."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name


import pytest

from ansible_collections.opsbook.stack.tests.unit.local_play import run_each, run_plays
from ansible_collections.opsbook.stack.tests.unit.roles.monitoring.conftest import ROLE

SECRET = "Canary-responder-token-42"
URL = "http://127.0.0.1:5001/alerts"
VAR = "monitoring_alertmanager_responder"
REFUSED = {
    "no-url": ({"token": SECRET}, VAR + ".url must be set"),
    "no-token": ({"url": URL}, VAR + ".token must be set"),
    "empty-token": ({"url": URL, "token": ""}, VAR + ".token must be set"),
    "short-token": ({"url": URL, "token": SECRET[:15]}, VAR + ".token must be set"),
    "not-a-url": ({"url": "127.0.0.1:5001", "token": SECRET}, VAR + ".url must be set"),
    "unknown-key": ({"url": URL, "token": SECRET, "tokne": SECRET}, VAR + " has keys other than"),
    "group-by": ({"url": URL, "token": SECRET, "group_by": "alertname"}, VAR + ".group_by must be"),
    "bad-interval": ({"url": URL, "token": SECRET, "group_wait": "soon"}, VAR + ".group_wait must be a duration"),
    "not-a-mapping": (URL, VAR + " must be a mapping"),
}


def preflight(tmp_path, responder):
    plays = [
        {
            "gather_facts": False,
            "vars_files": [str(ROLE / "defaults" / "main.yml"), str(ROLE / "vars" / "main.yml")],
            "tasks": [{"ansible.builtin.import_tasks": str(ROLE / "tasks" / "preflight.yml")}],
        }
    ]
    return run_plays(tmp_path, plays, {"monitoring_grafana_enabled": False, VAR: responder})


def test_the_preflight_refuses_a_responder_without_url_or_token_naming_it(tmp_path):
    runs = run_each(tmp_path, {name: case[0] for name, case in REFUSED.items()}, preflight)
    for name in sorted(REFUSED):
        done, named = runs[name], REFUSED[name][1]
        assert done.returncode != 0, (name, done.stdout)
        assert "Refuse a runbook responder" in done.stdout, (name, done.stdout)
        assert named in done.stdout and "Nothing was changed" in done.stdout, (name, done.stdout)
        assert SECRET not in done.stdout + done.stderr and SECRET[:15] not in done.stdout + done.stderr, (
            name,
            "the token was printed",
        )


@pytest.mark.parametrize(
    "responder",
    [
        {},
        {"url": URL, "token": SECRET},
        {
            "url": "https://responder.example.org:5001/",
            "token": SECRET,
            "group_by": ["alertname", "project"],
            "group_wait": "5s",
            "group_interval": "1m30s",
            "repeat_interval": "12h",
        },
    ],
    ids=["none", "url-and-token", "every-key"],
)
def test_no_responder_or_a_complete_one_passes(tmp_path, responder):
    done = preflight(tmp_path, responder)
    assert done.returncode == 0, done.stdout + done.stderr
    assert SECRET not in done.stdout + done.stderr
