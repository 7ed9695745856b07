"""The monitoring role's Alertmanager configuration: accepted by amtool with and without receivers, the route tree
proven by `amtool config routes test`, secrets only where they belong."""

from __future__ import annotations

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
