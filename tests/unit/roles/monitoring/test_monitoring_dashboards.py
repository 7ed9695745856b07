"""Grafana dashboards of the monitoring role: valid JSON, the expected set, and every PromQL expression parses
(each one becomes a recording rule that `promtool check rules` must accept), under every platform's profile: the
HTTP dashboards are templates on the monitoring_http_* metrics, a platform may add its own."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import PLATFORMS, ROLE, ROLE_VARS, profile_variables, render

STATIC = sorted((ROLE / "files" / "dashboards").glob("*.json"))
TEMPLATED = ROLE_VARS["__monitoring_http_dashboards"]
PLATFORM_DASHBOARDS = ROLE_VARS["__monitoring_platform_dashboards"]
EXPECTED = {"overview", "api-performance", "slo", "hosts", "containers", "databases", "redis"}


def dashboards(platform: str) -> dict[str, dict]:
    """name -> dashboard as the role writes it for that platform's profile."""
    found = {p.stem: json.loads(p.read_text()) for p in STATIC}
    for name in TEMPLATED:
        found[name] = json.loads(render(f"grafana/dashboards/{name}.json.j2", profile_variables(platform)))
    for name in PLATFORM_DASHBOARDS.get(platform, []):
        found[name] = json.loads((ROLE / "files" / "platform_dashboards" / platform / f"{name}.json").read_text())
    return found


def expressions(doc):
    return [(panel["title"], target["expr"]) for panel in doc["panels"] for target in panel.get("targets", [])]


def test_the_dashboard_set():
    assert set(dashboards("generic")) == EXPECTED
    assert set(dashboards("helloagents")) == EXPECTED | {"sandbox"}
    assert sorted(p.name for p in (ROLE / "templates" / "grafana" / "dashboards").glob("*.json.j2")) == sorted(
        f"{n}.json.j2" for n in TEMPLATED
    )


def test_the_default_dashboards_query_the_agentchat_names():
    api = dict(expressions(dashboards("generic")["api-performance"]))
    assert api["Requests per second by path"] == 'sum by (path) (rate(http_requests_total{job="app"}[5m]))'
    assert api["Failed requests per second by path"] == (
        'sum by (path) (rate(http_requests_total{job="app", status=~"5.."}[5m]))'
    )
    slo = dict(expressions(dashboards("generic")["slo"]))
    assert slo["Burn rate 1h"] == "job:slo_errors_per_request:ratio_rate1h / 0.005"


def test_the_astron_agent_dashboards_read_codes_and_microseconds():
    api = dict(expressions(dashboards("astron-agent")["api-performance"]))
    assert api["Failed requests per second by path"] == (
        'sum by (path) (rate(server_request_total{job="app", code!="0"}[5m]))'
    )
    assert api["P95 latency by path"].endswith("server_request_time_microseconds_bucket{job=\"app\"}[5m]))) / 1000000")


@pytest.mark.parametrize("platform", PLATFORMS)
def test_dashboard_is_valid_json_with_queries(platform):
    for name, doc in dashboards(platform).items():
        assert doc["uid"] == f"opsbook-{name}" and doc["title"]
        assert len({p["id"] for p in doc["panels"]}) == len(doc["panels"])
        assert expressions(doc), f"{name}: no query"
        for panel in doc["panels"]:
            assert panel["datasource"]["uid"] == "prometheus", (
                f"{name}: {panel['title']} not on the provisioned datasource"
            )


@pytest.mark.parametrize("platform", PLATFORMS)
def test_every_expression_parses(promtool, tmp_path, platform):
    rules = [
        {"record": f"dashboard:{name.replace('-', '_')}:{i}", "expr": expr}
        for name, doc in dashboards(platform).items()
        for i, expr in enumerate(query[1] for query in expressions(doc))
    ]
    (tmp_path / "dashboards.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    proc = promtool.run(["check", "rules", "dashboards.yml"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(rules)} rules found" in proc.stdout + proc.stderr


def test_a_broken_expression_is_caught(promtool, tmp_path):
    (tmp_path / "bad.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "d", "rules": [{"record": "dashboard:bad", "expr": "sum by (job (up)"}]}]})
    )
    assert promtool.run(["check", "rules", "bad.yml"], tmp_path).returncode != 0
