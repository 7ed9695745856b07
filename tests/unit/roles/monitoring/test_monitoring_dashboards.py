"""Grafana dashboards of the monitoring role: valid JSON, the expected set, and every PromQL expression parses
(each one becomes a recording rule that `promtool check rules` must accept)."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import ROLE

DASHBOARDS = sorted((ROLE / "files" / "dashboards").glob("*.json"))
EXPECTED = {"overview", "api-performance", "slo", "hosts", "containers", "databases", "redis"}


def expressions(path):
    doc = json.loads(path.read_text())
    return [(panel["title"], target["expr"]) for panel in doc["panels"] for target in panel.get("targets", [])]


def test_the_dashboard_set():
    assert {p.stem for p in DASHBOARDS} == EXPECTED


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_is_valid_json_with_queries(path):
    doc = json.loads(path.read_text())
    assert doc["uid"] == f"opsbook-{path.stem}" and doc["title"]
    assert len({p["id"] for p in doc["panels"]}) == len(doc["panels"])
    assert expressions(path), f"{path.name}: no query"
    for panel in doc["panels"]:
        assert panel["datasource"]["uid"] == "prometheus", (
            f"{path.name}: {panel['title']} not on the provisioned datasource"
        )


def test_every_expression_parses(promtool, tmp_path):
    rules = [
        {"record": f"dashboard:{path.stem.replace('-', '_')}:{i}", "expr": expr}
        for path in DASHBOARDS
        for i, expr in enumerate(query[1] for query in expressions(path))
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
