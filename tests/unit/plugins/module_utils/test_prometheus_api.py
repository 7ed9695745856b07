# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""prometheus_api against a real Prometheus and Alertmanager (sandbox images), plus its pure helpers."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import math

import pytest

from ansible_collections.opsbook.stack.plugins.module_utils import _prometheus as api
from ansible_collections.opsbook.stack.tests.unit.monitoring_fixtures import monitoring  # noqa: F401 pylint: disable=unused-import


@pytest.mark.parametrize(
    "text,seconds", [("2h", 7200), ("1h30m", 5400), ("90s", 90), ("1d", 86400), ("500ms", 0.5), ("1w", 604800)]
)
def test_parse_duration(text, seconds):
    assert api.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "2", "h", "2x", "1h 30m", "-1h", "0s", "30m2"])
def test_parse_duration_rejects_what_is_not_a_duration(text):
    with pytest.raises(ValueError):
        api.parse_duration(text)


def test_assertions_on_samples():
    samples = [api.Sample({"job": "a"}, 0.5), api.Sample({"job": "b"}, 2.0)]
    assert api.Assertion().failures(samples) == []
    assert api.Assertion(expect="non_empty").failures(samples) == []
    assert api.Assertion(expect="empty").failures(samples)[0].startswith("expected no result, got 2: ")
    assert api.Assertion(expect="non_empty").failures([]) == ["expected a result, got none"]
    problems = api.Assertion(compare="<", threshold=1).failures(samples)
    assert problems == ["expected every value < 1, not so for {job='b'} 2"]
    assert api.Assertion(compare=">=", threshold=0.5).failures(samples) == []
    with pytest.raises(ValueError):
        api.compare(1, "~", 1)


def test_sample_with_nan_serialises():
    assert api.Sample({}, math.nan).to_dict() == {"labels": {}, "value": "nan"}


def test_matchers_compare_as_sets():
    a = [api.Matcher("job", "x"), api.Matcher("env", "p|q", is_regex=True)]
    assert api.matcher_set(a) == api.matcher_set(list(reversed(a)))
    assert api.matcher_set(a) != api.matcher_set(a[:1])
    assert api.describe_matchers(a + [api.Matcher("k", "v", is_equal=False)]) == "{job='x', env=~'p|q', k!='v'}"


def test_unreachable_prometheus_names_the_url(closed_port):
    settings = api.HttpSettings(url="http://127.0.0.1:%d" % closed_port, timeout=2)
    with pytest.raises(
        api.ApiError, match=r"GET http://127\.0\.0\.1:%d/api/v1/query\?query=up: cannot connect" % closed_port
    ):
        api.instant_query(settings, "up")


@pytest.mark.docker
def test_instant_query_vector_scalar_and_errors(monitoring):  # noqa: F811
    settings = api.HttpSettings(url=monitoring.prometheus_url)
    kind, samples = api.instant_query(settings, 'up{job="prometheus"}')
    assert kind == "vector" and [s.value for s in samples] == [1.0]
    assert samples[0].labels["instance"] == "127.0.0.1:9090"
    kind, samples = api.instant_query(settings, "up == 0")
    assert kind == "vector" and [s.labels["job"] for s in samples] == ["nothing-listens"]
    kind, samples = api.instant_query(settings, "scalar(vector(42))")
    assert kind == "scalar" and samples[0].value == 42.0
    with pytest.raises(api.ApiError, match="range vector"):
        api.instant_query(settings, "up[1m]")
    with pytest.raises(api.ApiError, match="HTTP 400.*parse error"):
        api.instant_query(settings, "sum(")


@pytest.mark.docker
def test_alerts_firing_and_pending(monitoring):  # noqa: F811
    settings = api.HttpSettings(url=monitoring.prometheus_url)
    alerts = api.list_alerts(settings)
    by_name = {a.name: a for a in alerts}
    assert by_name["AlwaysFiring"].state == "firing"
    assert by_name["PendingForAnHour"].state == "pending"
    assert "NeverFires" not in by_name
    assert [a.name for a in api.select_alerts(alerts, ["firing"], None, None)] == ["AlwaysFiring"]
    assert [a.name for a in api.select_alerts(alerts, ["firing", "pending"], None, {"runbook_id": "service-down"})] == [
        "PendingForAnHour"
    ]
    assert api.select_alerts(alerts, ["firing"], ["NeverFires"], None) == []


@pytest.mark.docker
def test_silence_lifecycle(monitoring):  # noqa: F811
    settings = api.HttpSettings(url=monitoring.alertmanager_url)
    matchers = [api.Matcher("project", "lifecycle"), api.Matcher("severity", "warning|critical", is_regex=True)]
    planned = api.ensure_silence(settings, matchers, 600, "pytest", "lifecycle", check_mode=True)
    assert planned.changed and planned.silence_id is None
    assert api.find_equal(api.list_silences(settings), matchers) == []

    created = api.ensure_silence(settings, matchers, 600, "pytest", "lifecycle", check_mode=False)
    assert created.changed and created.silence["state"] == "active"
    again = api.ensure_silence(settings, list(reversed(matchers)), 600, "pytest", "lifecycle", check_mode=False)
    assert not again.changed and again.silence_id == created.silence_id
    other = api.ensure_silence(settings, matchers, 600, "pytest", "another reason", check_mode=False)
    assert other.changed and other.silence_id != created.silence_id

    preview = api.remove_silences(settings, None, matchers, None, check_mode=True)
    assert preview.changed and sorted(preview.expired) == sorted([created.silence_id, other.silence_id])
    assert len(api.find_equal(api.list_silences(settings), matchers)) == 2

    gone = api.remove_silences(settings, created.silence_id, [], None, check_mode=False)
    assert gone.expired == [created.silence_id]
    assert api.get_silence(settings, created.silence_id).state == "expired"
    assert api.remove_silences(settings, created.silence_id, [], None, check_mode=False).changed is False
    rest = api.remove_silences(settings, None, matchers, None, check_mode=False)
    assert rest.expired == [other.silence_id]
    assert api.find_equal(api.list_silences(settings), matchers) == []
    with pytest.raises(ValueError, match="matchers must not be empty"):
        api.ensure_silence(settings, [], 60, "x", "y", check_mode=False)
