# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The prometheus_query module as Ansible runs it, against a real Prometheus (sandbox image)."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import time

import pytest

from ansible_collections.opsbook.stack.plugins.modules import prometheus_query
from ansible_collections.opsbook.stack.tests.unit.doc_contract import check_documentation
from ansible_collections.opsbook.stack.tests.unit.http_fixtures import (  # noqa: F401 pylint: disable=unused-import
    PASSWORD,
    USER,
    tls,
    tls_server,
)
from ansible_collections.opsbook.stack.tests.unit.module_args import run_module
from ansible_collections.opsbook.stack.tests.unit.monitoring_fixtures import monitoring  # noqa: F401 pylint: disable=unused-import


def run(args: dict, capsys) -> dict:
    return run_module(prometheus_query, args, capsys)


@pytest.mark.docker
def test_query_without_assertion_returns_samples(monitoring, capsys):  # noqa: F811
    result = run({"url": monitoring.prometheus_url, "query": "up"}, capsys)
    assert result["changed"] is False and result["ok"] is True and not result.get("failed")
    assert result["result_type"] == "vector" and result["count"] == 2
    assert sorted(s["labels"]["job"] for s in result["samples"]) == ["nothing-listens", "prometheus"]


@pytest.mark.docker
def test_expect_empty_fails_naming_the_series(monitoring, capsys):  # noqa: F811
    result = run({"url": monitoring.prometheus_url, "query": "up == 0", "expect": "empty"}, capsys)
    assert result["failed"] is True and result["ok"] is False
    assert "expected no result, got 1" in result["msg"] and "nothing-listens" in result["msg"]
    ok = run({"url": monitoring.prometheus_url, "query": 'up{job="prometheus"} == 0', "expect": "empty"}, capsys)
    assert ok["ok"] is True and "failed" not in ok


@pytest.mark.docker
def test_threshold_and_retries(monitoring, capsys):  # noqa: F811
    started = time.monotonic()
    result = run(
        {
            "url": monitoring.prometheus_url,
            "query": "vector(3)",
            "compare": "<",
            "threshold": 1,
            "retries": 2,
            "delay": 0.2,
            "fail_on_mismatch": False,
        },
        capsys,
    )
    assert time.monotonic() - started >= 0.4
    assert result["ok"] is False and result["attempts"] == 3 and "failed" not in result
    assert result["problems"] == ["expected every value < 1, not so for {} 3"]
    good = run({"url": monitoring.prometheus_url, "query": "vector(3)", "compare": ">=", "threshold": 3}, capsys)
    assert good["ok"] is True and good["attempts"] == 1


@pytest.mark.docker
def test_alerts_listing_and_filters(monitoring, capsys):  # noqa: F811
    firing = run({"url": monitoring.prometheus_url, "alerts": True, "fail_on_mismatch": False}, capsys)
    assert [a["name"] for a in firing["alerts"]] == ["AlwaysFiring"]
    empty = run({"url": monitoring.prometheus_url, "alerts": True, "expect": "empty"}, capsys)
    assert empty["failed"] is True and "AlwaysFiring(firing)" in empty["msg"]
    scoped = run(
        {
            "url": monitoring.prometheus_url,
            "alerts": True,
            "expect": "empty",
            "alert_labels": {"runbook_id": "service-down"},
        },
        capsys,
    )
    assert scoped["ok"] is True and scoped["count"] == 0
    pending = run(
        {
            "url": monitoring.prometheus_url,
            "alerts": True,
            "expect": "non_empty",
            "alert_states": ["pending"],
            "alert_names": ["PendingForAnHour"],
        },
        capsys,
    )
    assert pending["ok"] is True and pending["alerts"][0]["labels"]["severity"] == "critical"


@pytest.mark.docker
def test_bad_input_fails_early(monitoring, capsys):  # noqa: F811
    both = run({"url": monitoring.prometheus_url, "query": "up", "alerts": True}, capsys)
    assert both["failed"] is True and "exactly one of query" in both["msg"]
    broken = run({"url": monitoring.prometheus_url, "query": "sum("}, capsys)
    assert broken["failed"] is True and "HTTP 400" in broken["msg"]


@pytest.mark.docker
def test_check_mode_still_queries(monitoring, capsys):  # noqa: F811
    result = run({"url": monitoring.prometheus_url, "query": "up", "_ansible_check_mode": True}, capsys)
    assert result["count"] == 2 and result["changed"] is False


# --------------------------------------------------------------------------------------------------------
# Without Docker: the documentation, and the client options against a local HTTPS server
# --------------------------------------------------------------------------------------------------------


def test_documentation_matches_argument_spec():
    doc = check_documentation(prometheus_query)
    assert doc["options"]["alert_states"]["choices"] == ["firing", "pending"]
    assert doc["options"]["url_password"]["type"] == "str"


def test_https_with_ca_path_and_forced_basic_auth(tls_server, capsys):  # noqa: F811
    tls_server.require((USER, PASSWORD))
    args = {
        "url": tls_server.base,
        "query": "scalar(x)",
        "compare": "==",
        "threshold": 42,
        "ca_path": str(tls_server.files.ca),
        "url_username": USER,
        "url_password": PASSWORD,
        "force_basic_auth": True,
    }
    result = run(args, capsys)
    assert result["ok"] is True and result["samples"] == [{"labels": {}, "value": 42}], result
    assert PASSWORD not in str(result["invocation"])
    untrusted = run(dict(args, ca_path=None), capsys)
    assert untrusted["failed"] is True and "CERTIFICATE_VERIFY_FAILED" in untrusted["msg"]
