# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The audit says what started a runbook run (issue 18, item 4): an alert that Event-Driven Ansible turned into
a run (its `ansible_eda` extra var, as ansible-rulebook's run_playbook passes it) or an operator, and whether the
run was approved up front. A real ansible-playbook with the callback, on a runbook-shaped local play; the runs from
an alert go through the runbook role's hold-off check against a real Alertmanager (the monitoring fixture)."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from ansible_collections.opsbook.stack.plugins.callback import runbook_progress
from ansible_collections.opsbook.stack.tests.unit.monitoring_fixtures import monitoring  # noqa: F401 pylint: disable=unused-import

COLLECTIONS_ROOT = Path(runbook_progress.__file__).parents[5]

PLAY = """
- name: Runbook trial
  hosts: localhost
  connection: local
  gather_facts: false
  vars:
    runbook_id: trial
  tasks:
    - name: "[look] Look around"
      tags: [look]
      ansible.builtin.debug:
        msg: looking
"""

EVENT = {
    "runbook_id": "trial",
    "alert_group": '{}:{alertname="BackendDown"}',
    "status": "firing",
    "alerts": [
        {
            "fingerprint": "4b1b2c3d4e5f6a7b",
            "labels": {"alertname": "BackendDown", "runbook_id": "trial", "project": "demo"},
            "annotations": {"summary": "not recorded"},
            "startsAt": "2026-12-02T03:00:00Z",
            "generatorURL": "http://prometheus/graph",
        }
    ],
}


def run_play(
    tmp_path: Path,
    extra: dict | None,
    play: str = PLAY,
    succeeds: bool = True,
    mon=None,
    records: str = "step",
    env: dict | None = None,
) -> list[dict]:
    """Run the play with the callback; the audit's records of the kind `records` (step, run, or all)."""
    (tmp_path / "play.yml").write_text(play)
    if mon is not None:
        # The runbook role's hold-off check of an alert's run: the project lock under tmp, a real Alertmanager.
        extra = dict(extra or {}, runbook_alertmanager_url=mon.alertmanager_url)
        extra["compose_app_journal_root"] = str(tmp_path / "journal")
    audit = tmp_path / "audit.jsonl"
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS_ROOT),
        ANSIBLE_CALLBACKS_ENABLED="opsbook.stack.runbook_progress",
        OPSBOOK_RUNBOOK_AUDIT_FILE=str(audit),
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
        ANSIBLE_LOCALHOST_WARNING="false",
        **(env or {}),
    )
    argv = [str(Path(sys.executable).with_name("ansible-playbook")), "-i", "localhost,", str(tmp_path / "play.yml")]
    if extra is not None:
        (tmp_path / "extra.json").write_text(json.dumps(extra))
        argv += ["-e", "@%s" % (tmp_path / "extra.json")]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert (done.returncode == 0) is succeeds, done.stdout + done.stderr
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    return [line for line in lines if records in ("all", line["record"])]


def test_a_run_from_an_alert_records_the_alert_and_the_approval(tmp_path):
    records = run_play(
        tmp_path,
        {
            "ansible_eda": {"ruleset": "alerts", "rule": "run the alert's runbook", "event": EVENT},
            "runbook_approved": True,
            "runbook_approved_by": "allow-list: trial for BackendDown",
        },
    )
    assert [r["step"] for r in records] == ["look"]
    trigger = records[0]["trigger"]
    assert trigger == {
        "by": "alert",
        "alert_group": '{}:{alertname="BackendDown"}',
        "rule": "run the alert's runbook",
        "alerts": [
            {
                "fingerprint": "4b1b2c3d4e5f6a7b",
                "labels": {"alertname": "BackendDown", "runbook_id": "trial", "project": "demo"},
                "startsAt": "2026-12-02T03:00:00Z",
            }
        ],
        "approved": True,
        "approved_by": "allow-list: trial for BackendDown",
    }
    assert "not recorded" not in (tmp_path / "audit.jsonl").read_text()


def test_a_run_by_hand_records_the_operator_and_no_approval(tmp_path):
    records = run_play(tmp_path, None)
    assert records[0]["trigger"] == {"by": "operator", "approved": False}


def gated_play(runbook: str, steps: list[str]) -> str:
    """The real approval gates (pause + assert) of a runbook playbook's changing steps, each followed by a
    harmless action in place of the real one, in a play with the real runbook role."""
    playbook = (
        COLLECTIONS_ROOT
        / "ansible_collections/opsbook/stack/playbooks"
        / ("runbook_%s.yml" % runbook.replace("-", "_"))
    )
    (real,) = yaml.safe_load(playbook.read_text())
    tasks = []
    for entry in real["tasks"]:
        if entry.get("tags", [None])[0] in steps:
            sid = entry["tags"][0]
            act = {"name": "[%s] Act" % sid, "ansible.builtin.debug": {"msg": "acting"}, "changed_when": True}
            tasks.append(dict(entry, block=entry["block"][:2] + [act]))
            tasks[-1].pop("always", None)
    play = {
        "name": real["name"],
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        "roles": real["roles"],
        "vars": real["vars"],
        "tasks": tasks,
    }
    return yaml.safe_dump([play], sort_keys=False)


def test_the_allow_list_lets_an_alerts_run_take_its_steps_and_stops_it_before_the_others(tmp_path, monitoring):  # noqa: F811
    event = dict(EVENT, runbook_id="service-down", alertnames=["BackendDown"])
    records = run_play(
        tmp_path,
        {
            "ansible_eda": {"ruleset": "alerts", "rule": "run", "event": event},
            "runbook_approved": False,
            "runbook_auto_approve": [
                # Counts: every alert of the event (BackendDown) is in the entry's alerts.
                {"runbook": "service-down", "steps": ["start-services"], "alerts": ["BackendDown", "Other"]},
                # Do not count: another alert, another runbook.
                {"runbook": "service-down", "steps": ["refresh-upstreams"], "alerts": ["Other"]},
                {"runbook": "rollback", "steps": ["refresh-upstreams"], "alerts": ["BackendDown"]},
            ],
        },
        play=gated_play("service-down", ["start-services", "refresh-upstreams"]),
        succeeds=False,
        mon=monitoring,
    )
    assert [(r["step"], r["status"]) for r in records] == [
        ("start-services", "changed"),
        ("refresh-upstreams", "failed"),
    ]
    assert records[-1]["trigger"]["auto_approved_steps"] == ["start-services"]
    assert records[-1]["trigger"]["approved"] is False


def test_an_event_with_an_alert_outside_the_entry_gets_no_step(tmp_path, monitoring):  # noqa: F811
    event = dict(EVENT, runbook_id="service-down", alertnames=["BackendDown", "NginxDown"])
    records = run_play(
        tmp_path,
        {
            "ansible_eda": {"ruleset": "alerts", "rule": "run", "event": event},
            "runbook_auto_approve": [
                {"runbook": "service-down", "steps": ["start-services"], "alerts": ["BackendDown"]}
            ],
        },
        play=gated_play("service-down", ["start-services"]),
        succeeds=False,
        mon=monitoring,
    )
    assert [(r["step"], r["status"]) for r in records] == [("start-services", "failed")]
    assert "auto_approved_steps" not in records[0]["trigger"]


def test_the_allow_list_does_nothing_for_a_run_by_hand(tmp_path):
    records = run_play(
        tmp_path,
        {"runbook_auto_approve": [{"runbook": "service-down", "steps": ["start-services"], "alerts": ["BackendDown"]}]},
        play=gated_play("service-down", ["start-services"]),
        succeeds=False,
    )
    assert [(r["step"], r["status"]) for r in records] == [("start-services", "failed")]
    assert "auto_approved_steps" not in records[0]["trigger"]
