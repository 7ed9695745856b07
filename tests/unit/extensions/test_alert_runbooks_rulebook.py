# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The shipped rulebook opsbook.stack.alert_runbooks run by the real ansible-rulebook (1.3.2, Java 17), with
the collection's alertmanager source and the real runbook playbook opsbook.stack.runbook_service_down: what
reaches a runbook run, counted from the audit file the runbook_progress callback writes (one run_id per run).

The runbook runs against localhost with a project that does not exist, so it fails at its first steps and
changes nothing; what is under test is which notifications start a run, and what the run is told. Its two failed
runs in a row then halt the runbook: a third alert group starts no run (the callback's metrics file, read by the
source). A real Alertmanager (the monitoring fixture) answers the runbook role's silence check."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import json
import os
import shutil
import subprocess
import sys
import time
import typing as t
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from ansible_collections.opsbook.stack.tests.support.processes import stop_group
from ansible_collections.opsbook.stack.tests.unit.http_fixtures import free_port
from ansible_collections.opsbook.stack.tests.unit.local_play import COLLECTIONS_ROOT
from ansible_collections.opsbook.stack.tests.unit.monitoring_fixtures import monitoring  # noqa: F401 pylint: disable=unused-import

BIN = Path(sys.executable).parent
TOKEN = "rulebook-token-0123456789abcdef"
CANARY = "canary-secret-7d1f0e"

pytestmark = pytest.mark.skipif(
    not (BIN / "ansible-rulebook").exists() or shutil.which("java") is None,
    reason="ansible-rulebook and Java 17 come with ./dev deps and ./dev venv",
)


def notification(fingerprint: str, group_key: str, status: str = "firing", runbook_id: str = "service-down"):
    return {
        "version": "4",
        "groupKey": group_key,
        "status": status,
        "receiver": "responder",
        "externalURL": "http://127.0.0.1:9093",
        "alerts": [
            {
                "status": status,
                "labels": {"alertname": "BackendDown", "runbook_id": runbook_id, "project": "opsbook-eda-trial"},
                "annotations": {"summary": "no backend replica answers"},
                "startsAt": "2026-12-03T03:00:00Z",
                "generatorURL": "http://127.0.0.1:9090/graph",
                "fingerprint": fingerprint,
            }
        ],
    }


def post(port: int, payload: t.Any, token: str | None = TOKEN) -> int:
    request = urllib.request.Request(
        "http://127.0.0.1:%d/alerts" % port, data=json.dumps(payload).encode(), method="POST"
    )
    request.add_header("Content-Type", "application/json")
    request.add_header("X-Canary", CANARY)
    if token:
        request.add_header("Authorization", "Bearer %s" % token)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def runs(audit: Path) -> dict[str, list[dict[str, t.Any]]]:
    """The audit's records grouped by run_id."""
    found: dict[str, list[dict[str, t.Any]]] = {}
    if audit.exists():
        for line in audit.read_text().splitlines():
            record = json.loads(line)
            found.setdefault(record["run_id"], []).append(record)
    return found


def outcomes(audit: Path) -> list[str]:
    """The outcomes of the finished runs in the audit."""
    return [r["outcome"] for records in runs(audit).values() for r in records if r["record"] == "run"]


def wait_for(check: t.Callable[[], bool], timeout: float, what: str, engine: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert engine.poll() is None and time.monotonic() < deadline, "%s within %.0f s; ansible-rulebook said:\n%s" % (
            what,
            timeout,
            log.read_text()[-6000:],
        )
        time.sleep(0.2)


def test_alerts_start_one_runbook_run_per_group_and_nothing_else(tmp_path, monitoring):  # noqa: F811
    port = free_port()
    metrics = tmp_path / "textfile" / "opsbook_runbooks.prom"
    audit = tmp_path / "audit.jsonl"
    log = tmp_path / "rulebook.log"
    (tmp_path / "inventory.yml").write_text(
        yaml.safe_dump(
            {
                "all": {
                    "children": {
                        "app": {
                            "hosts": {
                                "localhost": {
                                    "ansible_connection": "local",
                                    "ansible_python_interpreter": sys.executable,
                                    "ansible_become": False,
                                    "runbook_project": "opsbook-eda-trial",
                                    "runbook_project_dir": str(tmp_path / "no-such-project"),
                                    # The hold-off check of an alert's run: a real Alertmanager, the lock in tmp.
                                    "runbook_alertmanager_url": monitoring.alertmanager_url,
                                    "compose_app_journal_root": str(tmp_path / "journal"),
                                }
                            }
                        }
                    }
                }
            }
        )
    )
    (tmp_path / "vars.yml").write_text(
        yaml.safe_dump(
            {
                "opsbook_responder_port": port,
                "opsbook_responder_token": TOKEN,
                "opsbook_responder_dedup_window": 0,
                "opsbook_responder_metrics_file": str(metrics),
            }
        )
    )
    env = dict(
        os.environ,
        PATH="%s:%s" % (BIN, os.environ.get("PATH", "")),
        ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS_ROOT),
        ANSIBLE_CALLBACKS_ENABLED="opsbook.stack.runbook_progress",
        OPSBOOK_RUNBOOK_AUDIT_FILE=str(audit),
        OPSBOOK_RUNBOOK_METRICS_FILE=str(metrics),
        ANSIBLE_LOCALHOST_WARNING="false",
        HOME=str(tmp_path),  # caches stay in the test's directory
        TMPDIR=str(tmp_path),  # and so do run_playbook's private data dirs (removed after each run)
    )
    argv = [str(BIN / "ansible-rulebook"), "-r", "opsbook.stack.alert_runbooks", "-i", "inventory.yml"]
    argv += ["--vars", "vars.yml", "-v"]
    with log.open("w") as out:
        engine = subprocess.Popen(  # pylint: disable=consider-using-with
            argv, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:

        def listening() -> bool:
            return _listening(port) and post(port, {}, token=None) == 401

        wait_for(listening, 90, "the source to answer", engine, log)
        # No run: no token, a wrong token, a resolved alert, an alert of a runbook the source does not allow.
        group = '{}:{alertname="BackendDown"}'
        assert post(port, notification("a1", group), token=None) == 401
        assert post(port, notification("a1", group), token="rulebook-token-wrong-0000000") == 401
        assert post(port, notification("a1", group, status="resolved")) == 200
        assert post(port, notification("a1", group, runbook_id="not-a-runbook")) == 200
        # One run for a burst: the source lets all three through (dedup_window 0), the throttle keeps one.
        for fingerprint in ("a1", "a2", "a1"):
            assert post(port, notification(fingerprint, group)) == 200
        # A second alert group is a second run.
        assert post(port, notification("b1", '{}:{project="other"}')) == 200
        wait_for(lambda: len(outcomes(audit)) >= 2, 120, "two finished runbook runs in the audit", engine, log)
        # Both failed (no such project): the runbook failed twice in a row, and a third group starts no run.
        assert post(port, notification("c1", '{}:{project="third"}')) == 200
        wait_for(lambda: "halted: runbook service-down" in log.read_text(), 30, "the halt", engine, log)
        time.sleep(3)  # room for a wrong third run to show
    finally:
        stop_group(engine)

    found = runs(audit)
    assert len(found) == 2, json.dumps(found, indent=1)
    groups = set()
    for records in found.values():
        first = records[0]
        assert first["runbook"] == "service-down"
        trigger = first["trigger"]
        assert trigger["by"] == "alert" and trigger["approved"] is False
        assert trigger["rule"] == "Run the runbook named by the alert's runbook_id label"
        assert [a["labels"]["alertname"] for a in trigger["alerts"]] == ["BackendDown"]
        assert all(a["startsAt"] == "2026-12-03T03:00:00Z" for a in trigger["alerts"])
        # The run failed at its read-only steps: no changing step was reached without approval.
        assert {r["step"] for r in records if r["record"] == "step"} <= {"check-containers", "read-logs", "check-nginx"}
        assert [r["outcome"] for r in records if r["record"] == "run"] == ["failed"]
        groups.add(trigger["alert_group"])
    assert groups == {'{}:{alertname="BackendDown"}', '{}:{project="other"}'}
    # Neither the token nor a request header reached the audit or ansible-runner's artifacts.
    leaked = [
        str(path)
        for path in tmp_path.rglob("*")
        if path.is_file() and path.name != "vars.yml" and _has(path, (TOKEN, CANARY))
    ]
    assert leaked == []


def _listening(port: int) -> bool:
    import socket  # pylint: disable=import-outside-toplevel

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _has(path: Path, needles: tuple[str, ...]) -> bool:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return False
    return any(needle in text for needle in needles)
