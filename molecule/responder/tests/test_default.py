"""The responder role on a sandbox host: ansible-rulebook as the systemd service opsbook-responder, fed by a real
Alertmanager. What an operator needs: the service runs and restarts, the token is nowhere but its 0600 file,
an unauthenticated POST starts nothing, an alert starts one run whose outcome the audit and the metrics file
give, and a runbook that failed twice in a row starts no third run (halted) while another runbook still runs."""

from __future__ import annotations

import json
import shlex
import time
from datetime import UTC, datetime, timedelta

TOKEN = "responder-sandbox-token-0123456789"
AUDIT = "/var/log/opsbook/runbook-audit.jsonl"
METRICS = "/var/lib/node_exporter/textfile_collector/opsbook_runbooks.prom"
CONFIG = "/etc/opsbook-responder"


def curl(host, *args: str) -> str:
    return host.check_output("curl -sS %s" % " ".join(shlex.quote(a) for a in args))


def post_alert(host, labels: dict) -> None:
    """An alert as Prometheus sends it to Alertmanager, firing for 10 minutes."""
    now = datetime.now(UTC)
    alert = [{"labels": labels, "startsAt": now.isoformat(), "endsAt": (now + timedelta(minutes=10)).isoformat()}]
    curl(host, "-f", "-X", "POST", "-H", "Content-Type: application/json", "--data", json.dumps(alert),
         "http://127.0.0.1:9093/api/v2/alerts")


def records(host) -> list[dict]:
    if not host.file(AUDIT).exists:
        return []
    return [json.loads(line) for line in host.file(AUDIT).content_string.splitlines() if line.strip()]


def runs(host) -> list[dict]:
    return [r for r in records(host) if r["record"] == "run"]


def wait_for(check, timeout: float, what: str, host):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    journal = host.run("journalctl -u opsbook-responder --no-pager -n 80").stdout
    raise AssertionError("%s within %s s; the responder's journal:\n%s" % (what, timeout, journal))


def test_the_service_runs_enabled_with_the_token_only_in_its_file(host):
    service = host.service("opsbook-responder")
    assert service.is_running and service.is_enabled
    vars_file = host.file(CONFIG + "/responder.yml")
    assert vars_file.mode == 0o600
    assert TOKEN in vars_file.content_string
    assert host.file(CONFIG + "/inventory.yml").mode == 0o600
    assert TOKEN not in host.file("/etc/systemd/system/opsbook-responder.service").content_string
    assert TOKEN not in host.check_output("ps -eo args")
    assert TOKEN not in host.run("journalctl -u opsbook-responder --no-pager").stdout
    java = host.check_output("/opt/opsbook-responder/venv/bin/python -c 'import shutil; print(shutil.which(\"java\"))'")
    assert java.strip() == "/usr/bin/java"
    assert host.check_output("/opt/opsbook-responder/venv/bin/ansible-rulebook --version").startswith(
        "ansible-rulebook [1.3.2]")
    listening = host.check_output("ss -Hltn")
    assert "127.0.0.1:5001" in listening and "0.0.0.0:5001" not in listening


def test_a_post_without_the_token_gets_401_and_starts_nothing(host):
    before = len(runs(host))
    answer = curl(host, "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "--data", "{}",
                  "http://127.0.0.1:5001/alerts")
    assert answer == "401"
    time.sleep(2)
    assert len(runs(host)) == before


def test_alerts_start_runs_until_the_runbook_failed_twice_in_a_row(host):
    # Two outages of the trial project: two alert groups (group_by alertname, project), two runs; each fails at its
    # first read-only step (the project does not exist), so the second makes two failures in a row.
    assert runs(host) == []
    post_alert(host, {"alertname": "BackendDown", "runbook_id": "service-down", "project": "trial-1",
                      "severity": "critical"})
    first = wait_for(lambda: runs(host), 120, "the first run", host)
    assert [r["outcome"] for r in first] == ["failed"]
    assert first[0]["trigger"]["by"] == "alert" and first[0]["runbook"] == "service-down"
    assert first[0]["trigger"]["alerts"][0]["labels"]["project"] == "trial-1"
    post_alert(host, {"alertname": "BackendDown", "runbook_id": "service-down", "project": "trial-2",
                      "severity": "critical"})
    wait_for(lambda: len(runs(host)) >= 2, 120, "the second run", host)
    metrics = host.file(METRICS).content_string
    assert 'opsbook_runbook_consecutive_failures{runbook="service-down"} 2' in metrics
    assert 'opsbook_runbook_runs_total{outcome="failed",runbook="service-down",trigger="alert"} 2' in metrics

    # A third outage: halted, no run; the journal says why.
    post_alert(host, {"alertname": "BackendDown", "runbook_id": "service-down", "project": "trial-3",
                      "severity": "critical"})
    wait_for(lambda: "halted: runbook service-down" in host.run(
        "journalctl -u opsbook-responder --no-pager").stdout, 60, "the halt in the journal", host)
    # An alert of another runbook still runs; the automation's own alerts never do.
    post_alert(host, {"alertname": "RunbookAwaitingApproval", "runbook_id": "monitoring-broken",
                      "automation": "manual", "severity": "warning", "runbook": "service-down"})
    post_alert(host, {"alertname": "RedisDown", "runbook_id": "redis-problems", "project": "trial-1",
                      "severity": "critical"})
    wait_for(lambda: any(r["runbook"] == "redis-problems" for r in runs(host)), 120, "the redis-problems run", host)
    time.sleep(3)  # room for a wrong run to show
    assert sorted(r["runbook"] for r in runs(host)) == ["redis-problems", "service-down", "service-down"]


def test_the_service_comes_back_after_a_crash(host):
    pid = host.check_output("systemctl show -p MainPID --value opsbook-responder").strip()
    host.check_output("kill -9 %s" % pid)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        code = host.run("curl -s -o /dev/null -w '%{http_code}' -X POST http://127.0.0.1:5001/").stdout
        if code == "401":
            break
        time.sleep(1)
    assert code == "401"
    assert host.check_output("systemctl show -p MainPID --value opsbook-responder").strip() != pid
