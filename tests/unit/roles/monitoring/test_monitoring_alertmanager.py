"""The monitoring role's Alertmanager configuration: accepted by amtool with and without receivers, the route tree
proven by `amtool config routes test`, secrets only where they belong."""

from __future__ import annotations

import subprocess

import conftest
import pytest
import yaml
from conftest import render

ALL_RECEIVERS = {
    "monitoring_alertmanager_slack_api_url": "https://hooks.slack.example/services/T000/B000/XXXX",
    "monitoring_alertmanager_pagerduty_routing_key": "0123456789abcdef0123456789abcdef",
    "monitoring_alertmanager_email_to": ["oncall@example.org", "ops@example.org"],
    "monitoring_alertmanager_smtp": {
        "smarthost": "smtp.example.org:587",
        "from": "alertmanager@example.org",
        "auth_username": "alertmanager",
        "auth_password": "smtp-secret-value",
    },
    "monitoring_alertmanager_webhooks": [
        {"url": "https://hooks.example.org/critical", "receivers": ["pager"]},
        {"url": "https://hooks.example.org/all", "receivers": ["chat"]},
    ],
    "monitoring_alertmanager_watchdog_url": "https://deadman.example.org/ping/abc",
}

# labels -> receivers, in the order Alertmanager notifies them.
ROUTES = [
    ({"alertname": "EndpointDown", "severity": "critical"}, "pager,chat"),
    ({"alertname": "HighErrorRateWarning", "severity": "warning"}, "chat,email"),
    ({"alertname": "SomethingToKnow", "severity": "info"}, "chat"),
    ({"alertname": "Watchdog", "severity": "none"}, "watchdog"),
    ({"alertname": "NoSeverity"}, "chat"),
    ({"alertname": "BackupFailed", "severity": "critical", "component": "mysql"}, "pager,chat"),
]


def assert_routes(amtool, tmp_path, variables, labels: dict, receivers: str) -> None:
    """amtool config routes test: an alert with these labels goes to exactly these receivers."""
    write(tmp_path, variables)
    argv = [
        "config",
        "routes",
        "test",
        "--config.file=alertmanager.yml",
        f"--verify.receivers={receivers}",
        *[f"{k}={v}" for k, v in labels.items()],
    ]
    proc = amtool.run(argv, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def write(tmp_path, variables=None):
    text = render("alertmanager.yml.j2", variables)
    (tmp_path / "alertmanager.yml").write_text(text)
    return yaml.safe_load(text)


@pytest.mark.parametrize("variables", [{}, ALL_RECEIVERS], ids=["no-receivers", "every-receiver"])
def test_amtool_accepts_the_config(amtool, tmp_path, variables):
    write(tmp_path, variables)
    proc = amtool.run(["check-config", "alertmanager.yml"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_without_receivers_nobody_is_notified(tmp_path):
    doc = write(tmp_path)
    assert [r["name"] for r in doc["receivers"]] == ["pager", "chat", "email", "watchdog"]
    assert all(set(r) == {"name"} for r in doc["receivers"])


def test_every_receiver_gets_its_integrations(tmp_path):
    doc = write(tmp_path, ALL_RECEIVERS)
    receivers = {r["name"]: r for r in doc["receivers"]}
    assert (
        receivers["pager"]["pagerduty_configs"][0]["routing_key"]
        == ALL_RECEIVERS["monitoring_alertmanager_pagerduty_routing_key"]
    )
    assert [h["url"] for h in receivers["pager"]["webhook_configs"]] == ["https://hooks.example.org/critical"]
    assert receivers["chat"]["slack_configs"][0]["channel"] == "#alerts"
    assert [h["url"] for h in receivers["chat"]["webhook_configs"]] == ["https://hooks.example.org/all"]
    assert [e["to"] for e in receivers["email"]["email_configs"]] == ALL_RECEIVERS["monitoring_alertmanager_email_to"]
    assert receivers["watchdog"]["webhook_configs"][0]["url"].startswith("https://deadman.")
    assert doc["global"]["smtp_smarthost"] == "smtp.example.org:587"


@pytest.mark.parametrize("variables", [{}, ALL_RECEIVERS], ids=["no-receivers", "every-receiver"])
@pytest.mark.parametrize(
    "labels,receivers", ROUTES, ids=[",".join(f"{k}={v}" for k, v in route[0].items()) for route in ROUTES]
)
def test_route_tree(amtool, tmp_path, variables, labels, receivers):
    assert_routes(amtool, tmp_path, variables, labels, receivers)


def test_route_test_can_fail(amtool, tmp_path):
    write(tmp_path)
    proc = amtool.run(
        ["config", "routes", "test", "--config.file=alertmanager.yml", "--verify.receivers=chat", "severity=critical"],
        tmp_path,
    )
    assert proc.returncode != 0


def test_critical_inhibits_warning_of_the_same_alert_and_instance(tmp_path):
    doc = write(tmp_path)
    rules = doc["inhibit_rules"]
    assert {
        "source_matchers": ['severity="critical"'],
        "target_matchers": ['severity="warning"'],
        "equal": ["alertname", "instance"],
    } in rules
    pairs = {(r["source_matchers"][0], r["target_matchers"][0]) for r in rules[1:]}
    assert ('alertname="HighErrorRateCritical"', 'alertname="HighErrorRateWarning"') in pairs
    assert ('alertname="HighLatencyCritical"', 'alertname="HighLatencyWarning"') in pairs


def test_grouping_and_repeat_intervals_follow_the_variables(tmp_path):
    doc = write(
        tmp_path,
        {
            "monitoring_alertmanager_group_wait": "11s",
            "monitoring_alertmanager_repeat_interval": "3h",
            "monitoring_alertmanager_critical_repeat_interval": "30m",
        },
    )
    route = doc["route"]
    assert route["group_wait"] == "11s" and route["repeat_interval"] == "3h"
    assert next(r for r in route["routes"] if r["receiver"] == "pager")["repeat_interval"] == "30m"


def test_a_broken_config_is_rejected_by_amtool(amtool, tmp_path):
    """What the role does before promoting: the same check must reject a config Alertmanager would refuse."""
    write(tmp_path, {"monitoring_alertmanager_group_wait": "soon"})
    proc = amtool.run(["check-config", "alertmanager.yml"], tmp_path)
    assert proc.returncode != 0
    assert "soon" in proc.stdout + proc.stderr


# The Event-Driven Ansible responder (monitoring_alertmanager_responder): one more receiver and route, the rest as
# before.
RESPONDER_TOKEN = "Canary-responder-token-0123456789"
RESPONDER = {
    "monitoring_alertmanager_responder": {"url": "http://127.0.0.1:5001/alerts", "token": RESPONDER_TOKEN},
}
# The template before the responder existed (the last commit that changed it): {} must render what it rendered.
TEMPLATE_BEFORE_RESPONDER = "4f880fb89b5739e163c7e21a027ed92aa89115c1"

# labels -> receivers with a responder set.
RESPONDER_ROUTES = [
    ({"alertname": "BackendDown", "runbook_id": "service-down", "severity": "critical", "project": "demo"},
     "responder,pager,chat"),
    ({"alertname": "HighErrorRateWarning", "runbook_id": "high-error-rate", "severity": "warning", "job": "backend"},
     "responder,chat,email"),
    ({"alertname": "RunbookAwaitingApproval", "runbook_id": "monitoring-broken", "automation": "manual",
      "severity": "warning"}, "chat,email"),
    ({"alertname": "RunbookAutomationHalted", "runbook_id": "service-down", "automation": "manual",
      "severity": "critical"}, "pager,chat"),
    ({"alertname": "Watchdog", "runbook_id": "monitoring-broken", "severity": "none"}, "watchdog"),
    ({"alertname": "EndpointDown", "severity": "critical"}, "pager,chat"),
    ({"alertname": "SomethingToKnow", "severity": "info"}, "chat"),
    # No severity route catches it: the root's chat, as without the responder.
    ({"alertname": "NoSeverity", "runbook_id": "service-down"}, "responder,chat"),
]  # fmt: skip


def render_before_responder(monkeypatch, tmp_path, variables):
    """alertmanager.yml.j2 as of TEMPLATE_BEFORE_RESPONDER, rendered the same way (same defaults and filters)."""
    old = subprocess.run(
        [
            "git",
            "-C",
            str(conftest.ROOT),
            "show",
            f"{TEMPLATE_BEFORE_RESPONDER}:roles/monitoring/templates/alertmanager.yml.j2",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert old != (conftest.ROLE / "templates" / "alertmanager.yml.j2").read_text()
    role = tmp_path / "role-before"
    (role / "templates").mkdir(parents=True)
    (role / "templates" / "alertmanager.yml.j2").write_text(old)
    (role / "defaults").symlink_to(conftest.ROLE / "defaults")
    monkeypatch.setattr(conftest, "ROLE", role)
    try:
        return render("alertmanager.yml.j2", variables)
    finally:
        monkeypatch.undo()


@pytest.mark.parametrize("variables", [{}, ALL_RECEIVERS], ids=["no-receivers", "every-receiver"])
def test_without_responder_the_file_is_byte_identical_to_before(monkeypatch, tmp_path, variables):
    before = render_before_responder(monkeypatch, tmp_path, variables)
    assert "responder" not in before
    assert render("alertmanager.yml.j2", variables) == before
    assert render("alertmanager.yml.j2", {**variables, "monitoring_alertmanager_responder": {}}) == before
    assert render("alertmanager.yml.j2", {**variables, **RESPONDER}) != before


@pytest.mark.parametrize("variables", [RESPONDER, {**ALL_RECEIVERS, **RESPONDER}], ids=["responder", "every-receiver"])
def test_amtool_accepts_the_config_with_a_responder(amtool, tmp_path, variables):
    write(tmp_path, variables)
    proc = amtool.run(["check-config", "alertmanager.yml"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_the_responder_receiver_and_route(tmp_path):
    doc = write(tmp_path, {**ALL_RECEIVERS, **RESPONDER})
    receivers = {r["name"]: r for r in doc["receivers"]}
    assert list(receivers) == ["pager", "chat", "email", "watchdog", "responder"]
    assert receivers["responder"] == {
        "name": "responder",
        "webhook_configs": [
            {
                "url": "http://127.0.0.1:5001/alerts",
                "send_resolved": True,
                "http_config": {"authorization": {"type": "Bearer", "credentials": RESPONDER_TOKEN}},
            }
        ],
    }
    routes = doc["route"]["routes"]
    assert [r["receiver"] for r in routes] == ["watchdog", "responder", "pager", "chat", "email", "chat"]
    assert routes[1] == {
        "receiver": "responder",
        "matchers": ['runbook_id=~".+"', 'automation!="manual"'],
        "group_by": ["alertname", "project"],
        "group_wait": "10s",
        "group_interval": "1m",
        "repeat_interval": "4h",
        "continue": True,
    }
    # The other receivers' grouping does not change.
    assert doc["route"]["group_by"] == ["alertname", "job", "instance"]


def test_the_responder_grouping_follows_the_variable(tmp_path):
    responder = {
        **RESPONDER["monitoring_alertmanager_responder"],
        "group_by": ["alertname", "project", "runbook_id"],
        "group_wait": "5s",
        "group_interval": "2m",
        "repeat_interval": "12h",
    }
    doc = write(tmp_path, {"monitoring_alertmanager_responder": responder})
    route = next(r for r in doc["route"]["routes"] if r["receiver"] == "responder")
    assert route["group_by"] == ["alertname", "project", "runbook_id"]
    assert (route["group_wait"], route["group_interval"], route["repeat_interval"]) == ("5s", "2m", "12h")


def test_the_token_is_only_in_the_responder_http_config(tmp_path):
    text = render("alertmanager.yml.j2", {**ALL_RECEIVERS, **RESPONDER})
    assert text.count(RESPONDER_TOKEN) == 1
    line = next(i for i, ln in enumerate(text.splitlines()) if RESPONDER_TOKEN in ln)
    assert text.splitlines()[line].strip() == f'credentials: "{RESPONDER_TOKEN}"'
    assert [ln.strip() for ln in text.splitlines()[line - 4 : line]] == [
        "send_resolved: true",
        "http_config:",
        "authorization:",
        "type: Bearer",
    ]
    doc = yaml.safe_load(text)
    without = [r for r in doc["receivers"] if r["name"] != "responder"]
    assert RESPONDER_TOKEN not in str(without) + str(doc["route"]) + str(doc["global"])


@pytest.mark.parametrize("variables", [RESPONDER, {**ALL_RECEIVERS, **RESPONDER}], ids=["responder", "every-receiver"])
@pytest.mark.parametrize(
    "labels,receivers",
    RESPONDER_ROUTES,
    ids=[",".join(f"{k}={v}" for k, v in route[0].items()) for route in RESPONDER_ROUTES],
)
def test_route_tree_with_a_responder(amtool, tmp_path, variables, labels, receivers):
    assert_routes(amtool, tmp_path, variables, labels, receivers)


@pytest.mark.parametrize(
    "labels,receivers", ROUTES, ids=[",".join(f"{k}={v}" for k, v in route[0].items()) for route in ROUTES]
)
def test_a_responder_changes_nothing_for_the_other_receivers(amtool, tmp_path, labels, receivers):
    """The table without a responder holds with one: none of its alerts names a runbook."""
    write(tmp_path, {**ALL_RECEIVERS, **RESPONDER})
    argv = ["config", "routes", "test", "--config.file=alertmanager.yml", f"--verify.receivers={receivers}"]
    proc = amtool.run([*argv, *[f"{k}={v}" for k, v in labels.items()]], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_responder_route_test_can_fail(amtool, tmp_path):
    """amtool does fail when the responder is expected where it is not: the negative cases above prove something."""
    write(tmp_path, RESPONDER)
    labels = [
        "alertname=RunbookAwaitingApproval",
        "runbook_id=monitoring-broken",
        "automation=manual",
        "severity=warning",
    ]
    proc = amtool.run(
        [
            "config",
            "routes",
            "test",
            "--config.file=alertmanager.yml",
            "--verify.receivers=responder,chat,email",
            *labels,
        ],
        tmp_path,
    )
    assert proc.returncode != 0
