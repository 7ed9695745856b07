# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""A runbook run for real, three ways: ansible_runner.run() on a private data dir, the `ansible-runner run` CLI,
and ansible-playbook without approval. The runbook is monitoring-broken, against real Prometheus and Alertmanager
containers on this machine (connection local); the runbook_progress callback prints the steps and writes the
audit file; the event stream must carry the step ids in the runbook's order.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ansible_collections.opsbook.stack.plugins.callback import runbook_progress
from ansible_collections.opsbook.stack.tests.unit.monitoring_fixtures import monitoring  # noqa: F401 pylint: disable=unused-import

REPO = Path(__file__).resolve().parents[4]
COLLECTIONS_ROOT = Path(runbook_progress.__file__).parents[
    5
]  # <root>/ansible_collections/opsbook/stack/plugins/callback
RUNBOOK = "monitoring-broken"
PLAYBOOK = "runbook_monitoring_broken.yml"  # playbooks/, opsbook.stack.runbook_monitoring_broken
STEP_TASK = re.compile(r"^\[([a-z0-9-]+)\] ")

pytestmark = pytest.mark.docker


def front_matter_steps(runbook: str) -> list[str]:
    text = (REPO / "runbooks" / ("%s.md" % runbook)).read_text()
    meta = yaml.safe_load(text.split("\n---\n", 1)[0][4:])
    return [step["id"] for step in meta["steps"]]


def private_data_dir(tmp_path: Path, mon, approved: bool = True) -> Path:
    """The layout ansible-runner expects: project/, inventory/, env/ (docs/runbooks.md shows the same)."""
    pdd = tmp_path / "pdd"
    # The playbook alone, as EDA's run_playbook copies it: its variables come from the collection's runbook role.
    (pdd / "project").mkdir(parents=True)
    shutil.copy(REPO / "playbooks" / PLAYBOOK, pdd / "project" / PLAYBOOK)
    (pdd / "inventory").mkdir()
    (pdd / "inventory" / "hosts.yml").write_text(
        yaml.safe_dump(
            {
                "all": {
                    "children": {
                        "monitoring": {
                            "hosts": {
                                "localhost": {
                                    "ansible_connection": "local",
                                    "ansible_python_interpreter": sys.executable,
                                }
                            }
                        }
                    }
                }
            }
        )
    )
    (pdd / "env").mkdir()
    (pdd / "env" / "extravars").write_text(
        yaml.safe_dump(
            {
                "runbook_approved": approved,
                "runbook_prometheus_url": mon.prometheus_url,
                "runbook_alertmanager_url": mon.alertmanager_url,
                # The test Prometheus scrapes a target that never answers on purpose; the verify step checks the rest.
                "runbook_target_selector": 'job="prometheus"',
            }
        )
    )
    (pdd / "env" / "envvars").write_text(
        yaml.safe_dump(
            {
                "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS_ROOT),
                "ANSIBLE_CALLBACKS_ENABLED": "opsbook.stack.runbook_progress",
                "OPSBOOK_RUNBOOK_AUDIT_FILE": str(tmp_path / "audit" / "runbooks.jsonl"),
            }
        )
    )
    (pdd / "env" / "settings").write_text(yaml.safe_dump({"idle_timeout": 120, "job_timeout": 300}))
    return pdd


def step_ids_of(events: list[dict]) -> list[str]:
    """Step ids in the order their task results arrive, consecutive repeats folded."""
    ids: list[str] = []
    for event in events:
        if event.get("event") not in ("runner_on_ok", "runner_on_failed", "runner_on_skipped"):
            continue
        match = STEP_TASK.match(event["event_data"].get("task", ""))
        if match and (not ids or ids[-1] != match.group(1)):
            ids.append(match.group(1))
    return ids


def audit(tmp_path: Path, record: str = "step") -> list[dict]:
    lines = [json.loads(line) for line in (tmp_path / "audit" / "runbooks.jsonl").read_text().splitlines()]
    return [line for line in lines if line["record"] == record]


def test_ansible_runner_run_api(monitoring, tmp_path):  # noqa: F811
    ansible_runner = pytest.importorskip("ansible_runner")
    pdd = private_data_dir(tmp_path, monitoring)
    run = ansible_runner.run(private_data_dir=str(pdd), playbook=PLAYBOOK, quiet=True)
    stdout = run.stdout.read()
    assert run.status == "successful" and run.rc == 0, stdout
    steps = front_matter_steps(RUNBOOK)
    assert step_ids_of(list(run.events)) == steps
    total = len(steps)
    assert "[runbook step 1/%d] Check that Prometheus and Alertmanager answer" % total in stdout
    assert "[runbook step %d/%d] Verify the targets are up and the rules evaluate" % (total, total) in stdout

    records = audit(tmp_path)
    assert [r["step"] for r in records] == steps
    assert [r["index"] for r in records] == list(range(1, total + 1))
    assert {r["runbook"] for r in records} == {RUNBOOK} and {r["host"] for r in records} == {"localhost"}
    assert len({r["run_id"] for r in records}) == 1
    by_step = {r["step"]: r for r in records}
    assert by_step["reload-prometheus"]["status"] == "changed" and by_step["reload-prometheus"]["changed"] is True
    assert by_step["list-down-targets"]["status"] == "ok" and by_step["list-down-targets"]["changed"] is False
    assert all(r["duration_s"] >= 0 and r["start"].endswith("Z") for r in records)
    assert [r["start"] for r in records] == sorted(r["start"] for r in records)


def test_ansible_runner_cli(monitoring, tmp_path):  # noqa: F811
    runner = shutil.which("ansible-runner") or str(Path(sys.executable).with_name("ansible-runner"))
    if not os.path.exists(runner):
        pytest.skip("ansible-runner CLI not installed")
    pdd = private_data_dir(tmp_path, monitoring)
    proc = subprocess.run(
        [runner, "run", str(pdd), "-p", PLAYBOOK, "--ident", "cli"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    events_dir = pdd / "artifacts" / "cli" / "job_events"
    events = sorted((json.loads(p.read_text()) for p in events_dir.glob("*.json")), key=lambda e: e["counter"])
    assert step_ids_of(events) == front_matter_steps(RUNBOOK)
    assert (pdd / "artifacts" / "cli" / "rc").read_text().strip() == "0"
    assert [r["step"] for r in audit(tmp_path)] == front_matter_steps(RUNBOOK)


def test_unattended_run_without_approval_stops_before_the_change(monitoring, tmp_path):  # noqa: F811
    pdd = private_data_dir(tmp_path, monitoring, approved=False)
    env = dict(os.environ, **yaml.safe_load((pdd / "env" / "envvars").read_text()))
    extravars = yaml.safe_load((pdd / "env" / "extravars").read_text())
    playbook = Path(sys.executable).with_name("ansible-playbook")
    proc = subprocess.run(
        [
            str(playbook),
            "-i",
            str(pdd / "inventory" / "hosts.yml"),
            "-e",
            json.dumps(extravars),
            str(pdd / "project" / PLAYBOOK),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert "reload-prometheus was not approved" in proc.stdout
    records = audit(tmp_path)
    steps = front_matter_steps(RUNBOOK)
    stop = steps.index("reload-prometheus")
    assert [r["step"] for r in records] == steps[: stop + 1]
    assert records[-1]["status"] == "failed" and records[-1]["changed"] is False


def test_steps_of_reads_block_and_task_names():
    class Item:  # the attributes the callback reads from ansible's Block and Task
        def __init__(self, name, block=None):
            self.name, self.block, self.rescue, self.always = name, block or [], [], []

    play = Item(
        "play",
        [
            Item("", [Item("[one] First"), Item("not a step")]),
            Item("[two] Second", [Item("[two] Ask for approval"), Item("[two] Act")]),
            Item("", [Item("[three] Third")]),
        ],
    )
    play.tasks = play.block
    assert runbook_progress.steps_of(play) == [("one", "First"), ("two", "Second"), ("three", "Third")]


CANARY = "canary-secret-4c2a9e71"


def test_an_alerts_run_leaves_no_secret_in_the_runners_artifacts(monitoring, tmp_path):  # noqa: F811
    """Issue 18, item 4: a run as Event-Driven Ansible starts it (ansible_eda with the source's event, no
    approval), with a canary in the inventory's secrets; ansible-runner's artifacts (job_events, stdout) and the
    audit do not hold the secret, and the audit holds the alert."""
    ansible_runner = pytest.importorskip("ansible_runner")
    pdd = private_data_dir(tmp_path, monitoring, approved=False)
    inventory = yaml.safe_load((pdd / "inventory" / "hosts.yml").read_text())
    host = inventory["all"]["children"]["monitoring"]["hosts"]["localhost"]
    host.update(
        {
            "backup_components": {"db": {"type": "mariadb", "container": "db", "password": CANARY}},
            "monitoring_alertmanager_responder": {"url": "http://127.0.0.1:5001/", "token": CANARY},
            "compose_app_journal_root": str(tmp_path / "journal"),
        }
    )
    (pdd / "inventory" / "hosts.yml").write_text(yaml.safe_dump(inventory))
    extravars = yaml.safe_load((pdd / "env" / "extravars").read_text())
    event = {
        "runbook_id": RUNBOOK,
        "alert_group": '{}:{alertname="TargetDown"}',
        "alertnames": ["TargetDown"],
        "alerts": [
            {
                "fingerprint": "9f8e7d6c5b4a3f2e",
                "labels": {"alertname": "TargetDown", "runbook_id": RUNBOOK},
                "annotations": {"summary": "a target is down"},
                "startsAt": "2026-12-03T03:00:00Z",
            }
        ],
    }
    extravars["ansible_eda"] = {"ruleset": "alerts", "rule": "run", "event": event}
    (pdd / "env" / "extravars").write_text(yaml.safe_dump(extravars))
    run = ansible_runner.run(private_data_dir=str(pdd), playbook=PLAYBOOK, ident="alert", quiet=True)
    stdout = run.stdout.read()
    assert run.rc == 2, stdout[-3000:]  # reload-prometheus waits for approval: nobody allow-listed it
    artifacts = pdd / "artifacts" / "alert"
    events = list((artifacts / "job_events").glob("*.json"))
    assert len(events) > 20
    leaked = [
        str(p)
        for p in [*artifacts.rglob("*"), tmp_path / "audit" / "runbooks.jsonl"]
        if p.is_file() and CANARY in p.read_text(errors="replace")
    ]
    assert leaked == []
    (run_record,) = audit(tmp_path, "run")
    assert run_record["outcome"] == "awaiting_approval" and run_record["trigger"]["by"] == "alert"
    assert run_record["trigger"]["alerts"][0]["fingerprint"] == "9f8e7d6c5b4a3f2e"
