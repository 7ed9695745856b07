# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""_prometheus against a real Prometheus and Alertmanager (sandbox images), the HTTP client options against a
local HTTPS server, and its pure helpers."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import math

import pytest

from ansible_collections.opsbook.stack.plugins.module_utils import _prometheus as api
from ansible_collections.opsbook.stack.tests.unit.http_fixtures import (  # noqa: F401 pylint: disable=unused-import
    PASSWORD,
    USER,
    mtls_server,
    tls,
    tls_server,
)
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
    with pytest.raises(api.ApiError, match=r"HTTP 400.*parse error"):
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


# --------------------------------------------------------------------------------------------------------
# The ansible.builtin.url client options, against a local HTTPS server with certificates made for the session
# --------------------------------------------------------------------------------------------------------


def _over_tls(server, **options) -> api.HttpSettings:
    return api.HttpSettings(url=server.base, timeout=5, **options)


def test_ca_path_trusts_the_private_ca(tls_server):  # noqa: F811
    kind, samples = api.instant_query(_over_tls(tls_server, ca_path=str(tls_server.files.ca)), "scalar(x)")
    assert kind == "scalar" and samples[0].value == 42.0


def test_the_system_store_does_not_trust_a_private_ca(tls_server):  # noqa: F811
    with pytest.raises(api.ApiError, match=r"cannot connect: .*CERTIFICATE_VERIFY_FAILED"):
        api.instant_query(_over_tls(tls_server), "up")
    kind, _samples = api.instant_query(_over_tls(tls_server, validate_certs=False), "up")
    assert kind == "scalar"


def test_an_unreadable_ca_path_says_so(tls_server, tmp_path):  # noqa: F811
    with pytest.raises(api.ApiError, match=r"cannot use the TLS files \(ca_path=%s/none.pem" % tmp_path):
        api.instant_query(_over_tls(tls_server, ca_path=str(tmp_path / "none.pem")), "up")


@pytest.mark.parametrize("force_basic_auth", [True, False])
def test_basic_auth_forced_or_after_the_challenge(tls_server, force_basic_auth):  # noqa: F811
    tls_server.require((USER, PASSWORD))
    settings = _over_tls(
        tls_server,
        ca_path=str(tls_server.files.ca),
        url_username=USER,
        url_password=PASSWORD,
        force_basic_auth=force_basic_auth,
    )
    kind, _samples = api.instant_query(settings, "up")
    assert kind == "scalar"
    first = tls_server.httpd.seen[0]
    assert ("Authorization" in first) is force_basic_auth  # without force, only the retry after the 401 has it


def test_wrong_credentials_are_an_http_401(tls_server):  # noqa: F811
    tls_server.require((USER, PASSWORD))
    settings = _over_tls(
        tls_server, ca_path=str(tls_server.files.ca), url_username=USER, url_password="nope", force_basic_auth=True
    )
    with pytest.raises(api.ApiError, match="HTTP 401 unauthorized"):
        api.instant_query(settings, "up")


def test_client_certificate_for_mutual_tls(mtls_server):  # noqa: F811
    files = mtls_server.files
    settings = _over_tls(mtls_server, ca_path=str(files.ca), client_cert=str(files.client_cert))
    with pytest.raises(api.ApiError):  # the key is in another file and not given
        api.instant_query(settings, "up")
    settings = _over_tls(
        mtls_server, ca_path=str(files.ca), client_cert=str(files.client_cert), client_key=str(files.client_key)
    )
    assert api.instant_query(settings, "up")[0] == "scalar"
    with pytest.raises(api.ApiError, match="cannot connect"):
        api.instant_query(_over_tls(mtls_server, ca_path=str(files.ca)), "up")
