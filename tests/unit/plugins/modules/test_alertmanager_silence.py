# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The alertmanager_silence module as Ansible runs it, against a real Alertmanager (sandbox image).

Each step runs four times as the house style asks: check mode, real, check again, real again.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import json
import secrets
import urllib.request

import pytest
import yaml

from ansible_collections.opsbook.stack.plugins.modules import alertmanager_silence
from ansible_collections.opsbook.stack.tests.unit.doc_contract import check_documentation
from ansible_collections.opsbook.stack.tests.unit.module_args import run_module
from ansible_collections.opsbook.stack.tests.unit.monitoring_fixtures import monitoring  # noqa: F401 pylint: disable=unused-import


def run(args: dict, capsys, check: bool = False) -> dict:
    if check:
        args = dict(args, _ansible_check_mode=True)
    return run_module(alertmanager_silence, args, capsys)


def live(url: str, project: str) -> list:
    with urllib.request.urlopen(url + "/api/v2/silences", timeout=5) as resp:
        silences = json.loads(resp.read())
    return [
        s
        for s in silences
        if s["status"]["state"] == "active"
        and any(m["name"] == "project" and m["value"] == project for m in s["matchers"])
    ]


@pytest.mark.docker
def test_create_reuse_expire_four_times_each(monitoring, capsys):  # noqa: F811
    project = "p" + secrets.token_hex(3)
    args = {
        "url": monitoring.alertmanager_url,
        "duration": "30m",
        "comment": "upgrade",
        "created_by": "pytest",
        "matchers": [
            {"name": "project", "value": project},
            {"name": "severity", "value": "warning|critical", "is_regex": True},
        ],
    }

    assert run(args, capsys, check=True)["changed"] is True
    assert live(monitoring.alertmanager_url, project) == []
    created = run(args, capsys)
    assert created["changed"] is True and created["silence"]["state"] == "active"
    assert run(args, capsys, check=True)["changed"] is False
    again = run(args, capsys)
    assert again["changed"] is False and again["silence_id"] == created["silence_id"]
    [silence] = live(monitoring.alertmanager_url, project)
    assert silence["createdBy"] == "pytest" and silence["comment"] == "upgrade"
    assert {m["name"]: m["isRegex"] for m in silence["matchers"]} == {"project": False, "severity": True}

    expire = {"url": monitoring.alertmanager_url, "state": "absent", "silence_id": created["silence_id"]}
    assert run(expire, capsys, check=True)["expired"] == [created["silence_id"]]
    assert len(live(monitoring.alertmanager_url, project)) == 1
    assert run(expire, capsys)["changed"] is True
    assert run(expire, capsys, check=True)["changed"] is False
    assert run(expire, capsys)["changed"] is False
    assert live(monitoring.alertmanager_url, project) == []


@pytest.mark.docker
def test_expire_by_matchers_whoever_made_it(monitoring, capsys):  # noqa: F811
    project = "p" + secrets.token_hex(3)
    base = {"url": monitoring.alertmanager_url, "matchers": [{"name": "project", "value": project}]}
    first = run(dict(base, created_by="alice"), capsys)
    second = run(dict(base, created_by="bob"), capsys)
    assert first["silence_id"] != second["silence_id"]
    gone = run(dict(base, state="absent"), capsys)
    assert sorted(gone["expired"]) == sorted([first["silence_id"], second["silence_id"]])
    assert live(monitoring.alertmanager_url, project) == []


@pytest.mark.docker
def test_bad_input_is_refused_before_any_change(monitoring, capsys):  # noqa: F811
    bad = run(
        {"url": monitoring.alertmanager_url, "duration": "soon", "matchers": [{"name": "project", "value": "x"}]},
        capsys,
    )
    assert bad["failed"] is True and bad["msg"].startswith("duration: 'soon' is not a duration")
    missing = run({"url": monitoring.alertmanager_url, "state": "absent"}, capsys)
    assert missing["failed"] is True and "silence_id or matchers" in missing["msg"]
    down = run({"url": "http://127.0.0.1:1", "matchers": [{"name": "a", "value": "b"}], "timeout": 2}, capsys)
    assert down["failed"] is True and "cannot connect" in down["msg"]


# --------------------------------------------------------------------------------------------------------
# Without Docker: the documentation and the client options
# --------------------------------------------------------------------------------------------------------


def test_documentation_matches_argument_spec():
    doc = check_documentation(alertmanager_silence)
    assert doc["attributes"]["idempotent"]["support"] == "full"
    tasks = [task["opsbook.stack.alertmanager_silence"] for task in yaml.safe_load(alertmanager_silence.EXAMPLES)]
    assert all(set(task) <= set(doc["options"]) for task in tasks)


def test_unreadable_ca_path_fails_naming_it(tmp_path, capsys):
    missing = str(tmp_path / "ca.pem")
    result = run({"url": "https://127.0.0.1:1", "state": "absent", "silence_id": "x", "ca_path": missing}, capsys)
    assert result["failed"] is True
    assert result["msg"].startswith("Alertmanager: GET https://127.0.0.1:1/api/v2/silence/x: cannot use the TLS files")
    assert "ca_path=%s" % missing in result["msg"]
