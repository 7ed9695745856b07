# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""A runbook run's outcome (issue 18, items 3 and 4): the audit's run record, the Prometheus textfile the
callback keeps (judged by promtool), and the runbook role holding an alert's run back while the project lock is
held or the alert is silenced in a real Alertmanager. Real ansible-playbook runs of the real approval gates."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import json
import multiprocessing
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ansible_collections.opsbook.stack.plugins.callback import runbook_progress as rp
from ansible_collections.opsbook.stack.plugins.module_utils._project_lock import hold_detached, release_detached
from ansible_collections.opsbook.stack.tests.unit.monitoring_fixtures import monitoring  # noqa: F401 pylint: disable=unused-import
from ansible_collections.opsbook.stack.tests.unit.plugins.callback.test_runbook_progress_trigger import (
    EVENT,
    gated_play,
    run_play,
)
from ansible_collections.opsbook.stack.tests.unit.prom_tools import Tool, promtool  # noqa: F401 pylint: disable=unused-import

ALERT_EVENT = dict(EVENT, runbook_id="service-down", alertnames=["BackendDown"])


def metrics(path: Path) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    return rp.read_metrics(path.read_text())


def runs(path: Path, runbook: str, outcome: str, trigger: str) -> float:
    key = (("outcome", outcome), ("runbook", runbook), ("trigger", trigger))
    return metrics(path)["opsbook_runbook_runs_total"].get(key, 0)


def failures(path: Path, runbook: str) -> float:
    return metrics(path)["opsbook_runbook_consecutive_failures"][(("runbook", runbook),)]


def waiting(path: Path) -> list[tuple[str, str]]:
    return sorted(
        (dict(k)["runbook"], dict(k)["step"]) for k in metrics(path).get("opsbook_runbook_awaiting_approval", {})
    )


def check_metrics(promtool: Tool, path: Path) -> None:  # noqa: F811 pylint: disable=redefined-outer-name
    done = promtool.run(["check", "metrics"], path.parent, stdin=path.read_text())
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_metrics_count_outcomes_failures_in_a_row_and_waiting_steps(tmp_path, promtool):  # noqa: F811 pylint: disable=redefined-outer-name
    path = tmp_path / "textfile" / "opsbook_runbooks.prom"
    rp.update_metrics(str(path), "service-down", "failed", "alert", [], 100.0)
    rp.update_metrics(str(path), "service-down", "failed", "alert", [], 200.0)
    assert failures(path, "service-down") == 2
    rp.update_metrics(str(path), "service-down", "awaiting_approval", "alert", ["refresh-upstreams"], 300.0)
    rp.update_metrics(str(path), "rollback", "held_off", "alert", [], 310.0)
    # Waiting and held-off runs leave the failures in a row as they were.
    assert failures(path, "service-down") == 2 and failures(path, "rollback") == 0
    assert waiting(path) == [("service-down", "refresh-upstreams")]
    check_metrics(promtool, path)
    rp.update_metrics(str(path), "service-down", "succeeded", "operator", [], 400.0)
    assert failures(path, "service-down") == 0 and waiting(path) == []
    assert runs(path, "service-down", "failed", "alert") == 2
    assert runs(path, "service-down", "succeeded", "operator") == 1
    # Every outcome of a runbook that ran starts at 0, so increase() sees its first one.
    assert runs(path, "service-down", "held_off", "operator") == 0
    assert ("runbook", "rollback") in [k[1] for k in metrics(path)["opsbook_runbook_runs_total"]]
    last = metrics(path)["opsbook_runbook_last_run_timestamp_seconds"]
    assert last[(("outcome", "failed"), ("runbook", "service-down"))] == 200.0
    check_metrics(promtool, path)
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".opsbook_runbooks.")] == []


def _count_many(path: str, n: int) -> None:
    for _run in range(n):
        rp.update_metrics(path, "service-down", "succeeded", "alert", [], time.time())


def test_runs_finishing_at_once_all_count(tmp_path):
    path = str(tmp_path / "opsbook_runbooks.prom")
    workers = [multiprocessing.get_context("fork").Process(target=_count_many, args=(path, 40)) for _worker in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert runs(Path(path), "service-down", "succeeded", "alert") == 160


def play_env_extra(tmp_path: Path) -> dict:
    return {"OPSBOOK_RUNBOOK_METRICS_FILE": str(tmp_path / "textfile" / "opsbook_runbooks.prom")}


def test_an_alerts_run_that_stops_at_a_gate_awaits_approval_and_an_approved_rerun_clears_it(
    tmp_path,
    monitoring,  # noqa: F811
    promtool,  # noqa: F811 pylint: disable=redefined-outer-name
):
    prom = tmp_path / "textfile" / "opsbook_runbooks.prom"
    play = gated_play("service-down", ["start-services", "refresh-upstreams"])
    extra = {
        "ansible_eda": {"ruleset": "alerts", "rule": "run", "event": ALERT_EVENT},
        "runbook_auto_approve": [{"runbook": "service-down", "steps": ["start-services"], "alerts": ["BackendDown"]}],
    }
    (run,) = run_play(
        tmp_path, extra, play=play, succeeds=False, mon=monitoring, records="run", env=play_env_extra(tmp_path)
    )
    assert run["outcome"] == "awaiting_approval", run
    assert run["awaiting_approval"] == ["refresh-upstreams"]
    assert run["approve_with"].startswith(
        "ansible-playbook opsbook.stack.runbook_service_down -e runbook_approved=true"
    )
    assert run["trigger"]["by"] == "alert" and run["hosts"] == {"awaiting_approval": ["localhost"]}
    assert waiting(prom) == [("service-down", "refresh-upstreams")]
    assert runs(prom, "service-down", "awaiting_approval", "alert") == 1
    check_metrics(promtool, prom)

    # The operator's approved rerun: succeeded, nothing waits any more.
    approved = {"runbook_approved": True, "runbook_approved_by": "ops on call"}
    records = run_play(tmp_path, approved, play=play, records="run", env=play_env_extra(tmp_path))
    assert records[-1]["outcome"] == "succeeded" and records[-1]["trigger"]["approved_by"] == "ops on call"
    assert waiting(prom) == [] and runs(prom, "service-down", "succeeded", "operator") == 1


FAILING_STEP = """
- name: Runbook trial
  hosts: localhost
  connection: local
  gather_facts: false
  vars:
    runbook_id: trial
  tasks:
    - name: "[break] Fail on purpose"
      tags: [break]
      ansible.builtin.fail:
        msg: broken on purpose
"""


def test_a_failing_step_counts_a_failure_in_a_row(tmp_path):
    prom = tmp_path / "textfile" / "opsbook_runbooks.prom"
    for expected in (1, 2):
        records = run_play(
            tmp_path, None, play=FAILING_STEP, succeeds=False, records="run", env=play_env_extra(tmp_path)
        )
        assert records[-1]["outcome"] == "failed" and records[-1]["hosts"] == {"failed": ["localhost"]}
        assert failures(prom, "trial") == expected


def post_json(url: str, body) -> dict | list | None:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        text = answer.read()
    return json.loads(text) if text else None


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


def test_an_alerts_run_holds_off_while_the_alert_is_silenced_or_the_project_locked(
    tmp_path,
    monitoring,  # noqa: F811
):
    prom = tmp_path / "textfile" / "opsbook_runbooks.prom"
    play = gated_play("service-down", ["start-services"])
    allow = [{"runbook": "service-down", "steps": ["start-services"], "alerts": ["BackendDown"]}]
    labels = {"alertname": "BackendDown", "runbook_id": "service-down", "project": "silenced-%d" % time.time_ns()}
    am = monitoring.alertmanager_url
    post_json(am + "/api/v2/alerts", [{"labels": labels}])
    now = datetime.now(UTC)
    post_json(
        am + "/api/v2/silences",
        {
            "matchers": [{"name": "project", "value": labels["project"], "isRegex": False}],
            "startsAt": now.isoformat(),
            "endsAt": (now + timedelta(minutes=10)).isoformat(),
            "createdBy": "test",
            "comment": "an operator is on it",
        },
    )
    deadline = time.monotonic() + 30
    fingerprint = ""
    while time.monotonic() < deadline and not fingerprint:
        for alert in get_json(am + "/api/v2/alerts"):
            if alert["labels"].get("project") == labels["project"] and alert["status"]["silencedBy"]:
                fingerprint = alert["fingerprint"]
        time.sleep(0.3)
    assert fingerprint, "Alertmanager did not silence the test alert"

    silenced = dict(ALERT_EVENT, alerts=[dict(EVENT["alerts"][0], fingerprint=fingerprint, labels=labels)])
    extra = {"ansible_eda": {"event": silenced}, "runbook_auto_approve": allow}
    records = run_play(tmp_path, extra, play=play, mon=monitoring, records="all", env=play_env_extra(tmp_path))
    assert [r["record"] for r in records] == ["run"], "a step ran: %s" % records
    assert records[0]["outcome"] == "held_off"
    assert records[0]["held_off"] == {"localhost": "the alert is silenced (%s)" % fingerprint}
    assert runs(prom, "service-down", "held_off", "alert") == 1

    # Another fingerprint is not silenced: the allow-listed step runs.
    extra = {"ansible_eda": {"event": ALERT_EVENT}, "runbook_auto_approve": allow}
    (tmp_path / "audit.jsonl").unlink()
    records = run_play(tmp_path, extra, play=play, mon=monitoring, records="all", env=play_env_extra(tmp_path))
    assert [(r["record"], r.get("step"), r["outcome"] if r["record"] == "run" else r["status"]) for r in records] == [
        ("step", "start-services", "changed"),
        ("run", None, "succeeded"),
    ]

    # An upgrade holds the project lock: held off, the holder named.
    journal = tmp_path / "journal"
    token, _holder, _waited = hold_detached("app", "rolling upgrade of backend", str(journal), 0.0, 120.0)
    try:
        (tmp_path / "audit.jsonl").unlink()
        records = run_play(tmp_path, extra, play=play, mon=monitoring, records="all", env=play_env_extra(tmp_path))
    finally:
        release_detached("app", token, str(journal))
    assert [r["record"] for r in records] == ["run"], "a step ran: %s" % records
    assert "the project lock is held" in records[0]["held_off"]["localhost"]
    assert "rolling upgrade of backend" in records[0]["held_off"]["localhost"]

    # Alertmanager does not answer: held off, naming the variable to set.
    (tmp_path / "audit.jsonl").unlink()
    gone = type(monitoring)(
        prometheus_url="", alertmanager_url="http://127.0.0.1:9", prometheus_container="", alertmanager_container=""
    )
    records = run_play(tmp_path, extra, play=play, mon=gone, records="all", env=play_env_extra(tmp_path))
    assert [r["record"] for r in records] == ["run"]
    assert "set runbook_alertmanager_url" in records[0]["held_off"]["localhost"]
    assert runs(prom, "service-down", "held_off", "alert") == 3


def test_a_run_by_hand_is_never_held_off(tmp_path):
    # No Alertmanager, and a lock held: a run by hand is the operator's call; its gated steps wait for the lock.
    records = run_play(
        tmp_path,
        {"runbook_approved": True, "runbook_alertmanager_url": "http://127.0.0.1:9"},
        play=gated_play("service-down", ["start-services"]),
        records="all",
    )
    assert [r["record"] for r in records] == ["step", "run"] and records[-1]["outcome"] == "succeeded"


def test_the_run_record_is_written_after_the_metrics_of_that_run(tmp_path, monkeypatch):
    """Whoever sees a run's record (an operator, EDA, the runbooks scenario) finds that run in the metrics: under
    load the scenario once read the record and found no metrics file yet."""
    audit, prom = tmp_path / "audit.jsonl", tmp_path / "textfile" / "opsbook_runbooks.prom"
    monkeypatch.setenv("OPSBOOK_RUNBOOK_AUDIT_FILE", str(audit))
    monkeypatch.setenv("OPSBOOK_RUNBOOK_METRICS_FILE", str(prom))
    callback = rp.CallbackModule()
    callback.runbook, callback.ran_steps = "service-down", True
    seen_at_record: list[float] = []
    append = callback._append  # pylint: disable=protected-access

    def recording_append(lines: list[str]) -> None:
        if any(json.loads(line).get("record") == "run" for line in lines):
            seen_at_record.append(runs(prom, "service-down", "succeeded", "operator") if prom.exists() else -1)
        append(lines)

    monkeypatch.setattr(callback, "_append", recording_append)
    callback.v2_playbook_on_stats(type("Stats", (), {"processed": {"app1": 1}, "failures": {}, "dark": {}})())
    assert seen_at_record == [1], seen_at_record
    assert [json.loads(line)["record"] for line in audit.read_text().splitlines()] == ["run"]
